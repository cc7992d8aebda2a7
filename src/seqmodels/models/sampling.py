"""Writing text with a trained character language model, one character at a time: steppers
that carry the recurrent state from step to step (no re-run of the prefix), and the choice of
each next character."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from seqmodels.errors import ConfigError
from seqmodels.models.parallel_cells import PARALLEL_CELLS

if TYPE_CHECKING:
    from seqmodels.models.charlm import CharLanguageModel

CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}


class RecurrentStepper:
    """Runs a trained model one character at a time, keeping its recurrent state.

    The prompt goes through the model's own ``forward`` in one call. After that each step
    calls one torch cell (LSTMCell, GRUCell, RNNCell) per layer on a (1, E) input: this skips
    the encoder's per-call bookkeeping (length checks, masks, state packing), which dominates
    the cost of a single step. The cells share the encoder's weights, so the distribution is the
    model's (tested against full re-runs). ``make_stepper`` picks the fastest stepper.
    """

    def __init__(self, model: CharLanguageModel):
        self.model = model
        self.lstm = model.encoder.cell == "lstm"
        self.cells = [_cell_sharing_weights(model.encoder, layer)
                      for layer in range(model.encoder.num_layers)]
        self.state: list = []  # per layer: (h, c) for an LSTM, else h; each (1, H)

    def prime(self, prompt_ids: list[int]) -> Tensor:
        """Read the prompt; return the (V,) logits of the character that follows it."""
        tokens = torch.tensor([prompt_ids], dtype=torch.long, device=self.model.device)  # (1, T)
        logits, state = self.model(tokens)  # (1, T, V)
        # Torch layout (layers, 1, H) -> one (1, H) state (or (h, c) pair) per layer.
        self.state = list(zip(state[0], state[1])) if self.lstm else list(state)
        return logits[0, -1]

    def step(self, char_id: int) -> Tensor:
        """Feed one character; return the (V,) logits of the next."""
        x = self.model.embedding.weight[char_id].unsqueeze(0)  # (1, E)
        for index, cell in enumerate(self.cells):
            self.state[index] = cell(x, self.state[index])
            x = self.state[index][0] if self.lstm else self.state[index]  # (1, H)
        return self.model.head(x)[0]  # (V,)


class FusedLSTMStepper(RecurrentStepper):
    """The LSTM step with fewer, larger operations (about 20% faster than LSTMCell on CPU):
    layer 0's input projection becomes a table lookup, since its input is one of V embeddings;
    the other layers multiply ``[x, h]`` by their two weight matrices side by side; the two
    biases are added once. Same arithmetic as the cells, summed in another order."""

    def __init__(self, model: CharLanguageModel):
        super().__init__(model)
        encoder = model.encoder
        first, *others = [encoder.layer_weights(layer) for layer in range(encoder.num_layers)]
        with torch.no_grad():
            # (V, 4H): every character's layer-0 input projection, biases included.
            self.first_input = model.embedding.weight @ first["weight_ih_l0"].T + _bias(first)
            self.first_hidden = first["weight_hh_l0"].T.contiguous()  # (H, 4H)
            self.weights = [torch.cat([w["weight_ih_l0"], w["weight_hh_l0"]], 1).T.contiguous()
                            for w in others]  # each (2H, 4H)
            self.biases = [_bias(w).unsqueeze(0) for w in others]  # each (1, 4H)
            self.head_weight = model.head.weight.T.contiguous()  # (H, V)
            self.head_bias = model.head.bias.unsqueeze(0)  # (1, V)

    def step(self, char_id: int) -> Tensor:
        h, c = self.state[0]
        gates = torch.addmm(self.first_input[char_id : char_id + 1], h, self.first_hidden)
        h, c = _lstm_update(gates, c)  # each (1, H)
        self.state[0] = (h, c)
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases), start=1):
            below, (h, c) = h, self.state[index]
            gates = torch.addmm(bias, torch.cat([below, h], dim=1), weight)  # (1, 4H)
            h, c = _lstm_update(gates, c)
            self.state[index] = (h, c)
        return torch.addmm(self.head_bias, h, self.head_weight)[0]  # (V,)


class ParallelCellStepper(RecurrentStepper):
    """minGRU / minLSTM one step at a time: the cells' own update (``MinRNN.step``), no scan.
    Their gates read only x_t, so layer 0's gates are a table lookup (its input is one of V
    embeddings), and a step is one matrix product per layer above it."""

    def __init__(self, model: CharLanguageModel):  # no torch cells to build: not super()'s
        self.model, self.lstm, self.state = model, False, []
        self.rnn = model.encoder.rnn
        with torch.no_grad():
            self.first_gates = self.rnn.project(0, 0, model.embedding.weight)  # (V, G*H)

    def step(self, char_id: int) -> Tensor:
        x = self.state[0] = self.rnn.step(self.first_gates[char_id : char_id + 1], self.state[0])
        for index in range(1, len(self.state)):
            x = self.state[index] = self.rnn.step(self.rnn.project(index, 0, x), self.state[index])
        return self.model.head(x)[0]  # (V,)


def make_stepper(model: CharLanguageModel) -> RecurrentStepper:
    if model.encoder.cell in PARALLEL_CELLS:
        return ParallelCellStepper(model)
    return FusedLSTMStepper(model) if model.encoder.cell == "lstm" else RecurrentStepper(model)


def _lstm_update(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """(1, 4H) gates in torch's order (input, forget, cell, output) -> new (h, c)."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _bias(weights: dict[str, Tensor]) -> Tensor:
    return weights["bias_ih_l0"] + weights["bias_hh_l0"]  # (4H,); the encoder always has biases


def _cell_sharing_weights(encoder, layer: int) -> nn.RNNCellBase:
    """A one-step cell (LSTMCell, GRUCell, RNNCell) over one forward layer of the encoder."""
    weights = encoder.layer_weights(layer)
    extra = {"nonlinearity": encoder.rnn.nonlinearity} if encoder.cell == "rnn" else {}
    with torch.device("meta"):  # no memory for weights that are replaced at once
        cell = CELLS[encoder.cell](weights["weight_ih_l0"].size(1), encoder.hidden_size, **extra)
    for name, weight in weights.items():
        setattr(cell, name.removesuffix("_l0"), weight)
    return cell


def pick(logits: Tensor, temperature: float, top_k: int | None,
         generator: torch.Generator) -> int:
    """One character id from (V,) logits: argmax at temperature 0, else a sample from the
    softmax of ``logits / temperature`` over the ``top_k`` likeliest (all when None)."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(logits.softmax(dim=-1), 1, generator=generator))


def check_sampling(num_chars: int, temperature: float, top_k: int | None) -> None:
    if num_chars < 0:
        raise ConfigError(f"num_chars must be >= 0, got {num_chars}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be a positive integer or null, got {top_k}")
