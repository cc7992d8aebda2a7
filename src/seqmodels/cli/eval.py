"""``seqmodels-eval``: report a checkpoint's metrics on a split of its task's data.

The model, its hyperparameters and its vocabularies all come from the checkpoint, and so does
the data: the training run's resolved data config (split paths, format, encoding, columns,
lower-casing, val/test fractions and seed, so that a split carved from train is carved again
the same), saved in the checkpoint. ``data.<key>=...`` on the command line changes one setting
of it; ``data=<config>`` (or ``experiment=``) evaluates on that config instead.
Data whose labels (or tags) the checkpoint does not know is refused, naming both sets."""

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from seqmodels.config import build, config_dir, exit_on_user_error, instantiate_group
from seqmodels.errors import ConfigError
from seqmodels.overrides import hold_composition_errors
from seqmodels.training.distributed import check_accelerator
from seqmodels.training.trusted import build_task_module, model_class_of, read_checkpoint

log = logging.getLogger(__name__)


def load_model(ckpt_path: str | Path, expected_task: str | None = None, map_location="cpu",
               trust: bool = False):
    """Rebuild a task module from a checkpoint alone, reading the file once and running none of
    its code (``seqmodels.training.trusted``; ``trust``: the user's ``trust_checkpoint=true``);
    refuse another task's checkpoint."""
    checkpoint = read_checkpoint(ckpt_path, trust)
    path = Path(ckpt_path)
    model_class = model_class_of(checkpoint, path)
    task = getattr(model_class, "task", None)
    if expected_task is not None and task != expected_task:
        raise ConfigError(
            f"{path} holds a {task} model, but this command needs a {expected_task} "
            "model; pass a checkpoint of that task (or the matching data=... config)"
        )
    return build_task_module(checkpoint, path, map_location)


def command_line_overrides() -> list[str]:
    """The overrides the user typed (``data.test_path=x``, ``data=ud_ewt``), as Hydra parsed
    them; none when no Hydra app is running."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def recorded_data_config(model) -> dict | None:
    """The training run's resolved data config, as its checkpoint records it."""
    return dict(model.data_config) if getattr(model, "data_config", None) else None


def data_config(cfg: DictConfig, recorded: dict | None, overrides: list[str]) -> DictConfig:
    """The data to evaluate on: the recorded config with the user's ``data.<key>=`` overrides
    (their values as composed in ``cfg.data``), or ``cfg.data`` where the user chose a data
    config (``data=``, ``experiment=``) or the checkpoint records none."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    if any(k in ("data", "experiment") for k in keys):
        return cfg.data
    if recorded is None:
        raise ConfigError(f"{cfg.ckpt_path} records no data settings: it predates checkpoints "
                          "that save them, or was not written by seqmodels-train; name the data "
                          "to evaluate on (data=<config> and its paths)")
    merged = OmegaConf.create(recorded)
    for key in keys:
        if key.startswith("data."):
            OmegaConf.update(merged, key[len("data."):], OmegaConf.select(cfg, key),
                             force_add=True)
    if "data.test_path" in keys and "data.test_fraction" not in keys and "test_fraction" in merged:
        merged.test_fraction = 0.0  # a test file given: the split carved from train is not
    return merged


def check_label_set(datamodule, model, split: str, ckpt_path) -> None:
    """Refuse data whose labels (tags) the model has not got, naming both sets, in one line."""
    vocab_name = {"classification": "labels", "tagging": "tags"}.get(model.task)
    if vocab_name is None or vocab_name not in model.vocabs:
        return
    examples = datamodule.read_split(split)
    if model.task == "classification":
        found = {label for _, label, _ in examples}
    else:
        found = {tag for sentence in examples for tag in sentence.tags}
    known = set(model.vocabs[vocab_name].itos) - {"<pad>", "<unk>"}
    if not found <= known:
        path = datamodule.split_path(split) or f"the {split} split"
        raise ConfigError(
            f"{model.task} data {path} has {vocab_name} {sorted(found)}, but {model.task} "
            f"checkpoint {ckpt_path} knows {sorted(known)}: evaluate it on its own "
            "data (no data flags) or on data with its " + vocab_name)


def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    check_accelerator(cfg.trainer)
    model = load_model(cfg.ckpt_path, trust=cfg.get("trust_checkpoint", False))
    data = data_config(cfg, recorded_data_config(model), command_line_overrides())
    datamodule = build(data)
    if datamodule.task != model.task:
        raise ConfigError(
            f"{cfg.ckpt_path} holds a {model.task} model, but the data config is for "
            f"{datamodule.task}; pass a checkpoint of that task (or the matching data=... config)")
    datamodule.set_vocabs(model.vocabs)
    datamodule.prepare_data()
    stage = {"test": "test", "val": "validate"}.get(cfg.get("split", "test"))
    if stage is None:
        raise ConfigError(f"split={cfg.split!r} is not one of ['test', 'val']")
    check_label_set(datamodule, model, "test" if stage == "test" else "val", cfg.ckpt_path)
    datamodule.setup(stage)
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = build(cfg.trainer, logger=loggers or False)
    run = trainer.test if stage == "test" else trainer.validate
    results = run(model, datamodule=datamodule)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    for name, value in sorted(metrics.items()):
        log.info("%s %r", name, value)
    output_dir = cfg.get("paths", {}).get("output_dir")
    if output_dir and Path(output_dir).is_dir():
        from seqmodels.cli.train import write_metrics  # the training run's format: metrics.json

        write_metrics(output_dir, metrics)
    return metrics, {"datamodule": datamodule, "model": model, "trainer": trainer}


@hold_composition_errors("eval")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
