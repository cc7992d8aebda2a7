"""Images of every validation epoch's predictions: a confusion matrix, per-class F1 bars."""

import lightning as L
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassStatScores

from seqmodels.callbacks.tensorboard_views.board import figure_pixels, new_figure, tensorboard_of
from seqmodels.data.batching import IGNORE_INDEX
from seqmodels.models.tag_metrics import tag_report


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
