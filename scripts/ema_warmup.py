"""Early in a run, is the weight average better than the raw weights? One training run of the
SST-2 recipe (raw weights trained as usual), two averages kept beside it from the same steps:
decay 0.998 from the first step (torch's EMA, the old default) and decay 0.998 with the
warm-up (seqmodels.callbacks.averaging, the default now). Dev accuracy of all three at every quarter
epoch, as a markdown table (docs/own_data.md).

    OMP_NUM_THREADS=1 python scripts/ema_warmup.py --epochs 3 --seeds 1 2   # from the root

Any other argument is a Hydra override of the run (``model.adversarial_epsilon=0`` ...).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch.optim.swa_utils import AveragedModel

from seqmodels.callbacks.averaging import ema_multi_avg_fn
from seqmodels.cli.train import build_data_and_model
from seqmodels.config import build, config_dir


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader) -> float:
    was_training = model.training
    model.eval()
    right = total = 0
    for batch in loader:
        logits = model(batch.tokens, batch.lengths, batch.chars)
        right += int((logits.argmax(-1) == batch.targets).sum())
        total += len(batch.targets)
    model.train(was_training)
    return right / total


class Probe(L.Callback):
    """Two averages of the raw weights, updated after every optimizer step (as Lightning's
    ``WeightAveraging`` does), and dev accuracy of raw / old average / warm-up average at
    ``points`` evenly spaced steps of each epoch."""

    def __init__(self, loader, decay: float, points: int):
        self.loader, self.decay, self.points = loader, decay, points
        self.rows: list[dict] = []
        self.averages: dict[str, AveragedModel] = {}

    def on_fit_start(self, trainer, pl_module):
        self.averages = {
            "old": AveragedModel(pl_module, multi_avg_fn=ema_multi_avg_fn(self.decay, False)),
            "warmup": AveragedModel(pl_module, multi_avg_fn=ema_multi_avg_fn(self.decay, True)),
        }

    def on_train_epoch_start(self, trainer, pl_module):
        self.steps_per_epoch = int(trainer.num_training_batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for average in self.averages.values():
            average.update_parameters(pl_module)
        every = max(1, self.steps_per_epoch // self.points)
        if (batch_idx + 1) % every == 0 or batch_idx + 1 == self.steps_per_epoch:
            self.rows.append({
                "step": trainer.global_step,
                "epoch": trainer.current_epoch + (batch_idx + 1) / self.steps_per_epoch,
                "raw": accuracy(pl_module, self.loader),
                **{name: accuracy(avg.module, self.loader) for name, avg in self.averages.items()},
            })
            r = self.rows[-1]
            print(f"  step {r['step']:5d} epoch {r['epoch']:.2f}: raw {r['raw']:.4f} "
                  f"old {r['old']:.4f} warmup {r['warmup']:.4f}", file=sys.stderr, flush=True)


def run(seed: int, epochs: int, points: int, overrides: list[str]) -> list[dict]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True,
                      overrides=["experiment=sst2_bilstm", f"seed={seed}",
                                 f"trainer.max_epochs={epochs}", *overrides])
    out = Path.cwd() / "ema_warmup"  # nothing is written there: no logger, no checkpoints
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.runtime.cwd = str(Path.cwd())
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    decay = cfg.callbacks.weight_averaging.multi_avg_fn.decay
    L.seed_everything(seed, workers=True)
    datamodule, model = build_data_and_model(cfg)
    trainer_cfg = cfg.trainer.copy()
    with open_dict(trainer_cfg):
        trainer_cfg.pop("default_root_dir", None)
    probe = Probe(datamodule.val_dataloader(), decay, points)
    trainer = build(trainer_cfg, callbacks=[probe], logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    return probe.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--points", type=int, default=4, help="dev evaluations an epoch")
    args, overrides = parser.parse_known_args()
    results = {}
    for seed in args.seeds:
        start = time.perf_counter()
        print(f"seed {seed}", file=sys.stderr, flush=True)
        results[seed] = run(seed, args.epochs, args.points, overrides)
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    seeds = list(results)
    print(f"SST-2 dev accuracy, experiment=sst2_bilstm {' '.join(overrides)} "
          f"(seeds {', '.join(map(str, seeds))}; mean over seeds)\n")
    print("| epoch | step | raw weights | EMA 0.998, no warm-up (old) | EMA 0.998, warm-up (new) "
          "| warm-up - raw |")
    print("|---|---|---|---|---|---|")
    worst = {"old": 1.0, "warmup": 1.0}
    for i, first in enumerate(results[seeds[0]]):
        mean = {k: sum(results[s][i][k] for s in seeds) / len(seeds)
                for k in ("raw", "old", "warmup")}
        for name in worst:
            worst[name] = min(worst[name], mean[name] - mean["raw"])
        print(f"| {first['epoch']:.2f} | {first['step']} | {mean['raw']:.4f} | {mean['old']:.4f} "
              f"| {mean['warmup']:.4f} | {mean['warmup'] - mean['raw']:+.4f} |")
    print(f"\nLowest (average - raw) over the run: old {worst['old']:+.4f}, "
          f"warm-up {worst['warmup']:+.4f}")
    if len(seeds) > 1:
        print("\nPer seed, end of each epoch (raw / old / warm-up):")
        for s in seeds:
            ends = [r for r in results[s] if abs(r["epoch"] - round(r["epoch"])) < 1e-9]
            print(f"- seed {s}: " + "; ".join(
                f"epoch {r['epoch']:.0f}: {r['raw']:.4f} / {r['old']:.4f} / {r['warmup']:.4f}"
                for r in ends))


if __name__ == "__main__":
    main()
