"""``seqmodels-train``: build the datamodule, model, callbacks, loggers and trainer from the
composed config, fit, then test the best checkpoint."""

import logging
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from seqmodels.config import build, config_dir, exit_on_user_error, instantiate_group
from seqmodels.run_info import write_run_info

log = logging.getLogger(__name__)


def build_data_and_model(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The datamodule first: the model's sizes come from its vocabularies (train split only)."""
    log.info("instantiating datamodule <%s>", cfg.data._target_)
    datamodule = build(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    log.info("instantiating model <%s>", cfg.model._target_)
    # Plain containers, not DictConfig, so that checkpoints load with weights_only=True.
    model = build(cfg.model, _convert_="all", **datamodule.model_sizes())
    model.vocabs = datamodule.vocabs
    return datamodule, model


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit (and by default test) the configured model. Returns (metrics, objects)."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, model = build_data_and_model(cfg)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    write_run_info(cfg.paths.output_dir, cfg, datamodule.vocabs)

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = dict(trainer.callback_metrics)

    if cfg.get("test") and datamodule.paths.get("test") is not None:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("no best checkpoint was saved: testing the current weights")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(trainer.callback_metrics)

    metrics = {k: float(v) for k, v in metrics.items()}
    objects = {"datamodule": datamodule, "model": model, "trainer": trainer}
    return metrics, objects


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    # The value a sweeper optimises: the monitored validation metric.
    return metrics.get(cfg.get("monitor"))


if __name__ == "__main__":
    main()
