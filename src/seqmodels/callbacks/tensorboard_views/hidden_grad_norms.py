"""Gradient through time: how much gradient reaches each time step of the encoder."""

import logging

import lightning as L
import torch
from torch import Tensor

from seqmodels.callbacks.tensorboard_views.board import figure_pixels, new_figure, tensorboard_of
from seqmodels.errors import ConfigError
from seqmodels.models.encoder import reverse_within_length

log = logging.getLogger(__name__)

ALIGNMENTS = ("start", "end")


class HiddenGradNorms(L.Callback):
    """Every ``every_n_steps`` optimizer steps: how much gradient reaches each time step of the
    encoder, ``mean over the batch of ||dL/dx_t||`` with ``x_t`` the encoder's input at step t,
    drawn on a log scale as ``train/grad_norm_by_step``. A simple RNN's curve falls steeply
    with the distance from where the loss attaches (vanishing gradients); an LSTM's much less.

    Why the input and not the hidden outputs: each torch RNN runs as one fused op, so autograd
    never sees the per-step hidden states inside it. The gradient on the encoder's ``outputs``
    is only what the head puts there directly (with ``pooling=final``: the last step alone).
    The gradient on ``x_t`` has come back through every later step of the recurrence:
    ``dL/dx_t = (dh_t/dx_t)^T dL/dh_t``, so it follows ``||dL/dh_t||`` (checked against an
    unrolled RNN: a near-constant ratio).

    The gradient is read by a tensor hook during the real backward pass and left unchanged,
    so training is exactly as without this callback.

    :param every_n_steps: measure at optimizer steps 0, n, 2n, ...
    :param align: ``end``: position 0 is each sequence's last real step (where a many-to-one
        model reads its final state); ``start``: its first. Each position averages the rows
        long enough to have it.
    """

    tag = "train/grad_norm_by_step"

    def __init__(self, every_n_steps: int = 100, align: str = "end"):
        if every_n_steps < 1:
            raise ConfigError(f"callbacks.hidden_grad_norms.every_n_steps must be >= 1, got "
                              f"{every_n_steps}")
        if align not in ALIGNMENTS:
            raise ConfigError(f"callbacks.hidden_grad_norms.align={align!r} is not one of "
                              f"{list(ALIGNMENTS)}")
        self.every_n_steps = every_n_steps
        self.align = align
        self.history: dict[int, Tensor] = {}  # step -> (T,) mean norms by position
        self._handle = None
        self._step = -1  # the step being measured; once per step when accumulating gradients
        self._lengths: Tensor | None = None
        self._grad: Tensor | None = None
        self._warned = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not isinstance(getattr(pl_module, "encoder", None), torch.nn.Module):
            raise ConfigError("callbacks.hidden_grad_norms needs a model with an `encoder`")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if (step % self.every_n_steps or step == self._step or not trainer.is_global_zero
                or tensorboard_of(trainer) is None):
            return
        self._step = step
        self._handle = pl_module.encoder.register_forward_pre_hook(self._catch_input,
                                                                   with_kwargs=True)

    def _catch_input(self, module, args, kwargs) -> None:
        self._handle.remove()  # one forward pass per measured step
        self._handle = None
        x = args[0] if args else kwargs["x"]
        self._lengths = (args[1] if len(args) > 1 else kwargs["lengths"]).cpu()
        if x.requires_grad:
            x.register_hook(self._keep_grad)
        elif not self._warned:
            self._warned = True
            log.warning("hidden_grad_norms: the encoder's input has no gradient (frozen "
                        "embeddings and no trained features before the encoder): nothing to show")

    def _keep_grad(self, grad: Tensor) -> None:
        self._grad = grad.detach()  # returning None leaves the gradient as it was

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._handle is not None:  # the encoder did not run in this step
            self._handle.remove()
            self._handle = None
        if self._grad is None:
            return
        norms = step_norms(self._grad, self._lengths, self.align)
        self._grad = None
        self.history[self._step] = norms
        image = figure_pixels(self.draw(norms, self._step))
        tensorboard_of(trainer).experiment.add_image(self.tag, image, self._step,
                                                     dataformats="HWC")

    def draw(self, norms: Tensor, step: int):
        figure = new_figure(5.0, 3.0)
        axes = figure.add_subplot()
        axes.plot(range(len(norms)), norms.numpy(), marker=".")
        axes.set_yscale("log")
        where = "back from the last" if self.align == "end" else "on from the first"
        axes.set_xlabel(f"steps {where} token of each sequence")
        axes.set_ylabel("mean ||dL/dx_t||")
        axes.set_title(f"gradient reaching each step, training step {step}", fontsize=9)
        return figure


def step_norms(grad: Tensor, lengths: Tensor, align: str = "start") -> Tensor:
    """(B, T, D) gradients and (B,) lengths -> (T,) mean gradient norm at each position,
    over the rows that are at least that long; ``align=end`` counts positions back from each
    row's last real step."""
    norms = grad.float().norm(dim=2).cpu()  # (B, T)
    if align == "end":
        norms = reverse_within_length(norms.unsqueeze(2), lengths).squeeze(2)
    real = torch.arange(norms.size(1)) < lengths.unsqueeze(1)  # (B, T)
    longest = int(lengths.max())
    return (norms * real).sum(dim=0)[:longest] / real.sum(dim=0)[:longest]
