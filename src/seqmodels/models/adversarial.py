"""Adversarial training on word vectors (Miyato et al. 2017, "Adversarial Training Methods for
Semi-Supervised Text Classification").

Besides the loss at the word vectors, the loss is also taken at the vectors moved, for each
example, by a small step in the direction in which the loss rises fastest (its gradient). On
a small dataset this keeps the classifier from hinging on exact embedding values, as dropout
keeps it from hinging on single units.
"""

from collections.abc import Callable

import torch
from torch import Tensor


def adversarial_loss(loss_at: Callable[[Tensor], Tensor], vectors: Tensor,
                     epsilon: float) -> Tensor:
    """``loss_at(vectors) + loss_at(vectors + r)`` (``adversarial_losses``, summed)."""
    clean, perturbed = adversarial_losses(loss_at, vectors, epsilon)
    return clean + perturbed


def adversarial_losses(loss_at: Callable[[Tensor], Tensor], vectors: Tensor,
                       epsilon: float) -> tuple[Tensor, Tensor]:
    """``loss_at(vectors)`` and ``loss_at(vectors + r)``, the clean loss and the adversarial
    one (training minimises their sum; each is logged on its own).

    :param loss_at: vectors -> the scalar loss (a batch mean).
    :param vectors: (B, ...) word vectors, part of the autograd graph.
    :param epsilon: the L2 norm of each example's ``r``, taken over all its steps and
        features. ``r`` points along the gradient of the loss and is a constant for the
        backward pass (no gradient flows through its direction). Padding gets a zero
        gradient, so it neither receives a share of ``r`` nor changes its norm.

    Whatever ``loss_at`` does after the vectors happens in each call afresh: in the sentiment
    model that includes embedding dropout, so ``r`` is added before dropout and each pass draws
    its own mask (Miyato et al. add ``r`` after dropout, with one mask; that variant is not
    measured here). The inner gradient is taken unscaled: under 16-bit mixed precision with a
    loss scaler a tiny gradient could underflow and leave ``r`` at zero.
    """
    loss = loss_at(vectors)
    (grad,) = torch.autograd.grad(loss, vectors, retain_graph=True)
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)
    r = epsilon * grad / norms.view(-1, *[1] * (grad.dim() - 1))
    return loss, loss_at(vectors + r.detach())
