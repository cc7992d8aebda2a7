"""minGRU and minLSTM: both scans (the PyTorch two-level scan, and the fused Triton kernel on
CUDA or under ``TRITON_INTERPRET=1`` where Triton imports) against a plain step-by-step loop of
the paper's equations (written out here, independently of the module), in float32, over long
sequences, under bf16 autocast and on CUDA; padding that cannot reach results or gradients;
the carried state; generation one step at a time; the presets in all three tasks; the
benchmark script at a tiny size.

The encoder's contract tests (each sequence alone, every depth, direction and merge) run over
these cells too, in tests/test_encoder.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from seqmodels.data.vocab import Vocab
from seqmodels.models import scan_triton
from seqmodels.models.charlm import CharLanguageModel
from seqmodels.models.encoder import RNNEncoder
from seqmodels.models.parallel_cells import coefficients
from seqmodels.models.sampling import make_stepper
from seqmodels.models.scan import linear_scan
from seqmodels.models.sentiment import SentimentClassifier
from seqmodels.models.tagger import SequenceTagger
from tests.conftest import compose_config

PARALLEL = ["mingru", "minlstm"]
CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                              reason="needs a CUDA GPU")]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
# (device, scan): the PyTorch scan everywhere, the Triton kernel on CUDA and, on a CPU where
# Triton imports, under its interpreter (TRITON_INTERPRET=1 python -m pytest ...; slow: the
# interpreter runs only the small cases).
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and scan_triton.available()
SCANS = [pytest.param(("cpu", "torch"), id="torch"),
         pytest.param(("cpu", "triton"), id="triton_interpreter", marks=pytest.mark.skipif(
             not INTERPRETED, reason="needs Triton and TRITON_INTERPRET=1")),
         pytest.param(("cuda", "triton"), id="cuda", marks=CUDA),
         pytest.param(("cuda", "torch"), id="cuda_torch_scan", marks=CUDA)]
ROOT = Path(__file__).resolve().parents[1]


def on(scan, encoder):
    """The encoder on the scan's device, running that scan."""
    device, backend = scan
    encoder.rnn.scan_backend = backend
    return encoder.to(device)


@pytest.fixture
def short_chunks(monkeypatch):
    """Chunks of 8 steps in the Triton kernel, so that small cases run several of them."""
    monkeypatch.setattr(scan_triton, "MIN_CHUNK", 8)


def _g(v):
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def loop_layer(cell, weight, bias, x, h):
    """The paper's equations one step at a time over (B, T, I) ``x`` from the (B, H) state."""
    outputs = []
    for t in range(x.size(1)):
        gates = F.linear(x[:, t], weight, bias).to(h.dtype)  # bf16 under autocast: widened
        if cell == "mingru":
            k, v = gates.chunk(2, dim=-1)
            z = torch.sigmoid(k)  # z_t = σ(W_z x_t + b_z)
            h = (1 - z) * h + z * _g(v)  # h_t = (1 - z_t) h_(t-1) + z_t h̃_t
        else:
            f, i, v = gates.chunk(3, dim=-1)
            f, i = torch.sigmoid(f), torch.sigmoid(i)
            h = f / (f + i) * h + i / (f + i) * _g(v)  # h_t = f'_t h_(t-1) + i'_t h̃_t
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


def reference(encoder, x, state=None):
    """The whole encoder by the loop over one unpadded (B, T, I) batch: per-direction top-layer
    outputs [forward, (backward)] and the (layers * directions, B, H) final state."""
    finals, layer_input = [], x
    for layer in range(encoder.num_layers):
        outputs = []
        for direction in range(encoder.num_directions):
            weights = encoder.layer_weights(layer, direction)
            index = layer * encoder.num_directions + direction
            h = (x.new_zeros(x.size(0), encoder.hidden_size)
                 if state is None else state[index])
            seq = layer_input.flip(1) if direction else layer_input
            out, h = loop_layer(encoder.cell, weights["weight_ih_l0"], weights["bias_ih_l0"],
                                seq, h)
            outputs.append(out.flip(1) if direction else out)
            finals.append(h)
        layer_input = torch.cat(outputs, dim=2)
    return outputs, torch.stack(finals)


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("cell", PARALLEL)
def test_scan_equals_the_loop_in_outputs_state_and_gradients(cell, scan, short_chunks):
    torch.manual_seed(2)
    device = scan[0]
    encoder = on(scan, RNNEncoder(5, 4, cell=cell, num_layers=2, bidirectional=True))
    steps = 40 if INTERPRETED and device == "cpu" and scan[1] == "triton" else 300  # chunks
    x = torch.randn(3, steps, 5, device=device, requires_grad=True)
    state = torch.randn(4, 3, 4, device=device)  # any sign: h_0 enters the scan linearly
    out = encoder(x, state=state)
    (ref_forward, ref_backward), ref_state = reference(encoder, x, state)
    torch.testing.assert_close(out.outputs, torch.cat([ref_forward, ref_backward], 2))
    torch.testing.assert_close(out.state, ref_state)

    weights = torch.randn_like(out.outputs)
    grads = torch.autograd.grad((out.outputs * weights).sum(), [x, *encoder.parameters()])
    ref = torch.autograd.grad((torch.cat([ref_forward, ref_backward], 2) * weights).sum(),
                              [x, *encoder.parameters()])
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


@pytest.mark.parametrize("scan", [SCANS[0], SCANS[2]])
@pytest.mark.parametrize("cell", PARALLEL)
def test_long_sequences_stay_accurate_with_strong_forgetting(cell, scan):
    """2048 steps with gates that forget fast (log a_t sums to about -10^4, where a log-space
    scan cancels large numbers), against the loop in float64: the linear-space scan is as
    accurate as a float32 loop, outputs and gradients."""
    torch.manual_seed(3)
    encoder = RNNEncoder(4, 8, cell=cell).eval()
    with torch.no_grad():  # bias the gates towards the candidate: a_t ~ e^-5
        hidden = encoder.hidden_size
        if cell == "mingru":
            encoder.rnn.bias_ih_l0[:hidden] += 5.0
        else:
            encoder.rnn.bias_ih_l0[:hidden] -= 5.0  # forget gate low
            encoder.rnn.bias_ih_l0[hidden : 2 * hidden] += 5.0
    exact = {name: p.detach().double() for name, p in encoder.layer_weights(0).items()}
    encoder = on(scan, encoder)
    x = torch.randn(2, 2048, 4, dtype=torch.float64)
    weights = torch.randn(2, 2048, 8, dtype=torch.float64)
    parameters = list(encoder.parameters())
    out = encoder(x.float().to(scan[0])).outputs
    grads = torch.autograd.grad((out * weights.float().to(scan[0])).sum(), parameters)
    weight, bias = (exact[n].requires_grad_() for n in ("weight_ih_l0", "bias_ih_l0"))
    expected, _ = loop_layer(cell, weight, bias, x, x.new_zeros(2, 8))
    expected_grads = torch.autograd.grad((expected * weights).sum(), [weight, bias])
    a = coefficients(cell, F.linear(x, weight, bias))[0]
    assert a.log().sum(1).max() < -5_000  # the regime this test is about
    assert ((out.double().cpu() - expected).abs() / expected.abs()).max() < 1e-5
    for got, want in zip(grads, expected_grads):
        assert ((got.double().cpu() - want).abs().max() / want.abs().max()) < 1e-5


@pytest.mark.parametrize("chunk", [2, 3, 16, 100])
def test_linear_scan_matches_the_recurrence_for_any_chunk_size(chunk):
    """Every chunk size and length (chunks that divide T or not, levels of chunks over chunks),
    any sign of b and h_0: values and gradients against autograd through the loop."""
    torch.manual_seed(4)
    for steps in (1, 5, 37, 300):
        a = torch.rand(2, steps, 3, dtype=torch.float64, requires_grad=True)
        b = torch.randn(2, steps, 3, dtype=torch.float64, requires_grad=True)
        h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        h, expected = h0, []
        for t in range(steps):
            h = a[:, t] * h + b[:, t]
            expected.append(h)
        expected = torch.stack(expected, 1)
        got = linear_scan(a, b, h0, chunk=chunk)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        weights = torch.randn_like(got)
        for x, y in zip(torch.autograd.grad((got * weights).sum(), [a, b, h0]),
                        torch.autograd.grad((expected * weights).sum(), [a, b, h0])):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5 * y.abs().max().item())
    with pytest.raises(ValueError, match="chunk must be at least 2"):
        linear_scan(a, b, chunk=1)


def test_the_environment_chooses_the_scan(monkeypatch):
    monkeypatch.setenv("SEQMODELS_SCAN", "torch")
    assert RNNEncoder(3, 4, cell="mingru").rnn.backend(torch.device("cuda")) == "torch"
    monkeypatch.setenv("SEQMODELS_SCAN", "cuda")
    encoder = RNNEncoder(3, 4, cell="mingru")
    with pytest.raises(ValueError, match=r"\(SEQMODELS_SCAN\) must be one of auto, triton, torch"):
        encoder(torch.randn(1, 2, 3))


@pytest.mark.parametrize("scan", [SCANS[1], SCANS[2]])
@pytest.mark.parametrize("cell", PARALLEL)
def test_triton_scan_equals_the_pytorch_scan(cell, scan, short_chunks):
    """The fused kernel against the reference on raw gates: several chunks (the last one
    shorter), lengths, an initial state; outputs and the gradients of gates and state."""
    device = scan[0]
    torch.manual_seed(6)
    width = 2 if cell == "mingru" else 3  # gates a channel
    gates = torch.randn(3, 37, width * 5, device=device) * 3
    h0 = torch.randn(3, 5, device=device)
    lengths = torch.tensor([37, 20, 1], device=device)
    weights = torch.randn(3, 37, 5, device=device)
    results = []
    for fused in (True, False):
        inputs = [gates.clone().requires_grad_(), h0.clone().requires_grad_()]
        if fused:
            out = scan_triton.fused_scan(cell, *inputs, lengths)
        else:
            a, b = coefficients(cell, inputs[0])
            padding = (torch.arange(37, device=device) >= lengths.unsqueeze(1)).unsqueeze(2)
            out = linear_scan(a.masked_fill(padding, 1.0), b.masked_fill(padding, 0.0), inputs[1])
        results.append([out, *torch.autograd.grad((out * weights).sum(), inputs)])
    assert scan_triton.chunking(3, 37, 5)[0] > 1
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scan", [pytest.param(*s.values, marks=[*s.marks, pytest.mark.cpu_bf16],
                                               id=s.id) if s.id == "torch" else s for s in SCANS])
@pytest.mark.parametrize("cell", PARALLEL)
def test_bf16_autocast_keeps_a_float32_state_and_bf16_outputs(cell, scan, short_chunks):
    """Under autocast the projections and the outputs are bf16; a_t, b_t and the running state
    are float32, so over a long memory (a_t ~ 0.99) the outputs are the float32 loop on the
    same bf16 projections rounded once to bf16, not a bf16 accumulation's drift. Padding
    stays zero. (One layer: a layer above would read bf16 inputs anyway.)"""
    device, backend = scan
    torch.manual_seed(5)
    encoder = RNNEncoder(6, 5, cell=cell, bidirectional=True)
    with torch.no_grad():  # slow forgetting: a bf16 a_t or state would drift visibly
        if cell == "mingru":
            encoder.rnn.bias_ih_l0[:5] -= 4.0
        else:
            encoder.rnn.bias_ih_l0[:5] += 4.0
    encoder = on(scan, encoder)
    steps = 40 if device == "cpu" and backend == "triton" else 400
    x, lengths = torch.randn(3, steps, 6, device=device), [steps, steps // 2, 3]
    with torch.autocast(device, dtype=torch.bfloat16):
        out = encoder(x, torch.tensor(lengths))
        alone = [torch.cat(reference(encoder, x[i : i + 1, :n])[0], 2)[0]
                 for i, n in enumerate(lengths)]
    assert out.outputs.dtype == torch.bfloat16 and alone[0].dtype == torch.float32
    for i, n in enumerate(lengths):
        torch.testing.assert_close(out.outputs[i, :n].float(), alone[i].bfloat16().float(),
                                   rtol=8e-3, atol=1e-5)  # one bf16 rounding (2^-8), no drift
        assert torch.all(out.outputs[i, n:] == 0)


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("cell", PARALLEL)
def test_padding_reaches_neither_results_nor_gradients(cell, scan):
    """Padding of any value (here 1e30) leaves outputs, final state and gradients alone: at
    padded steps a_t = 1 and b_t = 0, whatever the gates there say."""
    encoder = on(scan, RNNEncoder(3, 4, cell=cell, num_layers=2, bidirectional=True))
    x, lengths = torch.randn(2, 6, 3, device=scan[0]), torch.tensor([6, 2])
    huge = x.clone()
    huge[1, 2:] = 1e30
    results = []
    for batch in (x, huge):
        batch.requires_grad_(True)
        encoder.zero_grad()
        out = encoder(batch, lengths)
        out.outputs.sum().backward()
        assert torch.all(batch.grad[1, 2:] == 0)
        results.append([out.outputs, out.state, batch.grad, *(p.grad for p in
                                                              encoder.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    # The state passes through the padding: the last column is each row's own last state.
    out, final = encoder.rnn.run_layer(0, 0, huge, None, lengths.to(scan[0]))
    torch.testing.assert_close(final[0], out[[0, 1], [5, 1]])
    assert torch.all(out[1, 2:] == out[1, 1])


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("cell", PARALLEL)
def test_state_is_exact_with_variable_lengths(cell, scan):
    """Unlike an LSTM's cell state, a parallel cell's state is known at every row's end even
    in a padded batch: continuing from it equals one call over each whole row."""
    encoder = on(scan, RNNEncoder(3, 4, cell=cell, num_layers=2).eval())
    x, lengths = torch.randn(2, 9, 3, device=scan[0]), torch.tensor([5, 3])
    first = encoder(x[:, :5], lengths)
    for i, n in enumerate(lengths.tolist()):
        row = torch.cat([x[i : i + 1, :n], x[i : i + 1, 5:]], dim=1)
        second = encoder(x[i : i + 1, 5:], state=first.state[:, i : i + 1])
        whole = encoder(row)
        torch.testing.assert_close(second.outputs, whole.outputs[:, n:])
        torch.testing.assert_close(second.state, whole.state)


def _charlm(cell):
    model = CharLanguageModel(9, {"cell": cell, "hidden_size": 6, "num_layers": 2},
                              embedding_dim=4)
    model.vocabs = {"chars": Vocab(["<pad>", "<unk>", *"abcdefg"])}
    return model.eval()


@pytest.mark.parametrize("cell", PARALLEL)
def test_generation_steps_equal_rerunning_the_prefix(cell):
    model = _charlm(cell)
    stepper = make_stepper(model)
    ids = [2, 5, 3]
    with torch.no_grad():
        logits = stepper.prime(ids)
        for next_id in [4, 8, 2, 6, 7]:
            rerun, _ = model(torch.tensor([ids]))
            torch.testing.assert_close(logits, rerun[0, -1])
            ids.append(next_id)
            logits = stepper.step(next_id)
    text = model.generate("abc", 20, temperature=0.8, seed=1)
    assert len(text) == 20 and text == model.generate("abc", 20, temperature=0.8, seed=1)


@pytest.mark.parametrize("preset,cell,bidirectional", [
    ("mingru", "mingru", False), ("minlstm", "minlstm", False),
    ("bimingru", "mingru", True), ("biminlstm", "minlstm", True)])
def test_presets_build_every_task(tmp_path, preset, cell, bidirectional):
    encoder = compose_config(tmp_path, [f"model/encoder={preset}"]).model.encoder
    assert (encoder.cell, encoder.bidirectional) == (cell, bidirectional)
    built = instantiate(encoder, _target_="seqmodels.models.encoder.RNNEncoder", input_size=3)
    assert built.cell == cell and built.num_directions == 1 + bidirectional
    settings = dict(encoder, hidden_size=4)
    tokens, lengths = torch.tensor([[2, 3, 4], [5, 6, 0]]), torch.tensor([3, 2])
    sentiment = SentimentClassifier(vocab_size=10, num_classes=2, encoder=settings,
                                    embedding_dim=3)
    assert sentiment(tokens, lengths).shape == (2, 2)
    tagger = SequenceTagger(10, 0, ["A", "B"], settings, embedding_dim=3, chars=None)
    assert tagger(tokens, lengths).shape[:2] == (2, 3)
    if not bidirectional:  # a language model refuses a backward direction
        lm = CharLanguageModel(10, settings, embedding_dim=3)
        assert lm(tokens)[0].shape == (2, 3, 10)


@pytest.mark.parametrize("device", DEVICES)
def test_benchmark_prints_the_tables_at_a_tiny_size(tmp_path, device):
    """scripts/bench_parallel_cells.py as a user runs it (from another directory), CI-sized:
    the per-dtype tables, the issue's summary layout, equal parameters and equal hidden size;
    on CUDA also bf16, the Triton scan's check and the peak memory per token at T = 2048."""
    lengths = ["16", "2048"] if device == "cuda" else ["4", "16"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_parallel_cells.py"), "--device", device,
         "--lengths", *lengths, "--tokens", "4096" if device == "cuda" else "64",
         "--hidden", "8", "--embedding", "8", "--steps", "1", "--repeats", "1",
         "--sections", "training"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "  minGRU: hidden 32, encoder parameters 576" in lines  # as the LSTM's 576
    assert any(line.startswith(f"| {lengths[0]} | ") and line.count("x |") == 3
               for line in lines)
    assert "| T | LSTM tok/s fp32 | minGRU / LSTM fp32 | minLSTM / LSTM fp32 | " \
           "minGRU h8 / LSTM fp32 |" in lines[lines.index("summary") + 2]
    if device == "cuda":
        assert not any(line.lstrip().startswith("!") for line in lines), result.stdout
        assert "bf16 autocast" in lines
        assert sum(line.startswith(("| LSTM | 8 | ", "| minGRU | 32 | ")) for line in lines) == 4
