"""The weight average's decay warms up (seqmodels.callbacks.averaging): hand-computed averages
over a
few updates, the random start's share of the average after a short run, the average after a
real Lightning step, and the recipe a user's own classification data gets by default."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
from omegaconf import OmegaConf
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from seqmodels.callbacks.averaging import (
    HostCountedAverage,
    ema_avg_fn,
    ema_multi_avg_fn,
    warmup_decay,
)
from seqmodels.config import build
from tests.conftest import compose_config, write_lines


def averaged_values(avg_kwargs: dict, values) -> list[float]:
    """The average of a one-weight model after each update, the weight set to each value."""
    model = nn.Linear(1, 1, bias=False)
    averaged = AveragedModel(model, **avg_kwargs)
    out = []
    for value in values:
        with torch.no_grad():
            model.weight.fill_(value)
        averaged.update_parameters(model)
        out.append(averaged.module.weight.item())
    return out


def test_warmup_decay_schedule():
    assert warmup_decay(0.998, 1) == pytest.approx(2 / 11)
    assert warmup_decay(0.998, 2) == pytest.approx(3 / 12)
    assert warmup_decay(0.998, 100) == pytest.approx(101 / 110)
    assert warmup_decay(0.998, 4490) == pytest.approx(0.998)  # 4491/4500: the cap is reached
    assert warmup_decay(0.998, 100_000) == 0.998
    assert warmup_decay(0.2, 2) == 0.2                          # capped early by a low decay
    assert warmup_decay(0.998, 1, warmup=False) == 0.998


# Weights 1, 2, 4, 8 at four updates, decay 0.9. With the warm-up the 2nd, 3rd, 4th updates
# decay by 2/11, 3/12, 4/13:
#   1;  2/11*1 + 9/11*2 = 20/11;  1/4*20/11 + 3/4*4 = 38/11;  4/13*38/11 + 9/13*8 = 944/143.
# Without: 1;  0.9 + 0.2 = 1.1;  0.99 + 0.4 = 1.39;  1.251 + 0.8 = 2.051.
WARM = [1.0, 20 / 11, 38 / 11, 944 / 143]
PLAIN = [1.0, 1.1, 1.39, 2.051]


@pytest.mark.parametrize("kind", ["multi_avg_fn", "avg_fn"])
def test_warmup_average_by_hand(kind):
    factory = ema_multi_avg_fn if kind == "multi_avg_fn" else ema_avg_fn
    got = averaged_values({kind: factory(0.9, warmup=True)}, [1, 2, 4, 8])
    assert got == pytest.approx(WARM, rel=1e-6)
    got = averaged_values({kind: factory(0.9, warmup=False)}, [1, 2, 4, 8])
    assert got == pytest.approx(PLAIN, rel=1e-6)


def test_without_warmup_it_is_torchs_ema():
    torchs = averaged_values({"multi_avg_fn": get_ema_multi_avg_fn(0.9)}, [1, 2, 4, 8])
    assert torchs == pytest.approx(PLAIN, rel=1e-6)


def test_random_start_share_after_a_short_run():
    """800 updates (three SST-2 epochs), the first at weight 1, the rest at 0: what is left of
    the first is its share. Decay 0.998 keeps 0.998**799 = 0.202 of it; the warm-up keeps
    prod_{k=1}^{799} (k+1)/(k+10) = 10!/(801*802*...*809), about 2.6e-20."""
    values = [1.0] + [0.0] * 799
    plain = averaged_values({"multi_avg_fn": ema_multi_avg_fn(0.998, warmup=False)}, values)
    assert plain[-1] == pytest.approx(0.998 ** 799, rel=1e-4)
    assert plain[-1] == pytest.approx(0.2020, abs=1e-4)
    warm = averaged_values({"multi_avg_fn": ema_multi_avg_fn(0.998, warmup=True)}, values)
    share = 3628800.0
    for k in range(801, 810):
        share /= k
    assert warm[-1] == pytest.approx(share, rel=1e-3)
    assert warm[-1] < 1e-19


def test_invalid_decay_is_refused():
    with pytest.raises(ValueError, match="decay=1.5"):
        ema_multi_avg_fn(1.5)


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class Record(Callback):
    """After the averaging callback: the raw weights and the average after each step."""

    def __init__(self, averaging: WeightAveraging):
        self.averaging, self.raw, self.avg = averaging, [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.raw.append(pl_module.layer.weight.detach().clone())
        self.avg.append(self.averaging._average_model.module.layer.weight.detach().clone())


def test_configured_callback_in_a_real_run(tmp_path):
    """The callback as configs/callbacks/weight_averaging.yaml builds it: after step 1 the
    average is the weights (not the random start); after step 2 it is 2/11 of step 1's and 9/11
    of step 2's weights; decay 0.998 without warm-up would keep 0.998 of step 1's."""
    cfg = compose_config(tmp_path, ["callbacks=weight_averaging"])
    node = cfg.callbacks.weight_averaging
    assert node.multi_avg_fn.warmup is True and node.multi_avg_fn.decay == 0.998
    averaging = build(node)
    record = Record(averaging)
    torch.manual_seed(0)
    model = Regression()
    start = model.layer.weight.detach().clone()
    x = torch.randn(8, 3)
    data = torch.utils.data.DataLoader(list(zip(x, x @ torch.tensor([[1.0], [-2.0], [3.0]]))),
                                       batch_size=8)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[averaging, record])
    trainer.fit(model, data)
    (w1, w2, w3), (a1, a2, a3) = record.raw, record.avg
    assert not torch.allclose(w1, start, atol=1e-3)   # the first step moved the weights
    torch.testing.assert_close(a1, w1)                # and the average is them, not the start
    torch.testing.assert_close(a2, 2 / 11 * w1 + 9 / 11 * w2)
    torch.testing.assert_close(a3, 3 / 12 * a2 + 9 / 12 * w3)
    # Lightning ends training on the average
    torch.testing.assert_close(model.layer.weight.detach(), a3)
    # ... kept by the host-counted class (this also pins Lightning's private _average_model,
    # the one name seqmodels.callbacks.averaging reads)
    assert isinstance(averaging._average_model, HostCountedAverage)
    assert averaging._average_model.host_count == 3
    assert int(averaging._average_model.n_averaged) == 3


def test_host_counted_average_equals_torchs_and_resumes_from_its_state():
    """The same numbers as torch's AveragedModel with the same average function, update by
    update, also when a copy is loaded from a state dict halfway (a resumed run)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    torchs = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(0.9), use_buffers=True)
    ours = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(0.9), use_buffers=True)
    ours.__class__ = HostCountedAverage
    for step in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model(torch.randn(5, 3))  # moves the running statistics (buffers)
        torchs.update_parameters(model)
        ours.update_parameters(model)
        if step == 2:
            state = ours.state_dict()
            ours = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(0.9), use_buffers=True)
            ours.__class__ = HostCountedAverage
            ours.load_state_dict(state)
    for mine, theirs in zip(ours.state_dict().values(), torchs.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(mine, theirs)
    assert ours.host_count == 6 and int(ours.n_averaged) == 6


# -- the recipe a user's own classification data gets ---------------------------------------
RECIPE = {  # experiment=sst2_bilstm's choices (docs/results.md), also without experiment=
    "model.pooling": "max",
    "model.word_dropout": 0.25,
    "model.adversarial_epsilon": 5.0,
    "callbacks.weight_averaging._target_": "seqmodels.callbacks.averaging.EMAWeightAveraging",
    "callbacks.weight_averaging.multi_avg_fn._target_":
        "seqmodels.callbacks.averaging.ema_multi_avg_fn",
    "callbacks.weight_averaging.multi_avg_fn.decay": 0.998,
    "callbacks.weight_averaging.multi_avg_fn.warmup": True,
}


def own_data(tmp_path: Path) -> list[str]:
    train = write_lines(tmp_path / "train.txt", ["1 good fun", "0 bad dull"] * 4)
    return ["data=text_classification", f"data.train_path={train}"]


@pytest.mark.parametrize("overrides", [["experiment=sst2_bilstm"], "own"],
                         ids=["sst2_bilstm", "text_classification"])
def test_own_classification_data_gets_the_recipe(tmp_path, overrides):
    if overrides == "own":
        overrides = own_data(tmp_path)
    cfg = compose_config(tmp_path, overrides)
    for key, value in RECIPE.items():
        assert OmegaConf.select(cfg, key) == value, key
    assert "model_checkpoint" in cfg.callbacks and "early_stopping" in cfg.callbacks


def test_recipe_values_are_overridable(tmp_path):
    cfg = compose_config(tmp_path, [*own_data(tmp_path), "model.word_dropout=0",
                                    "model.adversarial_epsilon=0", "model.pooling=final",
                                    "callbacks.weight_averaging.multi_avg_fn.warmup=false"])
    assert cfg.model.word_dropout == 0 and cfg.model.adversarial_epsilon == 0
    assert cfg.model.pooling == "final"
    assert cfg.callbacks.weight_averaging.multi_avg_fn.warmup is False
    cfg = compose_config(tmp_path, [*own_data(tmp_path), "~callbacks.weight_averaging"])
    assert "weight_averaging" not in cfg.callbacks
