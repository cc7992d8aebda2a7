"""minGRU / minLSTM as fused Triton kernels (CUDA; on the CPU under ``TRITON_INTERPRET=1``).

(The loops over time are ``while`` loops: Triton's interpreter cannot take a runtime bound in
``range``, and compiled they are the same sequential loop.)

``fused_scan(cell, gates, h0, lengths)`` takes the (B, T, G*H) gate pre-activations and returns
every h_t, (B, T, H), in the gates' dtype. Each kernel reads the gates, forms a_t and b_t in
registers (float32) and runs h_t = a_t h_(t-1) + b_t with a float32 state, so nothing of size
(B, T, H) is written but the outputs (forward) and the gates' gradient (backward): the elementwise
passes that PyTorch would run one by one are fused away.

Parallel over batch rows, channels and chunks of time. A program owns ``BLOCK`` channels of one
row over one chunk of L steps; when rows x channels alone would not fill the GPU, time is cut
into NC chunks, scanned in three kernels as ``scan.linear_scan`` does (each chunk's end state
from zero and the product of its a_t; the carry across chunks, NC sequential steps; each chunk
again from its entering state). The backward is the reversed recurrence
d_t = g_t + a_(t+1) d_(t+1) in the same three kernels, then the chain rule through a_t and b_t
to the gates, in the same registers. At padded steps (t >= lengths[b]) a_t = 1, b_t = 0 and the
gates' gradient is 0; their gates are not even read.

The PyTorch scan (``scan.linear_scan`` after ``parallel_cells.coefficients``) is the reference
this is tested against (tests/test_parallel_cells.py).
"""

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch: the PyTorch scan runs
    triton = None

# rows x chunks x channels to aim for: an H200 keeps 132 SMs x 16 programs x 256 channels
# (~540k) in flight. With fewer rows x channels than this, time is cut into chunks of at least
# MIN_CHUNK steps (each cut costs one more read of the gates); with more, no chunks.
TARGET_PARALLEL = 1 << 19
MIN_CHUNK = 32


def available() -> bool:
    return triton is not None


def fused_scan(cell: str, gates: Tensor, h0: Tensor | None = None,
               lengths: Tensor | None = None) -> Tensor:
    """Every h_t of minGRU ("mingru") or minLSTM ("minlstm") from (B, T, G*H) gates, the (B, H)
    initial state (None: zeros) and (B,) lengths (None: all T). Differentiable in gates, h0."""
    if triton is None:
        raise RuntimeError("the fused scan needs Triton (part of torch's CUDA builds)")
    return _FusedScan.apply(gates, h0, lengths, cell == "minlstm")


def chunking(batch: int, steps: int, hidden: int) -> tuple[int, int]:
    """(NC chunks, L steps each): enough parallel work, chunks no shorter than MIN_CHUNK."""
    chunks = max(1, min(-(-TARGET_PARALLEL // (batch * hidden)), -(-steps // MIN_CHUNK)))
    length = -(-steps // chunks)
    return -(-steps // length), length


def _launch(hidden: int) -> dict:
    """256 channels a program whatever H (idle lanes past H are masked): one compiled form of
    each kernel per dtype and cell, which a test run leaves in Triton's cache for the bench."""
    return {"BLOCK": 256, "num_warps": 4}


class _FusedScan(torch.autograd.Function):
    """Absent lengths, initial state or carries are passed as full lengths and zeros (a few
    bytes), so each kernel has one compiled form per dtype and cell."""

    @staticmethod
    def forward(ctx, gates, h0, lengths, minlstm):
        gates = gates.contiguous()
        batch, steps, width = gates.shape
        hidden = width // (3 if minlstm else 2)
        chunks, length = chunking(batch, steps, hidden)
        launch = _launch(hidden)
        blocks = triton.cdiv(hidden, launch["BLOCK"])
        device = gates.device
        lengths = (torch.full((batch,), steps, device=device, dtype=torch.int32)
                   if lengths is None else lengths.to(device, torch.int32))
        ctx.h0_dtype = None if h0 is None else h0.dtype
        h0 = (torch.zeros(batch, hidden, device=device) if h0 is None
              else h0.detach().float().contiguous())
        out = gates.new_empty(batch, steps, hidden)
        args = dict(T=steps, H=hidden, L=length, NC=chunks, MINLSTM=minlstm, **launch)
        product, entering = None, h0  # entering: (B * NC, H), the state before each chunk
        if chunks > 1:
            local = torch.empty(batch, chunks, hidden, device=device)
            product = torch.empty_like(local)
            _summary[(batch * chunks, blocks)](gates, lengths, out, local, product,
                                               REVERSE=False, **args)
            entering = torch.empty_like(local)
            _carry[(batch, blocks)](local, product, h0, entering, H=hidden, NC=chunks,
                                    REVERSE=False, **launch)
        _forward[(batch * chunks, blocks)](gates, lengths, entering, out, **args)
        ctx.minlstm, ctx.chunking = minlstm, (chunks, length)
        ctx.save_for_backward(gates, out, lengths, product, entering)
        return out

    @staticmethod
    def backward(ctx, grad):
        gates, out, lengths, product, entering = ctx.saved_tensors
        grad = grad.contiguous()
        batch, steps, hidden = out.shape
        chunks, length = ctx.chunking
        launch = _launch(hidden)
        blocks = triton.cdiv(hidden, launch["BLOCK"])
        args = dict(T=steps, H=hidden, L=length, NC=chunks, MINLSTM=ctx.minlstm, **launch)
        carried = torch.zeros(batch * chunks, hidden, device=out.device)  # adjoint from the right
        if chunks > 1:
            local = torch.empty(batch, chunks, hidden, device=out.device)
            _summary[(batch * chunks, blocks)](gates, lengths, grad, local, local,
                                               REVERSE=True, **args)
            _carry[(batch, blocks)](local, product, carried, carried, H=hidden, NC=chunks,
                                    REVERSE=True, **launch)  # reads its start before writing
        grad_gates = torch.empty_like(gates)
        ends = torch.empty(batch, chunks, hidden, device=out.device)
        _backward[(batch * chunks, blocks)](gates, lengths, out, entering, carried, grad,
                                            grad_gates, ends, **args)
        grad_h0 = ends[:, 0].to(ctx.h0_dtype) if ctx.needs_input_grad[1] else None  # a_1 d_1
        return grad_gates, grad_h0, None, None


if triton is not None:

    @triton.jit
    def _softplus(x):
        return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))

    @triton.jit
    def _width(H, MINLSTM: tl.constexpr):
        if MINLSTM:
            return 3 * H
        else:
            return 2 * H

    @triton.jit
    def _gates(ptr, hs, H, mask, MINLSTM: tl.constexpr):
        """a, b and what the chain rule needs at one step: from the G gate rows at ``ptr``.
        minGRU: a = σ(-k), c = σ(k); minLSTM: a = f' = σ(δ), c = i' = σ(-δ) with
        δ = log σ(k_f) - log σ(k_i) (f' = f / (f + i) without 0/0); b = c g(v)."""
        if MINLSTM:
            kf = tl.load(ptr + hs, mask=mask, other=0.0).to(tl.float32)
            ki = tl.load(ptr + H + hs, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(ptr + 2 * H + hs, mask=mask, other=0.0).to(tl.float32)
            delta = _softplus(-ki) - _softplus(-kf)
            a, c = tl.sigmoid(delta), tl.sigmoid(-delta)
            side_f, side_i = tl.sigmoid(-kf), tl.sigmoid(-ki)
        else:
            k = tl.load(ptr + hs, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(ptr + H + hs, mask=mask, other=0.0).to(tl.float32)
            a, c = tl.sigmoid(-k), tl.sigmoid(k)
            side_f, side_i = a, a
        sv = tl.sigmoid(v)
        candidate = tl.where(v >= 0, v + 0.5, sv)  # g(v)
        slope = tl.where(v >= 0, 1.0, sv * (1.0 - sv))  # g'(v)
        return a, c, candidate, slope, side_f, side_i

    @triton.jit(do_not_specialize=["T", "H", "L", "NC"])
    def _summary(gates, lengths, grad, local, product, T, H, L, NC, MINLSTM: tl.constexpr,
                 REVERSE: tl.constexpr, BLOCK: tl.constexpr):
        """One chunk from a zero state: forward, its last h and the product of its a_t;
        reverse, a_1 d_1 of the chunk's adjoint from d = 0 after it."""
        pid = tl.program_id(0)
        row, chunk = pid // NC, pid % NC
        hs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        live_h = hs < H
        width = _width(H, MINLSTM)
        n = tl.load(lengths + row)
        start = chunk * L
        state = tl.zeros([BLOCK], tl.float32)
        prod = tl.full([BLOCK], 1.0, tl.float32)
        base = row.to(tl.int64) * T
        i = 0
        while i < L:  # steps past T (the last chunk may be shorter) change nothing
            if REVERSE:
                t = start + L - 1 - i
            else:
                t = start + i
            live = t < n  # n <= T
            a, c, candidate, _s, _f, _i = _gates(gates + (base + t) * width, hs, H,
                                                 live_h & live, MINLSTM)
            a = tl.where(live, a, 1.0)
            if REVERSE:
                g = tl.load(grad + (base + t) * H + hs, mask=live_h & (t < T),
                            other=0.0).to(tl.float32)
                state = a * (state + g)
            else:
                state = a * state + tl.where(live, c * candidate, 0.0)
                prod = prod * a
            i += 1
        tl.store(local + pid * H + hs, state, mask=live_h)
        if not REVERSE:
            tl.store(product + pid * H + hs, prod, mask=live_h)

    @triton.jit(do_not_specialize=["H", "NC"])
    def _carry(local, product, h0, entering, H, NC, REVERSE: tl.constexpr,
               BLOCK: tl.constexpr):
        """The state entering each chunk: s -> product * s + local over the chunks in order
        (from the last one backwards for the adjoint), from ``h0``'s row (B, H) or, for the
        adjoint, from the last chunk's entry of ``h0`` (B * NC, H; may be ``entering``)."""
        row = tl.program_id(0)
        hs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        live_h = hs < H
        if REVERSE:
            state = tl.load(h0 + (row * NC + NC - 1) * H + hs, mask=live_h, other=0.0)
        else:
            state = tl.load(h0 + row * H + hs, mask=live_h, other=0.0)
        i = 0
        while i < NC:
            if REVERSE:
                chunk = NC - 1 - i
            else:
                chunk = i
            at = (row * NC + chunk) * H + hs
            tl.store(entering + at, state, mask=live_h)
            state = tl.load(product + at, mask=live_h, other=1.0) * state \
                + tl.load(local + at, mask=live_h, other=0.0)
            i += 1

    @triton.jit(do_not_specialize=["T", "H", "L", "NC"])
    def _forward(gates, lengths, entering, out, T, H, L, NC, MINLSTM: tl.constexpr,
                 BLOCK: tl.constexpr):
        """h_t = a_t h_(t-1) + b_t over one chunk from its entering state, every h_t stored."""
        pid = tl.program_id(0)
        row, chunk = pid // NC, pid % NC
        hs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        live_h = hs < H
        width = _width(H, MINLSTM)
        n = tl.load(lengths + row)
        start = chunk * L
        state = tl.load(entering + pid * H + hs, mask=live_h, other=0.0)
        base = row.to(tl.int64) * T
        i = 0
        while i < L:
            t = start + i
            live = t < n
            a, c, candidate, _s, _f, _i = _gates(gates + (base + t) * width, hs, H,
                                                 live_h & live, MINLSTM)
            state = tl.where(live, a * state + c * candidate, state)
            tl.store(out + (base + t) * H + hs, state.to(out.dtype.element_ty),
                     mask=live_h & (t < T))
            i += 1

    @triton.jit(do_not_specialize=["T", "H", "L", "NC"])
    def _backward(gates, lengths, out, entering, carried, grad, grad_gates, ends, T, H, L, NC,
                  MINLSTM: tl.constexpr, BLOCK: tl.constexpr):
        """d_t = g_t + a_(t+1) d_(t+1) over one chunk backwards from the adjoint carried into
        it, and the gates' gradient at each step; stores a_1 d_1 of the chunk in ``ends``."""
        pid = tl.program_id(0)
        row, chunk = pid // NC, pid % NC
        hs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        live_h = hs < H
        width = _width(H, MINLSTM)
        n = tl.load(lengths + row)
        start = chunk * L
        s = tl.load(carried + pid * H + hs, mask=live_h, other=0.0)
        first = tl.load(entering + pid * H + hs, mask=live_h, other=0.0)  # h before the chunk
        base = row.to(tl.int64) * T
        i = 0
        while i < L:
            t = start + L - 1 - i
            live = t < n
            valid = live_h & (t < T)
            at = (base + t) * width
            a, c, candidate, slope, side_f, side_i = _gates(gates + at, hs, H, live_h & live,
                                                            MINLSTM)
            d = s + tl.load(grad + (base + t) * H + hs, mask=valid, other=0.0).to(tl.float32)
            previous = tl.load(out + (base + t - 1) * H + hs, mask=live_h & live & (t > start),
                               other=0.0).to(tl.float32)
            previous = tl.where(t > start, previous, first)
            grad_a = d * previous  # dL/da_t = d_t h_(t-1)
            grad_c = d * candidate  # dL/dc_t, b_t = c_t g(v_t)
            grad_v = tl.where(live, d * c * slope, 0.0)
            if MINLSTM:  # a = σ(δ), c = σ(-δ) = 1 - a: dL/dδ = (dL/da - dL/dc) a c
                grad_delta = tl.where(live, (grad_a - grad_c) * a * c, 0.0)
                tl.store(grad_gates + at + hs, (grad_delta * side_f).to(
                    grad_gates.dtype.element_ty), mask=valid)
                tl.store(grad_gates + at + H + hs, (-grad_delta * side_i).to(
                    grad_gates.dtype.element_ty), mask=valid)
                tl.store(grad_gates + at + 2 * H + hs, grad_v.to(grad_gates.dtype.element_ty),
                         mask=valid)
            else:  # a = σ(-k), c = σ(k): dL/dk = (dL/dc - dL/da) a c
                grad_k = tl.where(live, (grad_c - grad_a) * a * c, 0.0)
                tl.store(grad_gates + at + hs, grad_k.to(grad_gates.dtype.element_ty),
                         mask=valid)
                tl.store(grad_gates + at + H + hs, grad_v.to(grad_gates.dtype.element_ty),
                         mask=valid)
            s = tl.where(live, a, 1.0) * d
            i += 1
        tl.store(ends + pid * H + hs, s, mask=live_h)
