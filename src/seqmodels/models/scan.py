"""The linear recurrence h_t = a_t ⊙ h_(t-1) + b_t over (B, T, H), t = 1..T, in PyTorch: a
two-level scan whose number of kernels does not grow with T, with a hand-written backward.

Every step is the recurrence itself in linear space (a multiply-add in float32, the loop's own
arithmetic), so it is exact wherever the step-by-step loop is: no logarithms, no cumulative
products that could overflow, any sign of b and h_0. Parallel over time in three passes over
chunks of ``chunk`` steps (all chunks at once, each pass a loop over the ``chunk`` positions):

1. each chunk's summary from a zero state: its last state and the product of its a_t (this
   product only shrinks, a_t in [0, 1]: it underflows to an exact 0 at worst);
2. the state entering each chunk: the same recurrence over the T / chunk summaries (recursively
   the same scan, so every level is a loop of at most ``chunk`` steps);
3. each chunk again from its entering state, writing every h_t.

The backward is the reversed recurrence: with g_t = dL/dh_t, the adjoint d_t = dL/dh_t in total
is d_t = g_t + a_(t+1) d_(t+1), the same scan run backwards, then dL/db_t = d_t,
dL/da_t = d_t h_(t-1) and dL/dh_0 = a_1 d_1. Nothing is differentiated through the passes.

Dtypes: a and b may be bfloat16 (autocast); the running state is float32 throughout, and the
stored h_t (and d_t) take b's (the gradient's) dtype.
"""

import torch
from torch import Tensor

# 16 positions a chunk: a loop of 16 (B, T/16, H) multiply-adds per pass; T = 2048 is three
# levels (2048 -> 128 -> 8 chunk states). On one CPU thread (forward + backward, H = 1532,
# T = 128 and 2048) chunks of 8 to 64 steps are within 20% of each other.
CHUNK = 16


def linear_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, chunk: int = CHUNK) -> Tensor:
    """Every h_t of h_t = a_t ⊙ h_(t-1) + b_t from (B, T, H) a and b and the (B, H) initial
    state (None: zeros; taken in float32). Returns (B, T, H) in b's dtype; differentiable in
    a, b and h0."""
    if chunk < 2:
        raise ValueError(f"chunk must be at least 2 steps, got {chunk}")
    return _LinearScan.apply(a, b, h0, chunk)


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, chunk):
        a, b = a.contiguous(), b.contiguous()
        ctx.h0_dtype = None if h0 is None else h0.dtype
        h0 = None if h0 is None else h0.float()
        out = torch.empty_like(b)
        _scan(a, b, h0, out, chunk, reverse=False)
        ctx.chunk = chunk
        ctx.save_for_backward(a, out, h0)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, out, h0 = ctx.saved_tensors
        grad = grad.contiguous()
        adjoint = torch.empty_like(grad)  # d_t = dL/dh_t, through every later step
        grad_h0 = _scan(a, grad, None, adjoint, ctx.chunk, reverse=True)  # a_1 d_1
        grad_a = None
        if ctx.needs_input_grad[0]:
            grad_a = torch.empty_like(a)
            torch.mul(adjoint[:, 1:], out[:, :-1], out=grad_a[:, 1:])  # d_t h_(t-1)
            if h0 is None:
                grad_a[:, 0] = 0
            else:
                grad_a[:, 0] = adjoint[:, 0] * h0
        grad_b = adjoint if ctx.needs_input_grad[1] else None
        grad_h0 = grad_h0.to(ctx.h0_dtype) if ctx.needs_input_grad[2] else None
        return grad_a, grad_b, grad_h0, None


def _scan(a: Tensor, b: Tensor, h0: Tensor | None, out: Tensor, chunk: int,
          reverse: bool) -> Tensor:
    """Fill ``out`` (..., T, H) and return the float32 carry after the last step.

    Forward: out_t = h_t = a_t h_(t-1) + b_t from h0; returns h_T.
    Reverse: out_t = d_t = b_t + s_t, s_(t-1) = a_t d_t from s_T = h0 (or 0), t = T..1;
    returns s_0 = a_1 d_1 (b plays g, the gradient arriving at each step).
    """
    steps = a.size(-2)
    count = steps // chunk
    if count < 2:  # too short to split: the plain loop
        return _steps(a, b, h0, out, reverse)
    # The chunked region and the rest: the rest comes last in the order of the steps.
    rest = steps - count * chunk
    main = slice(rest, steps) if reverse else slice(0, steps - rest)
    tail = slice(0, rest) if reverse else slice(steps - rest, steps)
    a_m, b_m, out_m = (x[..., main, :].unflatten(-2, (count, chunk)) for x in (a, b, out))
    # 1. each chunk from zero: its end carry and the product of its a_t ((..., count, H) each)
    local, product = _steps(a_m, b_m, None, None, reverse, with_product=True)
    # 2. the carry entering each chunk, by the forward recurrence over the chunks in order
    if reverse:
        product, local = product.flip(-2), local.flip(-2)
    ends = torch.empty_like(local)
    _scan(product, local, h0, ends, chunk, reverse=False)
    entering = torch.cat([torch.zeros_like(ends[..., :1, :]) if h0 is None
                          else h0.unsqueeze(-2), ends[..., :-1, :]], dim=-2)
    if reverse:
        entering = entering.flip(-2)
    # 3. every chunk again from its entering carry, writing every step
    carry = _steps(a_m, b_m, entering, out_m, reverse)
    carry = carry[..., 0, :] if reverse else carry[..., -1, :]
    if rest:
        carry = _steps(a[..., tail, :], b[..., tail, :], carry, out[..., tail, :], reverse)
    return carry


def _steps(a: Tensor, b: Tensor, carry: Tensor | None, out: Tensor | None, reverse: bool,
           with_product: bool = False):
    """The recurrence step by step along dim -2, batched over every dim before it; the carry
    in float32. Returns the final carry, and with ``with_product`` also the product of a."""
    product = None
    for t in range(a.size(-2) - 1, -1, -1) if reverse else range(a.size(-2)):
        a_t, b_t = a[..., t, :], b[..., t, :]
        if reverse:  # d_t = g_t + s_t; s_(t-1) = a_t d_t
            state = b_t.float() if carry is None else carry + b_t
            if out is not None:
                out[..., t, :] = state
            carry = a_t * state
        else:  # h_t = a_t h_(t-1) + b_t
            carry = b_t.float() if carry is None else torch.addcmul(b_t, a_t, carry)
            if out is not None:
                out[..., t, :] = carry
        if with_product:
            product = a_t.float() if product is None else product * a_t
    return (carry, product) if with_product else carry
