"""``seqmodels-eval``: report a checkpoint's metrics on a split of its task's data.

The model, its hyperparameters and its vocabularies all come from the checkpoint; the data
config only says where the files are."""

import importlib
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from seqmodels.config import build, config_dir, exit_on_user_error, instantiate_group
from seqmodels.distributed import check_accelerator
from seqmodels.errors import ConfigError

log = logging.getLogger(__name__)


def load_model(ckpt_path: str | Path, expected_task: str | None = None, map_location="cpu"):
    """Rebuild a task module from a checkpoint alone; refuse another task's checkpoint."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={str(ckpt_path)!r}: no such checkpoint file")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    info = checkpoint.get("seqmodels")
    if not info or "model_class" not in info:
        raise ConfigError(f"{path} is not a seqmodels checkpoint (no model class or vocabularies)")
    if expected_task is not None and info["task"] != expected_task:
        raise ConfigError(
            f"{path} holds a {info['task']} model, but this command needs a {expected_task} "
            "model; pass a checkpoint of that task (or the matching data=... config)"
        )
    module_name, _, class_name = info["model_class"].rpartition(".")
    model_class = getattr(importlib.import_module(module_name), class_name)
    return model_class.load_from_checkpoint(path, map_location=map_location)


def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    check_accelerator(cfg.trainer)
    datamodule = build(cfg.data)
    model = load_model(cfg.ckpt_path, expected_task=datamodule.task)
    datamodule.set_vocabs(model.vocabs)
    datamodule.prepare_data()
    stage = {"test": "test", "val": "validate"}.get(cfg.get("split", "test"))
    if stage is None:
        raise ConfigError(f"split={cfg.split!r} is not one of ['test', 'val']")
    datamodule.setup(stage)
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = build(cfg.trainer, logger=loggers or False)
    run = trainer.test if stage == "test" else trainer.validate
    results = run(model, datamodule=datamodule)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    return metrics, {"datamodule": datamodule, "model": model, "trainer": trainer}


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
