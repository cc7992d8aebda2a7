"""What a plain loop does with one batch: its loss from each model's public methods, the
gradient clipping Lightning's ``gradient_clip_val`` does (sparse gradients too), Adam in
each of its CPU implementations, and the encoder strategy switched on a whole model."""

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmodels.data.batching import IGNORE_INDEX, Batch
from seqmodels.models.charlm import detach_state
from seqmodels.models.encoder import RNNEncoder

OPTIMIZERS = ("adam", "foreach", "fused", "sparse")


# -- what a plain loop does with one batch -------------------------------------------------------
def batch_tokens(batch: Batch) -> int:
    """Real tokens (characters for the language model) in a batch; padding does not count."""
    return int(batch.lengths.sum())


def task_loss(model: nn.Module, batch: Batch, state=None) -> tuple[Tensor, object]:
    """The training loss of one batch, written from each model's public methods, and the
    recurrent state to carry into the next batch (language model only)."""
    if model.task == "classification":
        # The classifier's own objective: cross-entropy, with label smoothing, character
        # features and the adversarial loss where the experiment sets them.
        return model.training_objective(batch), None
    if model.task == "tagging":
        logits = model(batch.tokens, batch.lengths, batch.chars)  # (B, T, C)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(),
                               ignore_index=IGNORE_INDEX)
        return loss, None
    if model.task == "language_model":
        logits, state = model(batch.tokens, state)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten()), detach_state(state)
    raise ValueError(f"no plain loop for task {model.task!r}")


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (what Lightning's ``gradient_clip_val`` calls), which
    also takes sparse gradients: torch's own refuses them. A sparse gradient is coalesced
    first, since its repeated rows add up."""
    parameters = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in parameters):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    grads = []
    for p in parameters:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale)
    return total


def make_optimizers(model: nn.Module, kind: str, lr: float, weight_decay: float = 0.0,
                    eps: float = 1e-8) -> list[torch.optim.Optimizer]:
    """Adam in one of its CPU implementations.

    ``adam``: torch's default on CPU (a Python loop over the parameters); ``foreach``: one
    multi-tensor kernel per operation; ``fused``: one fused kernel; ``sparse``: ``SparseAdam``
    for the embedding tables that have sparse gradients (it updates only the rows a batch
    used: "lazy" Adam, not the same numbers as dense Adam after the first step) and fused Adam
    for the rest. SparseAdam also adds ``eps`` before its bias correction, not after, which
    weighs it ~30x more in the first steps (it matters only where gradients are near ``eps``).
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer {kind!r} is not one of {OPTIMIZERS}")
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "sparse":
        sparse_ids = {id(m.weight) for m in model.modules()
                      if isinstance(m, nn.Embedding) and m.sparse}
        if not sparse_ids:
            raise ValueError("optimizer 'sparse' needs an nn.Embedding with sparse=True")
        if weight_decay:
            raise ValueError("SparseAdam has no weight decay")
        sparse = [p for p in params if id(p) in sparse_ids]
        dense = [p for p in params if id(p) not in sparse_ids]
        return [torch.optim.SparseAdam(sparse, lr=lr, eps=eps),
                torch.optim.Adam(dense, lr=lr, eps=eps, fused=True)]
    flags = {"adam": {"foreach": False, "fused": False}, "foreach": {"foreach": True},
             "fused": {"fused": True}}[kind]
    return [torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, eps=eps, **flags)]


def set_variable_length(model: nn.Module, strategy: str) -> nn.Module:
    """Switch every ``RNNEncoder`` in the model (a tagger's character encoder too) to
    ``padded`` or ``packed``; the two give identical results (tests/test_fast_paths.py)."""
    for module in model.modules():
        if isinstance(module, RNNEncoder):
            module.variable_length = strategy
    return model
