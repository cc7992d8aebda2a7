"""The optimizer steps SequenceModule takes itself (Lightning's manual optimization) against
Lightning's automatic loop, the reference: the same weights, learning rates and step counts
after training with gradient clipping, accumulation and each kind of LR scheduler."""

import functools

import lightning as L
import pytest
import torch
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, StepLR
from torch.utils.data import DataLoader

from seqmodels.data.batching import collate_classification
from seqmodels.errors import ConfigError
from seqmodels.models.sentiment import SentimentClassifier
from seqmodels.stepping import Stepping
from tests.conftest import compose_config

VOCAB, BATCH, BATCHES = 30, 4, 7  # 7 batches: accumulating 3 leaves a window of 1 at the end


class PerStepSchedule(SentimentClassifier):
    """A one-cycle schedule stepped after every optimizer step (as the char LM's)."""

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        steps = (self.trainer.estimated_stepping_batches if self.automatic_optimization
                 else self.estimated_optimizer_steps())
        return {"optimizer": optimizer, "lr_scheduler": {
            "scheduler": OneCycleLR(optimizer, max_lr=0.05, total_steps=int(steps)),
            "interval": "step"}}


def automatic(cls):
    """``cls`` stepped by Lightning's automatic loop, which clips, accumulates and steps the
    schedulers itself."""

    class Automatic(cls):
        automatic_optimization = True

        def training_step(self, batch, batch_idx):
            return self.training_loss(batch, batch_idx)

        def on_before_optimizer_step(self, optimizer):
            pass

        def on_train_epoch_end(self):
            self.log_epoch_train_loss()

        def configure_optimizers(self):
            config = super().configure_optimizers()
            if isinstance(config, dict):
                config["lr_scheduler"]["monitor"] = self.scheduler_monitor
            return config

    return Automatic


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


def fit(cls, settings: dict, scheduler, manual: bool):
    torch.manual_seed(0)
    model = cls(vocab_size=VOCAB, num_classes=2, embedding_dim=8, scheduler=scheduler,
                encoder={"cell": "lstm", "hidden_size": 6, "bidirectional": True},
                optimizer=functools.partial(torch.optim.Adam, lr=0.01))
    trainer_settings = {}
    if manual:
        model.stepping = Stepping(**settings)
    else:
        trainer_settings = settings
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        **trainer_settings)
    trainer.fit(model, train_dataloaders=loader(1), val_dataloaders=loader(2))
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


@pytest.mark.parametrize("case", list(CASES))
def test_manual_steps_give_the_weights_of_lightnings_automatic_loop(case, one_thread):
    settings, scheduler, cls = CASES[case]
    ours, our_trainer = fit(cls, settings, scheduler, manual=True)
    reference, reference_trainer = fit(automatic(cls), settings, scheduler, manual=False)

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


@functools.cache
def weights_without_settings() -> torch.Tensor:
    model, _ = fit(SentimentClassifier, {}, None, manual=True)
    return model.classifier.weight.detach()


def test_impossible_stepping_settings_are_refused():
    with pytest.raises(ConfigError, match="gradient_clip_val"):
        Stepping(gradient_clip_val=-1)
    with pytest.raises(ConfigError, match="gradient_clip_algorithm"):
        Stepping(gradient_clip_algorithm="l3")
    with pytest.raises(ConfigError, match="accumulate_grad_batches"):
        Stepping(accumulate_grad_batches=0)


def test_the_trainer_config_keeps_clipping_and_accumulation_for_the_module(tmp_path):
    cfg = compose_config(tmp_path, ["trainer.gradient_clip_val=0.5",
                                    "+trainer.accumulate_grad_batches=4"])
    stepping, trainer_cfg = Stepping.split_trainer_config(cfg.trainer)
    assert stepping == Stepping(gradient_clip_val=0.5, accumulate_grad_batches=4)
    assert "gradient_clip_val" not in trainer_cfg and "accumulate_grad_batches" not in trainer_cfg
    assert trainer_cfg.default_root_dir == str(tmp_path / "run")  # resolved, not dangling
