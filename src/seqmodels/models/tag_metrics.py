"""Tagging metrics beside torchmetrics': accuracy on a subset of tokens (the words unseen in
training), and the per-tag report."""

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from seqmodels.models.span_metrics import precision_recall_f1


class SubsetAccuracy(Metric):
    """Accuracy over the tokens a mask selects (here: out-of-vocabulary tokens)."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, targets: Tensor, selected: Tensor) -> None:
        self.correct += (preds[selected] == targets[selected]).sum()
        self.total += selected.sum()

    def compute(self) -> Tensor:
        """NaN when nothing was selected (the same on every rank: states are synced first)."""
        return self.correct.float() / self.total.float()


def tag_report(tags: Sequence[str], stats: Tensor) -> tuple[list[dict], str]:
    """Per-tag precision/recall/F1 from (num_tags, 5) stat scores (tp, fp, tn, fn, support):
    the rows (most frequent tag first) and a text table."""
    rows = []
    for tag, (tp, fp, _, fn, support) in zip(tags, stats.tolist()):
        precision, recall, f1 = precision_recall_f1(tp, tp + fp, tp + fn)
        rows.append({"tag": tag, "precision": precision, "recall": recall, "f1": f1,
                     "support": support})
    rows.sort(key=lambda r: (-r["support"], r["tag"]))
    width = max(len("tag"), *(len(t) for t in tags))
    lines = [f"{'tag':<{width}}  precision  recall      f1  support"]
    lines += [f"{r['tag']:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  "
              f"{r['support']:7d}" for r in rows]
    return rows, "\n".join(lines)


# -- the module --------------------------------------------------------------------------------
