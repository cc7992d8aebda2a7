"""``ShadowArms``: a Lightning callback that times Lightning's own training epochs and runs
plain-loop arms beside them in the same process, an epoch of each per Lightning epoch."""

import time

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging

from benchmarks.arms import Arm, dev_accuracy
from benchmarks.measure import CpuWatch, Measurement, clean_rounds
from benchmarks.steps import batch_tokens

# Plans for ShadowArms, by name: the benchmark fills this before it calls train(cfg).
PLANS: dict[str, dict] = {}


class ShadowArms(L.Callback):
    """Time Lightning's training epochs and run plain-loop arms beside them.

    Lightning's epoch is timed from ``on_train_epoch_start`` to the end of its last training
    batch: its dataloader, forward, backward, optimizer step, logging, progress bar and every
    callback's per-batch hooks count, while validation and checkpointing (which come after the
    last batch) do not; a validation inside the epoch is taken out. The shadow arms run each
    epoch's batches after Lightning's epoch on even epochs and before it on odd ones.

    The plan (``PLANS[plan]``): ``cfg``, ``specs`` (ArmSpec list), ``evaluate`` (measure every
    arm's dev accuracy after every epoch), ``clean_reps`` (stop once this many epochs after
    the first were undisturbed by other processes, see ``CpuWatch``). Results land in the plan:
    ``arms`` (the Lightning arm first), ``accuracy``.
    """

    def __init__(self, plan: str):
        self.plan = PLANS[plan]
        self.lightning = Arm("seqmodels-train", None, [], batches=lambda epoch: [])
        self.shadows: list[Arm] = []
        self._start = 0.0
        self._tokens = 0
        self._timing = False
        self._validation_start = 0.0
        self._watch = CpuWatch()

    def on_train_start(self, trainer, pl_module) -> None:
        self.lightning.model = pl_module
        cfg, datamodule = self.plan["cfg"], trainer.datamodule
        # Built now, from the weights Lightning starts from, before its first step.
        self.shadows = [spec.build(cfg, datamodule, pl_module) for spec in self.plan["specs"]]
        self.plan["arms"] = [self.lightning, *self.shadows]

    def _run_shadows(self, trainer) -> None:
        for arm in self.shadows:
            arm.run_epoch(trainer.current_epoch, self._max_batches(trainer))

    @staticmethod
    def _max_batches(trainer) -> int:
        return int(trainer.num_training_batches)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch % 2 == 1:
            self._run_shadows(trainer)
        self._tokens = 0
        self._timing = True
        self._watch = CpuWatch()
        self._start = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._timing:  # a validation inside the epoch (val_check_interval < 1) is not training
            self._start += time.perf_counter() - self._validation_start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._tokens += batch_tokens(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self._max_batches(trainer):
            self._timing = False
            seconds = time.perf_counter() - self._start
            self.lightning.epochs.append(Measurement(seconds, self._tokens, batch_idx + 1,
                                                     self._watch.others(),
                                                     self._watch.faults()))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch % 2 == 0:
            self._run_shadows(trainer)
        wanted = self.plan.get("clean_reps")
        arms = [self.lightning, *self.shadows]
        if wanted is not None and len(clean_rounds(arms)) >= wanted:
            trainer.should_stop = True  # enough undisturbed epochs (Lightning keeps min_epochs)
        if self.plan.get("evaluate"):
            self._evaluate(trainer)

    def _evaluate(self, trainer) -> None:
        """Every arm's dev accuracy after this epoch: ``plan["accuracy"][arm] = [(last
        weights, averaged weights or None), ...]``, one pair per epoch."""
        averaging = [c for c in trainer.callbacks if isinstance(c, WeightAveraging)]
        if averaging:  # Lightning validates (and finally keeps) the averaged weights
            self.lightning.averaged = averaging[0]._average_model
        val = trainer.datamodule.val_dataloader()
        results = self.plan.setdefault("accuracy", {})
        for arm in self.plan["arms"]:
            averaged = None if arm.averaged is None else dev_accuracy(arm.averaged.module, val)
            results.setdefault(arm.name, []).append((dev_accuracy(arm.model, val), averaged))
