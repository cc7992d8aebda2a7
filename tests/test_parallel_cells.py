"""minGRU and minLSTM: the parallel log-space scan against a plain step-by-step loop of the
paper's equations (written out here, independently of the module), in float32, over long
sequences, under bf16 autocast and on CUDA; padding that cannot reach results or gradients;
the carried state; generation one step at a time; the presets in all three tasks.

The encoder's contract tests (each sequence alone, every depth, direction and merge) run over
these cells too, in tests/test_encoder.py."""

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from seqmodels.data.vocab import Vocab
from seqmodels.models.charlm import CharLanguageModel
from seqmodels.models.encoder import RNNEncoder
from seqmodels.models.parallel_cells import log_coefficients, scan
from seqmodels.models.sampling import make_stepper
from seqmodels.models.sentiment import SentimentClassifier
from seqmodels.models.tagger import SequenceTagger
from tests.conftest import compose_config

PARALLEL = ["mingru", "minlstm"]
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])]


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", PARALLEL)
def test_scan_equals_the_loop_in_outputs_state_and_gradients(cell, device):
    torch.manual_seed(2)
    encoder = RNNEncoder(5, 4, cell=cell, num_layers=2, bidirectional=True).to(device)
    x = torch.randn(3, 300, 5, device=device, requires_grad=True)  # 300: three scan chunks
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


@pytest.mark.parametrize("cell", PARALLEL)
def test_long_sequences_stay_accurate_with_strong_forgetting(cell):
    """2048 steps with gates that forget fast: log a_t sums to about -10^4, where one unchunked
    log-space scan would cancel large numbers; compared with the loop in float64."""
    torch.manual_seed(3)
    encoder = RNNEncoder(4, 8, cell=cell).eval()
    with torch.no_grad():  # bias the gates towards the candidate: a_t ~ e^-5
        hidden = encoder.hidden_size
        if cell == "mingru":
            encoder.rnn.bias_ih_l0[:hidden] += 5.0
        else:
            encoder.rnn.bias_ih_l0[:hidden] -= 5.0  # forget gate low
            encoder.rnn.bias_ih_l0[hidden : 2 * hidden] += 5.0
    x = torch.randn(2, 2048, 4)
    weights = encoder.layer_weights(0)
    with torch.no_grad():
        out = encoder(x).outputs
        log_a, log_b = log_coefficients(cell, encoder.rnn.project(0, 0, x))
        unchunked = scan(log_a, log_b, chunk=2048)
        expected, _ = loop_layer(cell, weights["weight_ih_l0"].double(),
                                 weights["bias_ih_l0"].double(), x.double(),
                                 x.new_zeros(2, 8, dtype=torch.float64))
    assert log_a.sum(1).max() < -5_000  # the regime this test is about
    errors = [((h.double() - expected).abs() / expected.abs()).max() for h in (out, unchunked)]
    assert errors[0] < 3e-5  # float32 rounding of |A_t| <= 32 * 5 within a chunk
    assert errors[1] > 3e-4  # why the scan is chunked


def test_scan_matches_the_recurrence_for_any_chunk_size():
    torch.manual_seed(4)
    log_a, log_b = -torch.rand(2, 37, 3) * 3, torch.randn(2, 37, 3)
    h0 = torch.randn(2, 3)
    h, expected = h0, []
    for t in range(37):
        h = log_a[:, t].exp() * h + log_b[:, t].exp()
        expected.append(h)
    for chunk in (1, 5, 37, 100):
        torch.testing.assert_close(scan(log_a, log_b, h0, chunk=chunk), torch.stack(expected, 1),
                                   rtol=2e-5, atol=0)


@pytest.mark.cpu_bf16
@pytest.mark.parametrize("cell", PARALLEL)
def test_bf16_autocast_scan_equals_the_loop_under_autocast(cell):
    """Under autocast the projections are bf16 in both; the scan and the loop then agree as in
    float32, and both stay within bf16 rounding of the float32 result. (One layer: a layer
    above would round its float32 input to bf16, and a 1e-7 difference can flip that rounding.)"""
    torch.manual_seed(5)
    encoder = RNNEncoder(6, 5, cell=cell, bidirectional=True)
    x, lengths = torch.randn(3, 40, 6), [40, 17, 3]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(x, torch.tensor(lengths))
        alone = [torch.cat(reference(encoder, x[i : i + 1, :n])[0], 2)[0]
                 for i, n in enumerate(lengths)]
    assert out.outputs.dtype == torch.float32
    for i, n in enumerate(lengths):
        torch.testing.assert_close(out.outputs[i, :n], alone[i], rtol=1e-5, atol=1e-5)
        assert torch.all(out.outputs[i, n:] == 0)
    full = encoder(x, torch.tensor(lengths)).outputs
    torch.testing.assert_close(out.outputs, full, rtol=0.05, atol=0.05)
    assert (out.outputs - full).abs().max() > 1e-4  # it did run in bf16


@pytest.mark.parametrize("cell", PARALLEL)
def test_padding_reaches_neither_results_nor_gradients(cell):
    """Padding of any value (here 1e30: inf once projected) leaves outputs, final state and
    gradients alone: at padded steps a_t = 1 and b_t = 0, whatever the gates there say."""
    encoder = RNNEncoder(3, 4, cell=cell, num_layers=2, bidirectional=True)
    x, lengths = torch.randn(2, 6, 3), torch.tensor([6, 2])
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
    out, final = encoder.rnn.run_layer(0, 0, huge, None, lengths)
    torch.testing.assert_close(final[0], out[[0, 1], [5, 1]])
    assert torch.all(out[1, 2:] == out[1, 1])


@pytest.mark.parametrize("cell", PARALLEL)
def test_state_is_exact_with_variable_lengths(cell):
    """Unlike an LSTM's cell state, a parallel cell's state is known at every row's end even
    in a padded batch: continuing from it equals one call over each whole row."""
    encoder = RNNEncoder(3, 4, cell=cell, num_layers=2).eval()
    x, lengths = torch.randn(2, 9, 3), torch.tensor([5, 3])
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
