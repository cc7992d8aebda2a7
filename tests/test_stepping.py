"""SequenceModule trains in Lightning's automatic loop with one change of order: gradients are
zeroed before the forward (through the public ``optimizer_zero_grad`` hook), not between forward
and backward. The reference is the same module with Lightning's own order: the same weights,
learning rates and step counts after training with gradient clipping, accumulation and each
kind of LR scheduler, all set as Lightning Trainer arguments."""

import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, StepLR
from torch.utils.data import DataLoader

from seqmodels.config import build
from seqmodels.data.batching import collate_classification
from seqmodels.models.sentiment import SentimentClassifier
from tests.conftest import compose_config

VOCAB, BATCH, BATCHES = 30, 4, 7  # 7 batches: accumulating 3 leaves a window of 1 at the end


class PerStepSchedule(SentimentClassifier):
    """A one-cycle schedule stepped after every optimizer step (as the char LM's)."""

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        steps = self.trainer.estimated_stepping_batches
        return {"optimizer": optimizer, "lr_scheduler": {
            "scheduler": OneCycleLR(optimizer, max_lr=0.05, total_steps=int(steps)),
            "interval": "step"}}


def lightning_order(cls):
    """``cls`` with Lightning's own zeroing: between the forward and the backward."""

    class LightningOrder(cls):
        def training_step(self, batch, batch_idx):
            return self.training_loss(batch, batch_idx)

        def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
            L.LightningModule.optimizer_zero_grad(self, epoch, batch_idx, optimizer)

    return LightningOrder


def loader(seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(BATCH * BATCHES):
        length = int(torch.randint(2, 9, (1,), generator=generator))
        tokens = torch.randint(2, VOCAB, (length,), generator=generator).tolist()
        examples.append((tokens, int(torch.randint(0, 2, (1,), generator=generator))))
    batches = [collate_classification(examples[i:i + BATCH])
               for i in range(0, len(examples), BATCH)]
    return DataLoader(batches, batch_size=None)


ADAM = functools.partial(torch.optim.Adam, lr=0.01)
ENCODER = {"cell": "lstm", "hidden_size": 6, "bidirectional": True}


def fit(cls, settings: dict, scheduler, callbacks=(), ckpt_path=None, optimizer=ADAM,
        encoder=ENCODER, **trainer_kwargs):
    torch.manual_seed(0)
    model = cls(vocab_size=VOCAB, num_classes=2, embedding_dim=8, scheduler=scheduler,
                encoder=encoder, optimizer=optimizer)
    trainer_settings = settings
    checkpoints = any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks)
    options = {"max_epochs": 3, "enable_checkpointing": checkpoints, **trainer_settings,
               **trainer_kwargs}
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=list(callbacks), **options)
    trainer.fit(model, train_dataloaders=loader(1), val_dataloaders=loader(2),
                ckpt_path=ckpt_path)
    return model, trainer


CASES = {
    "clip by norm": ({"gradient_clip_val": 0.05}, None, SentimentClassifier),
    "clip by value, accumulate 3": ({"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value",
                                     "accumulate_grad_batches": 3}, None, SentimentClassifier),
    "step LR each epoch": ({}, functools.partial(StepLR, step_size=1, gamma=0.5),
                           SentimentClassifier),
    "plateau on val/loss": ({"gradient_clip_val": 1.0},
                            functools.partial(ReduceLROnPlateau, patience=0, threshold=1.0),
                            SentimentClassifier),
    "one-cycle each step, accumulate 2": ({"accumulate_grad_batches": 2}, None, PerStepSchedule),
}
# Cases with trainer options of their own: a validation every 2 batches falls inside the
# windows of 3 (their gradients must survive it: zeroing only at a window's first batch);
# bf16 autocast on the CPU.
TRAINER_CASES = {
    "validation inside windows of 3": ({"accumulate_grad_batches": 3},
                                       {"val_check_interval": 2}),
    "bf16 mixed precision, clip by norm": ({"gradient_clip_val": 0.05},
                                           {"precision": "bf16-mixed"}),
}


@pytest.mark.parametrize("case", [
    *CASES, *(pytest.param(case, marks=pytest.mark.cpu_bf16) if "bf16" in case else case
              for case in TRAINER_CASES)])
def test_zeroing_before_the_forward_gives_the_weights_of_lightnings_order(case, one_thread):
    if case in TRAINER_CASES:
        (settings, extra), scheduler, cls = TRAINER_CASES[case], None, SentimentClassifier
    else:
        (settings, scheduler, cls), extra = CASES[case], {}
    ours, our_trainer = fit(cls, settings, scheduler, **extra)
    reference, reference_trainer = fit(lightning_order(cls), settings, scheduler, **extra)

    assert our_trainer.global_step == reference_trainer.global_step
    accumulate = settings.get("accumulate_grad_batches", 1)
    assert our_trainer.global_step == 3 * -(-BATCHES // accumulate)  # a step per window
    lrs = [[g["lr"] for g in t.optimizers[0].param_groups] for t in (our_trainer,
                                                                      reference_trainer)]
    assert lrs[0] == lrs[1]
    if scheduler is not None or cls is PerStepSchedule:
        assert lrs[0][0] != 0.01  # the schedule did move the learning rate
    for (name, ours_p), ref_p in zip(ours.named_parameters(), reference.parameters(),
                                     strict=True):
        torch.testing.assert_close(ours_p, ref_p, rtol=0, atol=1e-6, msg=name)
    # The settings were in force: training without them ends elsewhere.
    assert not torch.equal(ours.classifier.weight, weights_without_settings())


def loss_scaling() -> MixedPrecision:
    """16-mixed as on a GPU: float16 autocast and a loss scaler (Lightning turns a plain
    ``precision="16-mixed"`` into bf16 on a CPU, with no scaler)."""
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))


def test_loss_scaling_with_clipping_trains_the_configured_fused_adam(one_thread):
    """Every model config asks for fused Adam, which unscales inside its step, so Lightning
    refuses to clip its gradients under a loss scaler ("does not allow for gradient
    clipping"). The module builds it unfused there; the weights are those of Lightning's
    automatic loop with plain Adam: unscaled, then clipped, then stepped."""
    clip, gru = {"gradient_clip_val": 0.05}, {"cell": "gru", "hidden_size": 6}  # fp16 LSTM: GPU
    fused = functools.partial(torch.optim.Adam, lr=0.01, fused=True)
    ours, our_trainer = fit(SentimentClassifier, clip, None, optimizer=fused, encoder=gru,
                            plugins=[loss_scaling()])
    reference, reference_trainer = fit(lightning_order(SentimentClassifier), clip, None,
                                       encoder=gru, plugins=[loss_scaling()])
    assert our_trainer.global_step == reference_trainer.global_step == 3 * BATCHES
    scales = [t.precision_plugin.scaler.get_scale() for t in (our_trainer, reference_trainer)]
    assert scales[0] == scales[1] != 1.0  # the loss was scaled (and no step skipped apart)
    for (name, ours_p), ref_p in zip(ours.named_parameters(), reference.parameters(),
                                     strict=True):
        torch.testing.assert_close(ours_p, ref_p, rtol=0, atol=1e-6, msg=name)
    # The clipping was in force: unclipped, the same steps end elsewhere.
    unclipped, _ = fit(SentimentClassifier, {}, None, optimizer=fused, encoder=gru,
                       plugins=[loss_scaling()])
    assert not torch.allclose(unclipped.classifier.weight, ours.classifier.weight, atol=1e-3)


@pytest.mark.cpu_bf16
def test_bf16_with_clipping_trains_the_configured_fused_adam(one_thread):
    """Lightning's mixed-precision plugin refuses to clip a fused optimizer's gradients even
    without a loss scaler ("does not allow for gradient clipping"), which would stop every
    bf16-mixed run of the default configs. The module clips them itself there; the weights are
    those of the same steps with plain Adam (fused and for-loop Adam differ in rounding only)."""
    clip = {"gradient_clip_val": 0.05, "precision": "bf16-mixed"}
    fused = functools.partial(torch.optim.Adam, lr=0.01, fused=True)
    ours, trainer = fit(SentimentClassifier, clip, None, optimizer=fused)
    assert trainer.optimizers[0].defaults["fused"]
    reference, _ = fit(SentimentClassifier, clip, None)
    for (name, ours_p), ref_p in zip(ours.named_parameters(), reference.parameters(),
                                     strict=True):
        torch.testing.assert_close(ours_p, ref_p, rtol=0, atol=1e-5, msg=name)
    unclipped, _ = fit(SentimentClassifier, {"precision": "bf16-mixed"}, None, optimizer=fused)
    assert not torch.allclose(unclipped.classifier.weight, ours.classifier.weight, atol=1e-3)


@functools.cache
def weights_without_settings() -> torch.Tensor:
    model, _ = fit(SentimentClassifier, {}, None)
    return model.classifier.weight.detach()


def test_clipping_and_accumulation_are_lightnings_own_trainer_settings(tmp_path):
    """What a third-party callback reads off the trainer is what the run does."""
    cfg = compose_config(tmp_path, ["trainer.gradient_clip_val=0.5",
                                    "trainer.gradient_clip_algorithm=value",
                                    "trainer.accumulate_grad_batches=4"])
    trainer = build(cfg.trainer, logger=False)
    assert trainer.accumulate_grad_batches == 4
    assert trainer.gradient_clip_val == 0.5
    assert trainer.gradient_clip_algorithm == "value"
    assert SentimentClassifier.automatic_optimization


class SaveInsideEpoch(L.Callback):
    def __init__(self, path):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (1, 2):
            trainer.save_checkpoint(self.path)


@pytest.mark.parametrize("saved", ["inside an epoch", "at a validation's end"])
def test_a_resumed_run_takes_every_epoch_schedule_step(tmp_path, saved, one_thread):
    """The epoch scheduler steps after an epoch's last batch, so a checkpoint written inside
    the epoch, or at a validation before the epoch ends, is resumed without losing one."""
    schedule = functools.partial(StepLR, step_size=1, gamma=0.5)
    path = tmp_path / "saved.ckpt"
    if saved == "inside an epoch":
        callbacks, extra = [SaveInsideEpoch(path)], {}
    else:  # validation every other epoch: the checkpoint of epoch 1 comes from its end
        callbacks = [L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="saved",
                                                         monitor="val/loss", save_top_k=-1)]
        extra = {"check_val_every_n_epoch": 2}
    _, uninterrupted = fit(SentimentClassifier, {}, schedule, callbacks=callbacks,
                           **extra)
    _, resumed = fit(SentimentClassifier, {}, schedule, ckpt_path=path, **extra)
    lrs = [t.optimizers[0].param_groups[0]["lr"] for t in (uninterrupted, resumed)]
    assert lrs[0] == lrs[1] == 0.01 * 0.5 ** 3


def test_a_run_ending_inside_an_epoch_skips_the_plateau_step(one_thread):
    """max_steps ends the run before the epoch's validation: no metric to step on, no error."""
    schedule = functools.partial(ReduceLROnPlateau, patience=0)
    _, trainer = fit(SentimentClassifier, {}, schedule, max_steps=3)
    assert trainer.global_step == 3
