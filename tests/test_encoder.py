"""The shared encoder against references: the Elman equations by hand, torch's own multi-layer
RNN modules (for minGRU and minLSTM: a step-by-step loop of their equations,
tests/test_parallel_cells.py), and each sequence run alone (padding must never change a
result)."""

import itertools

import pytest
import torch
from torch import nn

from seqmodels.errors import ConfigError
from seqmodels.models.encoder import RNNEncoder, reverse_within_length
from tests.test_parallel_cells import PARALLEL
from tests.test_parallel_cells import reference as loop_reference

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
ALL_CELLS = [*CELLS, *PARALLEL]


def test_elman_outputs_follow_the_equations_by_hand():
    encoder = RNNEncoder(4, 3, cell="rnn").eval()
    rnn = encoder.rnn
    W, U = rnn.weight_ih_l0, rnn.weight_hh_l0
    b = rnn.bias_ih_l0 + rnn.bias_hh_l0
    x = torch.randn(2, 5, 4)
    out = encoder(x, torch.tensor([5, 5]))
    h = torch.zeros(2, 3)
    for t in range(5):
        h = torch.tanh(x[:, t] @ W.T + h @ U.T + b)  # h_t = tanh(W x_t + U h_{t-1} + b)
        torch.testing.assert_close(out.outputs[:, t], h)
    torch.testing.assert_close(out.final, h)


def test_relu_elman_uses_relu():
    encoder = RNNEncoder(4, 3, cell="rnn", nonlinearity="relu").eval()
    rnn = encoder.rnn
    x = torch.randn(1, 1, 4)
    expected = torch.relu(x[0, 0] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + rnn.bias_hh_l0)
    torch.testing.assert_close(encoder(x, torch.tensor([1])).final[0], expected)


def test_parameter_count_matches_the_textbook_formula():
    # Embedding(62, 100) + RNN(100 -> 128) + Linear(128 -> 2):
    # 62*100 + (100*128 + 128*128 + 2*128) + (128*2 + 2) = 6,200 + 29,440 + 258 = 35,898
    # (torch keeps two bias vectors per cell: b_ih and b_hh).
    model = [nn.Embedding(62, 100), RNNEncoder(100, 128, cell="rnn"), nn.Linear(128, 2)]
    counts = [sum(p.numel() for p in m.parameters()) for m in model]
    assert counts == [6_200, 29_440, 258]
    assert sum(counts) == 35_898


def _copy_into_torch_rnn(encoder: RNNEncoder) -> nn.RNNBase:
    """A separate torch multi-layer (bi)directional RNN holding copies of the encoder's weights,
    filled through ``layer_weights`` (which the padded path reads)."""
    reference = CELLS[encoder.cell](
        encoder.input_size, encoder.hidden_size, num_layers=encoder.num_layers,
        bidirectional=encoder.num_directions == 2, batch_first=True,
    ).to(encoder.rnn.weight_ih_l0.device)
    with torch.no_grad():
        for layer in range(encoder.num_layers):
            for direction in range(encoder.num_directions):
                suffix = "_reverse" if direction else ""
                for name, weight in encoder.layer_weights(layer, direction).items():
                    getattr(reference, name.replace("_l0", f"_l{layer}{suffix}")).copy_(weight)
    return reference.eval()


def _reference(encoder: RNNEncoder, x):
    """One unpadded sequence by a reference: top-layer outputs (both directions concatenated)
    and the (layers * directions, 1, H) final h (and c for an LSTM, else None)."""
    if encoder.cell in PARALLEL:
        outputs, h = loop_reference(encoder, x)
        return torch.cat(outputs, dim=2), h, None
    out, state = _copy_into_torch_rnn(encoder)(x)
    return (out, *state) if encoder.cell == "lstm" else (out, state, None)


def _merge(forward, backward, combine):
    return {"concat": torch.cat([forward, backward], -1), "sum": forward + backward,
            "mul": forward * backward}[combine]


# combine only applies where there are two directions to merge
SETTINGS = [
    (cell, layers, bidirectional, combine, strategy)
    for cell, layers, bidirectional, combine, strategy in itertools.product(
        ALL_CELLS, [1, 2], [False, True], ["concat", "sum", "mul"], ["padded", "packed"])
    # combine only applies where there are two directions; the parallel cells have one path
    if (bidirectional or combine == "concat") and (cell in CELLS or strategy == "padded")
]


@pytest.fixture(autouse=True)
def full_float32():
    """On CUDA, cuDNN's RNNs and matmuls may round to TF32 (10-bit mantissas) by default: these
    tests compare float32 results to the last bits, so they run without it."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# Every equivalence test runs on the CPU and, where there is one, on a CUDA GPU (cuDNN).
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell,layers,bidirectional,combine,strategy", SETTINGS)
def test_padded_batch_equals_each_sequence_alone_and_torch(cell, layers, bidirectional, combine,
                                                            strategy, device):
    encoder = RNNEncoder(6, 5, cell=cell, num_layers=layers, bidirectional=bidirectional,
                         combine=combine, variable_length=strategy).to(device).eval()
    lengths = torch.tensor([3, 7, 1, 5])  # unsorted, with a length-1 row; on the CPU
    x = torch.randn(4, 7, 6)
    x[torch.arange(7) >= lengths.unsqueeze(1)] = 99.0  # padding that would show if it leaked
    x = x.to(device)
    out = encoder(x, lengths)
    assert out.outputs.shape == (4, 7, encoder.get_output_dim())
    for i, length in enumerate(lengths.tolist()):
        alone = encoder(x[i : i + 1, :length], torch.tensor([length]))
        ref_out, ref_h, ref_c = _reference(encoder, x[i : i + 1, :length])  # (L * dirs, 1, H)
        if bidirectional:
            H = encoder.hidden_size
            ref_out = _merge(ref_out[..., :H], ref_out[..., H:], combine)
            ref_final = _merge(ref_h[-2], ref_h[-1], combine)
        else:
            ref_final = ref_h[-1]
        torch.testing.assert_close(out.outputs[i, :length], ref_out[0])
        torch.testing.assert_close(out.outputs[i, :length], alone.outputs[0])
        assert torch.all(out.outputs[i, length:] == 0)
        torch.testing.assert_close(out.final[i], ref_final[0])
        torch.testing.assert_close(out.final[i], alone.final[0])
        if strategy == "packed" or cell in PARALLEL:  # the state is exact
            state_h = out.state[0] if cell == "lstm" else out.state
            torch.testing.assert_close(state_h[:, i], ref_h[:, 0])
        if strategy == "packed" and cell == "lstm":
            torch.testing.assert_close(out.state[1][:, i], ref_c[:, 0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_strategies_agree_in_gradients(cell, device):
    torch.manual_seed(1)
    padded = RNNEncoder(4, 3, cell=cell, num_layers=2, bidirectional=True,
                        variable_length="padded").to(device)
    packed = RNNEncoder(4, 3, cell=cell, num_layers=2, bidirectional=True,
                        variable_length="packed").to(device)
    packed.load_state_dict(padded.state_dict())
    x, lengths = torch.randn(3, 6, 4, device=device), torch.tensor([6, 2, 4])
    for encoder in (padded, packed):
        encoder.train()  # no dropout here; and cuDNN computes gradients only in training mode
        encoder.zero_grad()
        encoder(x, lengths).final.sum().backward()
    for (name, a), (_, b) in zip(padded.named_parameters(), packed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=lambda text, name=name: f"{name}: {text}")


@pytest.mark.parametrize("cell", ["lstm", *PARALLEL])
@pytest.mark.parametrize("strategy", ["padded", "packed"])
def test_state_carries_across_calls_like_one_long_call(strategy, cell):
    encoder = RNNEncoder(4, 3, cell=cell, num_layers=2, variable_length=strategy).eval()
    x = torch.randn(2, 8, 4)
    whole = encoder(x)  # no lengths: every row is full length, the state is exact
    first = encoder(x[:, :5])
    second = encoder(x[:, 5:], state=first.state)
    torch.testing.assert_close(torch.cat([first.outputs, second.outputs], 1), whole.outputs)
    if cell == "lstm":
        torch.testing.assert_close(second.state[1], whole.state[1])
    else:
        torch.testing.assert_close(second.state, whole.state)


def test_auto_never_packs_variable_lengths_and_fuses_full_rows_on_cuda():
    """Packing waits on the host (sort order to the device and back), so ``auto`` pads
    whenever lengths vary, CUDA included; full rows on CUDA take the one fused call."""
    encoder = RNNEncoder(3, 4, bidirectional=True)
    lengths = torch.tensor([2])
    assert encoder.variable_length == "auto"
    assert encoder.strategy(torch.zeros(1, 2, 3), lengths) == "padded"
    assert encoder.strategy(torch.zeros(1, 2, 3)) == "padded"
    assert encoder.strategy(torch.zeros(1, 2, 3, device="meta"), lengths) == "padded"
    assert RNNEncoder.auto_strategy("cuda", variable_lengths=True) == "padded"
    assert RNNEncoder.auto_strategy("cuda", variable_lengths=False) == "packed"
    if torch.cuda.is_available():
        assert encoder.strategy(torch.zeros(1, 2, 3, device="cuda"), lengths) == "padded"
    # One parameter layout for both: torch's own multi-layer module, nothing per direction.
    assert [name for name, _ in encoder.named_parameters()] == [
        f"rnn.{w}_l0{s}" for s in ("", "_reverse") for w in ("weight_ih", "weight_hh",
                                                              "bias_ih", "bias_hh")]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_parameters_are_initialised_as_separate_modules_were(cell):
    """The layout changed from one module per layer-direction to one module; with the same
    seed the weights are the same numbers, so earlier results still reproduce."""
    torch.manual_seed(3)
    encoder = RNNEncoder(5, 4, cell=cell, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    separate = [CELLS[cell](5 if layer == 0 else 8, 4, batch_first=True)
                for layer in range(2) for _ in range(2)]
    for index, module in enumerate(separate):
        for name, weight in encoder.layer_weights(index // 2, index % 2).items():
            torch.testing.assert_close(weight, getattr(module, name), rtol=0, atol=0)


def test_reverse_within_length_keeps_padding_in_place():
    x = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]]).unsqueeze(2)
    out = reverse_within_length(x, torch.tensor([3, 2])).squeeze(2)
    assert out.tolist() == [[3, 2, 1, 0], [5, 4, 0, 0]]


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_output_dim_accounts_for_the_direction_merge(cell):
    for combine, size in (("concat", 16), ("sum", 8), ("mul", 8)):
        encoder = RNNEncoder(3, 8, cell=cell, bidirectional=True, combine=combine)
        assert encoder.get_output_dim() == size
        assert encoder(torch.randn(2, 4, 3), torch.tensor([4, 2])).outputs.size(2) == size
    assert RNNEncoder(3, 8, cell=cell).get_output_dim() == 8


@pytest.mark.parametrize("options,field", [
    ({"cell": "xyz"}, "cell"),
    ({"combine": "xyz"}, "combine"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"num_layers": 0}, "num_layers"),
    ({"dropout": 1.5}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
    ({"nonlinearity": "sigmoid"}, "nonlinearity"),
    ({"variable_length": "xyz"}, "variable_length"),
])
def test_invalid_options_are_refused_by_name(options, field):
    with pytest.raises(ConfigError, match=f"model.encoder.{field}"):
        RNNEncoder(**{"input_size": 3, "hidden_size": 4, **options})


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_dropout_with_one_layer_warns(cell):
    with pytest.warns(UserWarning, match="no effect with num_layers=1"):
        RNNEncoder(3, 4, cell=cell, dropout=0.3)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_dropout_acts_between_layers_in_training_only(cell):
    encoder = RNNEncoder(3, 4, cell=cell, num_layers=2, dropout=0.5)
    x = torch.randn(2, 5, 3)
    assert not torch.equal(encoder(x).outputs, encoder(x).outputs)  # two masks
    encoder.eval()
    torch.testing.assert_close(encoder(x).outputs, encoder(x).outputs, rtol=0, atol=0)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_lengths_of_the_wrong_shape_are_refused(cell):
    # Values are the batch's to get right (the collate counts them): checking them here would
    # read them back from the device on every call.
    encoder = RNNEncoder(3, 4, cell=cell)
    with pytest.raises(ValueError, match="lengths must have shape"):
        encoder(torch.randn(2, 4, 3), torch.tensor([4, 4, 4]))
