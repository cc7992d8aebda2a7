"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201): gates
that read x_t only, so the recurrence is linear in h,

    minGRU:   z_t = σ(W_z x_t + b_z),   h̃_t = g(W_h x_t + b_h)
              h_t = (1 - z_t) ⊙ h_(t-1) + z_t ⊙ h̃_t
    minLSTM:  f_t = σ(W_f x_t + b_f),   i_t = σ(W_i x_t + b_i),   h̃_t = g(W_h x_t + b_h)
              f'_t = f_t / (f_t + i_t),   i'_t = i_t / (f_t + i_t)
              h_t = f'_t ⊙ h_(t-1) + i'_t ⊙ h̃_t

and a whole sequence is one scan of h_t = a_t ⊙ h_(t-1) + b_t instead of T dependent steps.

Implemented form: the paper's linear-space equations with its positive candidate
g(v) = v + 0.5 for v >= 0, σ(v) below (the activation of its log-space variant, Listings 6 and
8; kept so that trained models mean the same), and a scan of the linear recurrence:

- on CUDA, a fused Triton kernel (``scan_triton``) reads the gate pre-activations, forms a_t and
  b_t in registers and runs the recurrence, forward and backward (a chunked scan over time, so
  a long sequence still fills the GPU);
- elsewhere, and as the reference in tests, ``scan.linear_scan``: a two-level scan in PyTorch
  (all chunks at once, then the carries across chunks) with a hand-written backward, after a_t
  and b_t are formed by ordinary tensor operations.

Both are exact in linear space (each step is the loop's own multiply-add, any sign of h_0 or
b_t) and accumulate the state in float32. Under autocast the projections, a_t and b_t and the
outputs are in the autocast dtype (bf16): only the running state is float32. At padded steps
(t >= a row's length) a_t = 1 and b_t = 0, so the state passes through unchanged: the last
column is each row's state at its own last step, and padding cannot reach the gradients.
Generation steps one token at a time with ``MinRNN.step`` (the same equations, no scan).
"""

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmodels.models import scan_triton
from seqmodels.models.scan import linear_scan

# Cell -> its gates, stacked in this order in weight_ih / bias_ih ((G*H, I) and (G*H,)).
PARALLEL_CELLS = {"mingru": ("z", "h"), "minlstm": ("f", "i", "h")}
# "auto": the Triton kernel on CUDA where Triton imports, the PyTorch scan elsewhere;
# the environment variable SEQMODELS_SCAN sets it for every model a process builds.
SCAN_BACKENDS = ("auto", "triton", "torch")


def g(v: Tensor) -> Tensor:
    """The paper's positive candidate activation: v + 0.5 for v >= 0, σ(v) below."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def coefficients(cell: str, gates: Tensor) -> tuple[Tensor, Tensor]:
    """(..., G*H) projections -> float32 (a, b) of h_t = a_t h_(t-1) + b_t. minLSTM's
    f' = f / (f + i) is σ(δ) with δ = log σ(f) - log σ(i): no 0/0 when both gates are ~0."""
    gates = gates.float()  # bf16 gates still make a_t in float32: a bf16 a_t near 1 is 0.4% off
    if cell == "mingru":
        k, v = gates.chunk(2, dim=-1)
        return torch.sigmoid(-k), torch.sigmoid(k) * g(v)  # 1 - z (exact for large k), z h̃
    f, i, v = gates.chunk(3, dim=-1)
    delta = F.softplus(-i) - F.softplus(-f)
    return torch.sigmoid(delta), torch.sigmoid(-delta) * g(v)  # f', i' h̃


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
        # SCAN_BACKENDS; SEQMODELS_SCAN=torch in the environment keeps CUDA off Triton
        self.scan_backend = os.environ.get("SEQMODELS_SCAN", "auto")
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
        gates = self.project(layer, direction, seq)
        h0 = None if initial is None else initial[0]
        if self.backend(gates.device) == "triton":
            out = scan_triton.fused_scan(self.mode, gates, h0, lengths)
        else:
            a, b = coefficients(self.mode, gates)
            if lengths is not None:
                padding = (torch.arange(seq.size(1), device=seq.device)
                           >= lengths.unsqueeze(1)).unsqueeze(2)  # (B, T, 1)
                a, b = a.masked_fill(padding, 1.0), b.masked_fill(padding, 0.0)
            out = linear_scan(a, b, h0).to(gates.dtype)  # float32 state, outputs as the gates
        return out, out[:, -1].unsqueeze(0)

    def backend(self, device: torch.device) -> str:
        """The scan that runs on ``device``: ``scan_backend`` ("auto", "triton" or "torch")."""
        if self.scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"scan_backend (SEQMODELS_SCAN) must be one of "
                             f"{', '.join(SCAN_BACKENDS)}, got {self.scan_backend!r}")
        if self.scan_backend == "torch":
            return "torch"
        if self.scan_backend == "triton" or device.type == "cuda" and scan_triton.available():
            return "triton"
        return "torch"

    def step(self, gates: Tensor, h: Tensor) -> Tensor:
        """One step from (B, G*H) gate pre-activations (``project``'s) and the (B, H) state."""
        a, b = coefficients(self.mode, gates)
        return a * h + b


def _suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")
