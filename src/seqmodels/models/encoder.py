"""The one recurrent encoder that every task shares.

It maps embedded sequences ``(batch, time, input_size)`` plus their true lengths to per-step
outputs, a pooled final vector and the recurrent state. It knows nothing of tasks; the task
modules read ``get_output_dim()`` to size their heads and never look at the cell type.

The weights live in one torch RNN module (all layers and directions, torch's own layout), which
serves two strategies with identical results (tested):

- ``packed``: one call of that module over a packed batch, so cuDNN runs every layer and
  direction in one fused kernel and never sees padding. But packing is a round trip through
  the host: ``pack_padded_sequence`` sorts the lengths there and sends the order to the device,
  unpacking sends it back, so every call waits on the host (the cost on a GPU:
  docs/benchmarks_gpu.md).
  Without lengths (every row full, the char LM) there is nothing to pack, and this is one
  fused call with no wait: ``auto`` takes it on CUDA then.
- ``padded`` (``auto`` with variable lengths, on any device): each layer and direction runs
  over the padded tensor, reading the module's weights for that layer-direction
  (``torch.func.functional_call`` on a one-layer template). The backward direction runs over
  every sequence reversed *within its own length*, so it starts on the last real token, never
  on padding; forward outputs at real steps cannot depend on the padding after them; final
  states are read at each row's last real step.

Lengths may live on the CPU (where packing needs them); they go to the device once per call,
and masks are built there, so the padded path reads nothing back from the device.

The parallel cells ``mingru`` and ``minlstm`` (``seqmodels.models.parallel_cells``) have gates
that do not read h, so each layer-direction is one scan over the whole sequence. They always take
the padded path (``variable_length`` changes nothing for them); their carried state is exact with
variable lengths too.
"""

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqmodels.errors import ConfigError
from seqmodels.models.parallel_cells import PARALLEL_CELLS, MinRNN

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}  # torch's own; then the parallel ones
CELL_NAMES = (*CELLS, *PARALLEL_CELLS)
COMBINE_MODES = ("concat", "sum", "mul")
VARIABLE_LENGTH_STRATEGIES = ("auto", "padded", "packed")
NONLINEARITIES = ("tanh", "relu")
WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

# An RNN/GRU/minGRU/minLSTM state is one tensor; an LSTM state is (h, c). Each is
# (num_layers * directions, B, H) in torch's layout: index layer * directions + direction.
State = Tensor | tuple[Tensor, Tensor]


@dataclass
class EncoderOutput:
    outputs: Tensor
    """(B, T, output_dim): top-layer outputs per step, directions combined; zero at padding."""
    final: Tensor
    """(B, output_dim): top layer's forward state at each row's last real step and backward
    state at its first step, combined like ``outputs``."""
    state: State | None
    """Recurrent state in torch's layout, to carry into the next call (TBPTT, generation).
    Always exact when every row is full length (``lengths=None``) and with ``packed``; with
    ``padded`` and variable lengths an LSTM's cell state is not known, and this is None."""


def reverse_within_length(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row's first ``lengths[i]`` steps and leave its padding where it is.

    :param x: (B, T, ...) right-padded batch.
    :param lengths: (B,) true lengths, on ``x``'s device.
    """
    steps = torch.arange(x.size(1), device=x.device)
    reversed_steps = lengths.unsqueeze(1) - 1 - steps  # (B, T)
    index = torch.where(reversed_steps >= 0, reversed_steps, steps)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def step_at(x: Tensor, positions: Tensor) -> Tensor:
    """Row i's vector at step ``positions[i]`` (on ``x``'s device): (B, T, H) -> (B, H)."""
    index = positions.view(-1, 1, 1).expand(-1, 1, x.size(2))
    return x.gather(1, index).squeeze(1)


class RNNEncoder(nn.Module):
    """Elman RNN, LSTM, GRU, minGRU or minLSTM; one layer or stacked; uni- or bidirectional.

    :param input_size: features per input step.
    :param hidden_size: units per direction and layer.
    :param cell: ``rnn`` (Elman: h_t = g(W x_t + U h_{t-1} + b)), ``lstm``, ``gru``, or the
        parallel ``mingru`` and ``minlstm`` (Feng et al. 2024; ``parallel_cells``).
    :param num_layers: stacked layers; layer k+1 reads layer k's outputs (both directions
        concatenated, as torch does).
    :param bidirectional: add a backward direction in every layer.
    :param combine: how the top layer's two directions are merged: ``concat`` (2H), ``sum`` or
        ``mul`` (element-wise product; H).
    :param dropout: dropout on the outputs of every layer but the last.
    :param nonlinearity: ``tanh`` or ``relu``, for ``cell=rnn`` only.
    :param variable_length: ``auto`` (``auto_strategy``), ``padded`` or ``packed``; identical
        results, see the module docstring.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        cell: str = "lstm",
        num_layers: int = 1,
        bidirectional: bool = False,
        combine: str = "concat",
        dropout: float = 0.0,
        nonlinearity: str = "tanh",
        variable_length: str = "auto",
    ):
        super().__init__()
        _check_options(input_size, hidden_size, cell, num_layers, combine, dropout, nonlinearity,
                       variable_length)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.cell = cell
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.combine = combine
        self.variable_length = variable_length
        self.dropout = nn.Dropout(dropout)
        if cell in PARALLEL_CELLS:
            self.rnn = MinRNN(cell, input_size, hidden_size, num_layers, bidirectional)
            self._templates = ()
            return
        extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.rnn = CELLS[cell](input_size, hidden_size, num_layers=num_layers,
                               bidirectional=bidirectional, batch_first=True,
                               dropout=dropout if num_layers > 1 else 0.0, **extra)
        # One-layer, one-direction modules without weights of their own (meta): the padded
        # path calls them with one layer-direction of ``self.rnn``. A tuple, so that they are
        # not submodules (no parameters, not moved by ``.to``).
        with torch.device("meta"):
            self._templates = tuple(
                CELLS[cell](input_size if layer == 0 else hidden_size * self.num_directions,
                            hidden_size, batch_first=True, **extra)
                for layer in range(min(num_layers, 2)))

    def get_output_dim(self) -> int:
        if self.num_directions == 2 and self.combine == "concat":
            return 2 * self.hidden_size
        return self.hidden_size

    def layer_weights(self, layer: int, direction: int = 0) -> dict[str, Tensor]:
        """One layer-direction's parameters, named as in a one-layer torch RNN
        (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``; the parallel cells
        have no ``weight_hh``/``bias_hh``)."""
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        return {f"{name}_l0": getattr(self.rnn, name + suffix) for name in WEIGHT_NAMES
                if hasattr(self.rnn, name + suffix)}

    def run_layer(self, layer: int, direction: int, seq: Tensor, initial: State | None = None,
                  lengths: Tensor | None = None) -> tuple[Tensor, State]:
        """One layer-direction over (B, T, I) ``seq`` (already reversed for direction 1), as a
        one-layer torch RNN would: (B, T, H) outputs and its final state. ``lengths`` (on the
        device) let a parallel cell hold its state at padding; torch's cells run on past it."""
        if self.cell in PARALLEL_CELLS:
            return self.rnn.run_layer(layer, direction, seq, initial, lengths)
        template = self._templates[min(layer, 1)]
        return functional_call(template, self.layer_weights(layer, direction), (seq, initial))

    @staticmethod
    def auto_strategy(device_type: str, variable_lengths: bool) -> str:
        """What ``variable_length=auto`` runs: on CUDA without lengths, the one fused call of
        ``packed`` (nothing to pack, nothing to wait for); otherwise ``padded``, which never
        waits on the host (tests/test_host_syncs.py runs the CUDA choice on the CPU)."""
        if device_type == "cuda" and not variable_lengths:
            return "packed"
        return "padded"

    def strategy(self, x: Tensor, lengths: Tensor | None = None) -> str:
        if self.cell in PARALLEL_CELLS:
            return "padded"  # one scan per layer-direction; nothing to pack
        if self.variable_length == "auto":
            return self.auto_strategy(x.device.type, lengths is not None)
        return self.variable_length

    def forward(self, x: Tensor, lengths: Tensor | None = None,
                state: State | None = None) -> EncoderOutput:
        """:param x: (B, T, input_size), right-padded.
        :param lengths: (B,) true lengths, each in [1, T], best kept on the CPU (packing reads
            them there); None: every row is T long.
        :param state: optional initial state in torch's layout (see ``State``).
        """
        batch, steps, _ = x.shape
        if lengths is not None and (lengths.dim() != 1 or lengths.numel() != batch):
            raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
        if self.strategy(x, lengths) == "packed":
            return self._packed(x, lengths, state)
        return self._padded(x, lengths, state)

    def _packed(self, x: Tensor, lengths: Tensor | None, state: State | None) -> EncoderOutput:
        """Every layer and direction in one call of the torch module."""
        if lengths is None:
            out, final = self.rnn(x, state)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                          enforce_sorted=False)
            out, final = self.rnn(packed, state)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        h = final[0] if isinstance(final, tuple) else final  # (layers * directions, B, H)
        top = list(out.split(self.hidden_size, dim=2))
        return EncoderOutput(outputs=self._combine(top),
                             final=self._combine(list(h[-self.num_directions:])), state=final)

    def _padded(self, x: Tensor, lengths: Tensor | None, state: State | None) -> EncoderOutput:
        """Layer by layer and direction by direction over the padded batch."""
        full_length = lengths is None
        if not full_length:
            lengths = lengths.to(x.device, non_blocking=True)  # once per call
        hiddens, cells, layer_input = [], [], x
        for layer in range(self.num_layers):
            if layer > 0:
                layer_input = self.dropout(layer_input)
            outputs = []
            for direction in range(self.num_directions):
                initial = _select(state, layer * self.num_directions + direction)
                backward = direction == 1
                seq = layer_input
                if backward:
                    seq = seq.flip(1) if full_length else reverse_within_length(seq, lengths)
                out, final = self.run_layer(layer, direction, seq, initial, lengths)
                h, c = final if isinstance(final, tuple) else (final, None)
                h, c = h[0], None if c is None else c[0]
                if not full_length:
                    # The RNN ran on past each row's end: read its state where the row ended.
                    h, c = step_at(out, lengths - 1), None
                if backward:
                    out = out.flip(1) if full_length else reverse_within_length(out, lengths)
                outputs.append(out)
                hiddens.append(h)
                cells.append(c)
            layer_input = torch.cat(outputs, dim=2) if len(outputs) == 2 else outputs[0]

        if not full_length:
            mask = torch.arange(x.size(1), device=x.device) < lengths.unsqueeze(1)  # (B, T)
            outputs = [o * mask.unsqueeze(2).to(o.dtype) for o in outputs]
        return EncoderOutput(
            outputs=self._combine(outputs),
            final=self._combine(hiddens[-self.num_directions :]),
            state=self._pack_state(hiddens, cells),
        )

    def _combine(self, parts: list[Tensor]) -> Tensor:
        if len(parts) == 1:
            return parts[0]
        forward, backward = parts
        if self.combine == "concat":
            return torch.cat([forward, backward], dim=-1)
        if self.combine == "sum":
            return forward + backward
        return forward * backward

    def _pack_state(self, hiddens, cells) -> State | None:
        h = torch.stack(hiddens)  # (layers * directions, B, H)
        if self.cell != "lstm":
            return h
        if any(c is None for c in cells):
            return None
        return h, torch.stack(cells)


def _select(state: State | None, index: int):
    """The initial state of one layer-direction, shaped (1, B, H) as a torch RNN wants it."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s[index : index + 1].contiguous() for s in state)
    return state[index : index + 1].contiguous()


def _check_options(input_size, hidden_size, cell, num_layers, combine, dropout, nonlinearity,
                   variable_length) -> None:
    """Refuse impossible settings by name, before any tensor is built."""
    if cell not in CELL_NAMES:
        raise ConfigError(f"model.encoder.cell={cell!r} is not one of {list(CELL_NAMES)}")
    if combine not in COMBINE_MODES:
        raise ConfigError(f"model.encoder.combine={combine!r} is not one of {list(COMBINE_MODES)}")
    if variable_length not in VARIABLE_LENGTH_STRATEGIES:
        raise ConfigError(
            f"model.encoder.variable_length={variable_length!r} is not one of "
            f"{list(VARIABLE_LENGTH_STRATEGIES)}"
        )
    if nonlinearity not in NONLINEARITIES:
        raise ConfigError(
            f"model.encoder.nonlinearity={nonlinearity!r} is not one of {list(NONLINEARITIES)}"
        )
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model.encoder.{name} must be a positive integer, got {value!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.encoder.dropout must be in [0, 1), got {dropout!r}")
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "model.encoder.dropout only acts between stacked layers and has no effect with "
            "num_layers=1; use the model's own dropout instead",
            stacklevel=3,
        )
