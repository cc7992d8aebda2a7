"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201): gates
that read x_t only, so the recurrence is linear in h,

    minGRU:   z_t = σ(W_z x_t + b_z),   h̃_t = g(W_h x_t + b_h)
              h_t = (1 - z_t) ⊙ h_(t-1) + z_t ⊙ h̃_t
    minLSTM:  f_t = σ(W_f x_t + b_f),   i_t = σ(W_i x_t + b_i),   h̃_t = g(W_h x_t + b_h)
              f'_t = f_t / (f_t + i_t),   i'_t = i_t / (f_t + i_t)
              h_t = f'_t ⊙ h_(t-1) + i'_t ⊙ h̃_t

and a whole sequence is one scan of h_t = a_t ⊙ h_(t-1) + b_t instead of T dependent steps.

Implemented form: the paper's **log-space** variant (its Listings 6 and 8). The candidate goes
through g(v) = v + 0.5 for v >= 0, σ(v) otherwise, which keeps it positive, so log b_t exists;
log a_t and log b_t are computed directly from the projections (log σ = -softplus(-·); for
minLSTM log f'_t = -softplus(log i_t - log f_t)), and the scan is Heinsen's,
h_t = exp(A_t) ⊙ (h_0 + Σ_(s<=t) exp(log b_s - A_s)) with A_t = Σ_(r<=t) log a_r, i.e. one
``cumsum`` and one ``logcumsumexp``. Two departures from the listings, both exact:

- The initial state enters linearly (``exp(A_t) ⊙ h_0``), not through its log, so any h_0
  works: zeros (no log 0), or a carried state of either sign.
- The scan runs over chunks of ``SCAN_CHUNK`` steps, each starting from the previous chunk's
  last state. Within a chunk |A_t| stays small, so exp(A_t) and the logcumsumexp do not cancel
  large numbers in float32: over thousands of steps A_t reaches -10^4, and the cancellation
  costs accuracy, mostly in the gradients (relative to a float64 loop, 600 steps: 4e-3 in one
  chunk of 512, 1.6e-4 with 128, 2e-5 with 32, as good as a float32 loop's 1e-6 to 1e-5 at
  16). 32 costs ~8% more time than 128 at T=2048; the chunks are a loop of T / 32 steps.

The scan always runs in float32 (under bf16 autocast the projections are bf16, as for any
linear layer, and are widened before the scan). At padded steps (t >= a row's length) a_t = 1
and b_t = 0, so the state passes through unchanged: the last column is each row's state at its
own last step, and padding cannot reach the gradients. Pure PyTorch: CPU and CUDA alike.
Generation steps one token at a time with ``MinRNN.step`` (the same equations, no scan).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Cell -> its gates, stacked in this order in weight_ih / bias_ih ((G*H, I) and (G*H,)).
PARALLEL_CELLS = {"mingru": ("z", "h"), "minlstm": ("f", "i", "h")}
SCAN_CHUNK = 32
# log b_t at padded steps: exp of it is 0, and it stays finite, so no inf - inf in a gradient.
_LOG_ZERO = -1e30


def g(v: Tensor) -> Tensor:
    """The paper's positive candidate activation: v + 0.5 for v >= 0, σ(v) below."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_g(v: Tensor) -> Tensor:
    """log g(v) without forming g (relu keeps the unused branch's gradient finite)."""
    return torch.where(v >= 0, (F.relu(v) + 0.5).log(), -F.softplus(-v))


def log_coefficients(cell: str, gates: Tensor) -> tuple[Tensor, Tensor]:
    """(..., G*H) projections -> float32 (log a, log b) of h_t = a_t h_(t-1) + b_t."""
    gates = gates.float()
    if cell == "mingru":
        k, v = gates.chunk(2, dim=-1)
        return -F.softplus(k), -F.softplus(-k) + log_g(v)  # log(1 - z), log z + log h̃
    f, i, v = gates.chunk(3, dim=-1)
    log_i_over_f = F.softplus(-f) - F.softplus(-i)  # log σ(i) - log σ(f)
    return -F.softplus(log_i_over_f), -F.softplus(-log_i_over_f) + log_g(v)  # log f', log i'h̃


def coefficients(cell: str, gates: Tensor) -> tuple[Tensor, Tensor]:
    """The same (a, b) in linear space, as the equations write them: for one step."""
    gates = gates.float()
    if cell == "mingru":
        k, v = gates.chunk(2, dim=-1)
        z = torch.sigmoid(k)
        return 1 - z, z * g(v)
    f, i, v = gates.chunk(3, dim=-1)
    f, i = torch.sigmoid(f), torch.sigmoid(i)
    return f / (f + i), i / (f + i) * g(v)


def scan(log_a: Tensor, log_b: Tensor, h0: Tensor | None = None,
         chunk: int = SCAN_CHUNK) -> Tensor:
    """Every h_t of h_t = a_t ⊙ h_(t-1) + b_t, t = 1..T, from (B, T, H) log a and log b and the
    (B, H) initial state (None: zeros). Returns (B, T, H)."""
    outputs, h = [], h0
    # split, not slicing: a slice's backward writes a whole (B, T, H) zero tensor per chunk
    for la, lb in zip(log_a.split(chunk, dim=1), log_b.split(chunk, dim=1)):
        cum = la.cumsum(dim=1)  # A_t within the chunk: log of a_1 ⋯ a_t
        out = torch.exp(cum + torch.logcumsumexp(lb - cum, dim=1))
        if h is not None:
            out = out + cum.exp() * h.unsqueeze(1)
        outputs.append(out)
        h = out[:, -1]
    return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]


class MinRNN(nn.Module):
    """Every layer and direction of stacked minGRU or minLSTM cells, named as torch names an
    RNN's: ``weight_ih_l{k}[_reverse]`` (G*H, I) and ``bias_ih_l{k}[_reverse]`` (G*H,), the G
    gates stacked in ``PARALLEL_CELLS`` order. There is no ``weight_hh``: no gate reads h.
    Initialised as ``nn.Linear`` is (uniform in ±1/sqrt(I)), as in the paper's code.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False):
        super().__init__()
        self.mode = cell
        self.gates = PARALLEL_CELLS[cell]
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        directions = 2 if bidirectional else 1
        self.layer_input_sizes = [input_size] + [hidden_size * directions] * (num_layers - 1)
        size = len(self.gates) * hidden_size
        for layer, inputs in enumerate(self.layer_input_sizes):
            for direction in range(directions):
                suffix = _suffix(layer, direction)
                self.register_parameter("weight_ih" + suffix,
                                        nn.Parameter(torch.empty(size, inputs)))
                self.register_parameter("bias_ih" + suffix, nn.Parameter(torch.empty(size)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, weight in self.named_parameters():
            layer = int(name.split("_l")[1].split("_")[0])
            bound = 1 / math.sqrt(self.layer_input_sizes[layer])
            nn.init.uniform_(weight, -bound, bound)

    def project(self, layer: int, direction: int, x: Tensor) -> Tensor:
        """(..., I) inputs -> (..., G*H) gate pre-activations: W x + b."""
        suffix = _suffix(layer, direction)
        return F.linear(x, getattr(self, "weight_ih" + suffix), getattr(self, "bias_ih" + suffix))

    def run_layer(self, layer: int, direction: int, seq: Tensor, initial: Tensor | None = None,
                  lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One layer-direction over (B, T, I) ``seq`` (already reversed for direction 1), like
        a one-layer torch RNN: (B, T, H) outputs and the (1, B, H) state after the last step.

        :param initial: (1, B, H) initial state, or None for zeros.
        :param lengths: (B,) true lengths on ``seq``'s device, or None: every row is T long.
            Past a row's length the state passes through (a_t = 1, b_t = 0).
        """
        log_a, log_b = log_coefficients(self.mode, self.project(layer, direction, seq))
        if lengths is not None:
            padding = (torch.arange(seq.size(1), device=seq.device)
                       >= lengths.unsqueeze(1)).unsqueeze(2)  # (B, T, 1)
            log_a = log_a.masked_fill(padding, 0.0)
            log_b = log_b.masked_fill(padding, _LOG_ZERO)
        out = scan(log_a, log_b, None if initial is None else initial[0].float())
        return out, out[:, -1].unsqueeze(0)

    def step(self, gates: Tensor, h: Tensor) -> Tensor:
        """One step from (B, G*H) gate pre-activations (``project``'s) and the (B, H) state."""
        a, b = coefficients(self.mode, gates)
        return a * h + b


def _suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")
