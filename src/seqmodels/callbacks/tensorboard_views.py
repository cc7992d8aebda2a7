"""What TensorBoard shows beyond the logged scalars, one callback per view: each run's settings
in the HParams tab, a confusion matrix and per-class F1 bars of every validation, and (opt-in)
how much gradient reaches each time step of the encoder.

Every view does nothing unless a ``TensorBoardLogger`` is configured, and draws on rank zero
only. Figures are drawn on matplotlib's Agg canvas, never through pyplot: no GUI backend is
chosen and no global figure list grows during training.
"""

import logging
import time
from collections.abc import Mapping

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch import Tensor
from torch.utils.tensorboard.summary import hparams as hparams_summaries
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassStatScores

from seqmodels.data.batching import IGNORE_INDEX
from seqmodels.errors import ConfigError
from seqmodels.models.encoder import reverse_within_length
from seqmodels.models.tag_metrics import tag_report

log = logging.getLogger(__name__)

HParamValue = bool | int | float | str
HYDRA_FLAGS = ("_partial_", "_recursive_", "_convert_")  # how to build, not what was built
ALIGNMENTS = ("start", "end")


def tensorboard_of(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def figure_pixels(figure) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a matplotlib ``Figure``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def new_figure(width: float, height: float):
    # Imported here: matplotlib takes most of a second to import, which runs that log
    # nothing to TensorBoard should not pay.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


# -- the HParams tab ---------------------------------------------------------------------------
def flatten(settings: Mapping, prefix: str = "") -> dict[str, HParamValue]:
    """Nested settings -> ``{"model/encoder/cell": "lstm", ...}``, in the value types the HParams
    tab takes: ``None`` becomes ``"null"`` and lists their text."""
    flat: dict[str, HParamValue] = {}
    for key, value in settings.items():
        if key in HYDRA_FLAGS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def session_end(status: int) -> Summary:
    """The HParams record of how a run ended (``api_pb2.STATUS_SUCCESS``, ...)."""
    info = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    content = plugin_data_pb2.HParamsPluginData(session_end_info=info,
                                                version=metadata.PLUGIN_DATA_VERSION)
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG,
                                        metadata=metadata.create_summary_metadata(content))])


class HParamsTab(L.Callback):
    """This run's settings in TensorBoard's HParams tab, beside its final metrics.

    Only the run's own record is written: its settings when fitting starts, its end status
    (success, failure, aborted) when fitting ends. No experiment summary, so TensorBoard builds
    the table from every run under the log directory: all their settings, and as metrics the
    last value of every scalar each run logged (``val/acc_best``, ``test/acc``, ...).
    ``TensorBoardLogger.log_hyperparams(params, metrics)`` would instead write an experiment
    summary into every run, and TensorBoard takes the first one it finds as the columns for
    all of them (runs of another task lose theirs), plus a placeholder point at step 0 in every
    metric's chart.

    :param hparams: the settings to show, nested (the config passes the resolved ``model``,
        ``data`` and ``trainer`` groups and the seed); flattened to ``model/encoder/cell``.
    """

    def __init__(self, hparams: Mapping):
        if isinstance(hparams, DictConfig):
            hparams = OmegaConf.to_container(hparams, resolve=True)
        self.hparams = flatten(hparams)
        self._running = False  # a session was started and has not ended yet

    def on_fit_start(self, trainer, pl_module) -> None:
        _, start, _ = hparams_summaries(self.hparams, {})  # experiment, start, (premature) end
        self._write(trainer, start)
        self._running = True

    def on_fit_end(self, trainer, pl_module) -> None:
        self._end(trainer, api_pb2.STATUS_SUCCESS)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt)
        self._end(trainer, api_pb2.STATUS_ABORTED if interrupted else api_pb2.STATUS_FAILURE)

    def _end(self, trainer, status: int) -> None:
        if self._running:
            self._write(trainer, session_end(status))
            self._running = False

    @staticmethod
    def _write(trainer, summary) -> None:
        board = tensorboard_of(trainer)
        if board is None or not trainer.is_global_zero:
            return
        # SummaryWriter has no public call for a prebuilt summary; Lightning's own
        # log_hyperparams writes its hparams summaries the same way.
        board.experiment._get_file_writer().add_summary(summary, trainer.global_step)


# -- validation views --------------------------------------------------------------------------
class ValidationView(L.Callback):
    """Counts one validation epoch's predictions and logs them as an image at its end.

    Applies to models whose vocabularies include ``vocab`` (it names the classes) and whose
    ``validation_step`` returns predicted class ids shaped like ``batch.targets``; padding
    targets (``IGNORE_INDEX``) are skipped. The counts are synced across ranks.
    """

    tag: str

    def __init__(self, vocab: str):
        self.vocab = vocab
        self.metric: Metric | None = None  # None: nothing to show in this run
        self.names: list[str] = []
        self.last: Tensor | None = None  # the counts of the last image, on the CPU

    def make_metric(self, num_classes: int) -> Metric:
        raise NotImplementedError

    def draw(self, counts: Tensor, epoch: int):
        """A matplotlib ``Figure`` of the epoch's counts."""
        raise NotImplementedError

    def setup(self, trainer, pl_module, stage: str) -> None:
        vocab = getattr(pl_module, "vocabs", {}).get(self.vocab)
        if tensorboard_of(trainer) is None or vocab is None:
            self.metric = None
            return
        self.names = list(vocab.itos)
        self.metric = self.make_metric(len(self.names))

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.metric is not None:
            self.metric.to(pl_module.device)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx: int = 0) -> None:
        if self.metric is not None and not trainer.sanity_checking and outputs is not None:
            self.metric.update(outputs, batch.targets)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.metric is None or trainer.sanity_checking:
            return
        self.last = self.metric.compute().cpu()  # every rank takes part in the sync
        self.metric.reset()
        if trainer.is_global_zero:
            image = figure_pixels(self.draw(self.last, trainer.current_epoch))
            tensorboard_of(trainer).experiment.add_image(self.tag, image, trainer.global_step,
                                                         dataformats="HWC")


class ConfusionMatrixView(ValidationView):
    """``val/confusion_matrix``: rows are true classes, columns predictions; each cell shows its
    count, shaded by its share of the row (so rare classes read as clearly as frequent ones)."""

    tag = "val/confusion_matrix"

    def make_metric(self, num_classes: int) -> Metric:
        return MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)

    def draw(self, counts: Tensor, epoch: int):
        size = len(self.names)
        figure = new_figure(2.0 + 0.45 * size, 1.6 + 0.45 * size)
        axes = figure.add_subplot()
        share = counts.float() / counts.sum(dim=1, keepdim=True).clamp(min=1)
        axes.imshow(share.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
        for row in range(size):
            for col in range(size):
                dark = share[row, col] > 0.6
                axes.text(col, row, str(int(counts[row, col])), ha="center", va="center",
                          fontsize=7, color="white" if dark else "black")
        ticks = range(size)
        axes.set_xticks(ticks, self.names, rotation=90 if size > 4 else 0, fontsize=8)
        axes.set_yticks(ticks, self.names, fontsize=8)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(f"validation, epoch {epoch}", fontsize=9)
        return figure


class PerClassF1View(ValidationView):
    """``val/per_class_f1``: one bar per class (per tag, for a tagger), most frequent on top,
    labelled with its support; the rows are those of the tagger's per-tag test report."""

    tag = "val/per_class_f1"

    def make_metric(self, num_classes: int) -> Metric:
        return MulticlassStatScores(num_classes, average=None, ignore_index=IGNORE_INDEX)

    def draw(self, counts: Tensor, epoch: int):
        rows, _ = tag_report(self.names, counts)
        figure = new_figure(5.0, 1.0 + 0.25 * len(rows))
        axes = figure.add_subplot()
        positions = range(len(rows))
        bars = axes.barh(positions, [r["f1"] for r in rows], color="tab:blue")
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
        axes.set_yticks(positions, [f"{r['tag']} ({r['support']})" for r in rows], fontsize=8)
        axes.invert_yaxis()  # most frequent first, at the top
        axes.set_xlim(0.0, 1.0)
        axes.set_xlabel("F1")
        axes.set_title(f"validation, epoch {epoch}", fontsize=9)
        return figure


# -- gradient through time ---------------------------------------------------------------------
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
