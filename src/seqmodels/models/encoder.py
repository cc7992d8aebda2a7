"""The one recurrent encoder that every task shares.

It maps embedded sequences ``(batch, time, input_size)`` plus their true lengths to per-step
outputs, a pooled final vector and the recurrent state. It knows nothing of tasks; the task
modules read ``get_output_dim()`` to size their heads and never look at the cell type.

Each layer holds one single-layer torch RNN per direction. The backward direction runs its
module over every sequence reversed *within its own length*, so it starts on the last real
token, never on padding. Two strategies give identical results (tested):

- ``padded`` (default, faster on CPU): run over the padded tensor. Forward outputs at real steps
  cannot depend on the padding that comes after them; final states are read at each row's last
  real step.
- ``packed``: ``pack_padded_sequence`` so that the RNN never sees padding at all.
"""

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqmodels.errors import ConfigError

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
COMBINE_MODES = ("concat", "sum", "mul")
VARIABLE_LENGTH_STRATEGIES = ("padded", "packed")
NONLINEARITIES = ("tanh", "relu")

# An RNN/GRU state is one tensor; an LSTM state is (h, c). Each is (num_layers * directions, B, H)
# in torch's layout: index layer * directions + direction.
State = Tensor | tuple[Tensor, Tensor]


@dataclass
class EncoderOutput:
    outputs: Tensor
    """(B, T, output_dim): top-layer outputs per step, directions combined; zero at padding."""
    final: Tensor
    """(B, output_dim): top layer's forward state at each row's last real step and backward
    state at its first step, combined like ``outputs``."""
    final_hidden: Tensor
    """(num_layers, directions, B, hidden_size): every layer's final hidden state per direction."""
    state: State | None
    """Recurrent state in torch's layout, to carry into the next call (TBPTT, generation).
    Always exact with ``packed``; with ``padded`` an LSTM's cell state is only known when every
    row is full length (the case for TBPTT windows and generation), otherwise this is None."""


def reverse_within_length(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row's first ``lengths[i]`` steps and leave its padding where it is.

    :param x: (B, T, ...) right-padded batch.
    :param lengths: (B,) true lengths.
    """
    steps = torch.arange(x.size(1), device=x.device)
    reversed_steps = lengths.to(x.device).unsqueeze(1) - 1 - steps  # (B, T)
    index = torch.where(reversed_steps >= 0, reversed_steps, steps)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def step_at(x: Tensor, positions: Tensor) -> Tensor:
    """Row i's vector at step ``positions[i]``: (B, T, H) -> (B, H)."""
    index = positions.to(x.device).view(-1, 1, 1).expand(-1, 1, x.size(2))
    return x.gather(1, index).squeeze(1)


class RNNEncoder(nn.Module):
    """Elman RNN, LSTM or GRU; one layer or stacked; uni- or bidirectional.

    :param input_size: features per input step.
    :param hidden_size: units per direction and layer.
    :param cell: ``rnn`` (Elman: h_t = g(W x_t + U h_{t-1} + b)), ``lstm`` or ``gru``.
    :param num_layers: stacked layers; layer k+1 reads layer k's outputs (both directions
        concatenated, as torch does).
    :param bidirectional: add a backward direction in every layer.
    :param combine: how the top layer's two directions are merged: ``concat`` (2H), ``sum`` or
        ``mul`` (element-wise product; H).
    :param dropout: dropout on the outputs of every layer but the last.
    :param nonlinearity: ``tanh`` or ``relu``, for ``cell=rnn`` only.
    :param variable_length: ``padded`` or ``packed``; identical results, see the module docstring.
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
        variable_length: str = "padded",
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
        extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.layers = nn.ModuleList(
            nn.ModuleList(
                CELLS[cell](
                    input_size if layer == 0 else hidden_size * self.num_directions,
                    hidden_size,
                    batch_first=True,
                    **extra,
                )
                for _ in range(self.num_directions)
            )
            for layer in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)

    def get_input_dim(self) -> int:
        return self.input_size

    def get_output_dim(self) -> int:
        if self.num_directions == 2 and self.combine == "concat":
            return 2 * self.hidden_size
        return self.hidden_size

    @property
    def output_dim(self) -> int:
        return self.get_output_dim()

    def is_bidirectional(self) -> bool:
        return self.num_directions == 2

    def forward(self, x: Tensor, lengths: Tensor, state: State | None = None) -> EncoderOutput:
        """:param x: (B, T, input_size), right-padded.
        :param lengths: (B,) true lengths, each in [1, T]; may live on the CPU.
        :param state: optional initial state in torch's layout (see ``State``).
        """
        batch, steps, _ = x.shape
        if lengths.dim() != 1 or lengths.numel() != batch:
            raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
        if batch and (int(lengths.min()) < 1 or int(lengths.max()) > steps):
            raise ValueError(f"every length must be in [1, {steps}], got {lengths.tolist()}")
        lengths_cpu = lengths.cpu()
        full_length = bool((lengths_cpu == steps).all())
        last = lengths_cpu - 1

        hiddens, cells, layer_input = [], [], x
        for index, directions in enumerate(self.layers):
            if index > 0:
                layer_input = self.dropout(layer_input)
            outputs = []
            for direction, rnn in enumerate(directions):
                initial = _select(state, index * self.num_directions + direction)
                backward = direction == 1
                seq = reverse_within_length(layer_input, lengths_cpu) if backward else layer_input
                out, (h, c) = self._run(rnn, seq, lengths_cpu, last, full_length, initial)
                outputs.append(reverse_within_length(out, lengths_cpu) if backward else out)
                hiddens.append(h)
                cells.append(c)
            layer_input = torch.cat(outputs, dim=2) if len(outputs) == 2 else outputs[0]

        mask = (torch.arange(steps) < lengths_cpu.unsqueeze(1)).to(x.device)  # (B, T)
        top = [o * mask.unsqueeze(2).to(o.dtype) for o in outputs]
        top_final = hiddens[-self.num_directions :]
        final_hidden = torch.stack(hiddens).view(self.num_layers, self.num_directions, batch, -1)
        return EncoderOutput(
            outputs=self._combine(top),
            final=self._combine(top_final),
            final_hidden=final_hidden,
            state=self._pack_state(hiddens, cells),
        )

    def _run(self, rnn, seq, lengths_cpu, last, full_length, initial):
        """One direction of one layer. Returns outputs (B, T, H) and (h, c) at each row's last
        real step, each (B, H); c is None for RNN/GRU and where it cannot be known."""
        if self.variable_length == "packed" and not full_length:
            packed = pack_padded_sequence(seq, lengths_cpu, batch_first=True, enforce_sorted=False)
            out, final = rnn(packed, initial)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=seq.size(1))
            h, c = final if isinstance(final, tuple) else (final, None)
            return out, (h[0], None if c is None else c[0])
        out, final = rnn(seq, initial)
        h = final[0][0] if isinstance(final, tuple) else final[0]
        c = final[1][0] if isinstance(final, tuple) else None
        if not full_length:
            # The RNN ran on past each row's end: read its state where the row really ended.
            h = step_at(out, last)
            c = None
        return out, (h, c)

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
    if cell not in CELLS:
        raise ConfigError(f"model.encoder.cell={cell!r} is not one of {sorted(CELLS)}")
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
