"""``seqmodels-train``: build the datamodule, model, callbacks, loggers and trainer from the
composed config, fit, then test the best checkpoint. The same command runs on one CPU, one GPU,
several processes (``trainer=ddp_cpu``, ``trainer=ddp``) or several nodes."""

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from seqmodels.callbacks.progress import EpochSummary
from seqmodels.callbacks.resume import EpochPosition, SeedEachEpoch
from seqmodels.callbacks.vocabularies import SameVocabularies
from seqmodels.config import (
    build,
    check_data_paths,
    config_dir,
    exit_on_user_error,
    instantiate_group,
)
from seqmodels.console import FILE_ONLY, announce_run, main_with_verbose_flag
from seqmodels.data.word_vectors import WordVectors, check_vectors_file, load_word_vectors
from seqmodels.errors import ConfigError
from seqmodels.overrides import hold_composition_errors
from seqmodels.training.checkpoint_io import AtomicCheckpointIO, is_weights_only
from seqmodels.training.distributed import (
    check_accelerator,
    distributed_run,
    prepare_determinism,
    quiet_other_ranks,
)
from seqmodels.training.launch import place_job
from seqmodels.training.mlflow_runs import upload_run_files
from seqmodels.training.run_checks import check_model_fits_data, discard_unstarted_run
from seqmodels.training.run_info import write_run_info
from seqmodels.training.runs import CHECKPOINT_KEYWORDS  # also registers Hydra resolvers
from seqmodels.training.step_costs import SilentProfiler, frozen_garbage
from seqmodels.training.trusted import read_checkpoint

log = logging.getLogger(__name__)


def build_data_and_model(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The datamodule first: the model's sizes come from its vocabularies (train split only,
    plus the words of the pretrained vectors file, read once for both)."""
    log.info("instantiating datamodule <%s>", cfg.data._target_, extra=FILE_ONLY)
    datamodule = build(cfg.data)
    datamodule.prepare_data()
    check_data_paths(cfg.data)  # a missing file named by its key (a named dataset is fetched)
    vectors = read_pretrained_vectors(cfg)
    if vectors is not None:
        datamodule.extend_words(vectors.words, cfg.model.embeddings.get("extra_words"))
    datamodule.setup("fit")
    log.info("instantiating model <%s>", cfg.model._target_, extra=FILE_ONLY)
    # Plain containers, not DictConfig, so that checkpoints load with weights_only=True.
    model = build(cfg.model, _convert_="all", **datamodule.model_sizes())
    if vectors is not None:  # a resumed run's checkpoint overwrites them with its own
        model.embeddings.load_pretrained(vectors, datamodule.vocabs["tokens"])
    model.vocabs = datamodule.vocabs
    model.text_settings = datamodule.text_settings()
    # The whole data config, resolved: seqmodels-eval rebuilds the same splits from it.
    model.data_config = OmegaConf.to_container(cfg.data, resolve=True)
    return datamodule, model


def read_pretrained_vectors(cfg: DictConfig) -> WordVectors | None:
    """The vectors of ``model.embeddings.path`` (None when there is none), cached in
    ``paths.cache_dir``."""
    path = (cfg.model.get("embeddings") or {}).get("path")
    if not path:
        return None
    check_vectors_file(path, cfg.model.embedding_dim)
    return load_word_vectors(path, cfg.paths.get("cache_dir"))


def check_checkpoint(ckpt_path: str | None, output_dir: str, trust: bool = False) -> dict | None:
    """A checkpoint to resume from must exist; ``last`` looks in this run's directory. Returns
    the checkpoint a path names, read once and safely (``seqmodels.training.trusted``), for the
    trainer to resume from."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) not in CHECKPOINT_KEYWORDS and not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file; give a .ckpt path, or "
                          "ckpt_path=last hydra.run.dir=<the run's directory>")
    if ckpt_path == "last" and not (Path(output_dir) / "checkpoints" / "last.ckpt").is_file():
        log.warning("ckpt_path=last: %s has no checkpoints/last.ckpt, so training starts from "
                    "scratch; to resume a run, pass hydra.run.dir=<its directory>", output_dir)
    if str(ckpt_path) not in CHECKPOINT_KEYWORDS:
        checkpoint = read_checkpoint(ckpt_path, trust)
        if is_weights_only(checkpoint):
            raise ConfigError(f"ckpt_path={ckpt_path} holds the weights alone (a checkpoint for "
                              "evaluation), not the training state to resume from; resume from "
                              "the run's checkpoints/last.ckpt (ckpt_path=last hydra.run.dir="
                              "<the run's directory>)")
        return checkpoint
    return None


@rank_zero_only
def write_metrics(output_dir: str | Path, metrics: dict[str, float]) -> None:
    """The run's final numbers, for scripts and sweeps: ``<run>/metrics.json``."""
    path = Path(output_dir) / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def hydra_choices() -> dict:
    """The config group options this run was composed from (``data``: ``ud_ewt``, ...)."""
    from hydra.core.hydra_config import HydraConfig

    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit (and by default test) the configured model. Returns (metrics, objects).

    A fresh run that fails before its first epoch is over and before any checkpoint leaves
    no run directory behind (``discard_unstarted_run``)."""
    objects: dict[str, Any] = {}
    try:
        return fit_and_test(cfg, objects)
    except BaseException:
        trainer = objects.get("trainer")
        epochs_done = trainer.current_epoch if trainer is not None else 0
        if cfg.get("ckpt_path") is None and epochs_done == 0 and rank_zero_only.rank == 0:
            discard_unstarted_run(cfg.paths.output_dir)
        raise


def fit_and_test(cfg: DictConfig, objects: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    quiet_other_ranks(rank_zero_only.rank)  # the rank its launcher gave this process, if any
    log.info("run directory: %s", cfg.paths.output_dir)
    check_model_fits_data(cfg, hydra_choices())
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    place_job(cfg)  # a job of a parallel sweep: its GPU, or its share of the CPU cores
    check_accelerator(cfg.trainer)
    prepare_determinism(cfg.trainer)
    ckpt_path = cfg.get("ckpt_path")
    trust = cfg.get("trust_checkpoint", False)
    checkpoint = check_checkpoint(ckpt_path, cfg.paths.output_dir, trust)

    callbacks = instantiate_group(cfg.get("callbacks"))
    callbacks.append(SameVocabularies())
    callbacks.append(EpochPosition())  # a resume inside an epoch leaves out the batches done
    callbacks.append(EpochSummary(cfg.get("monitor"), cfg.get("monitor_mode", "max")))
    if cfg.get("seed") is not None:
        callbacks.append(SeedEachEpoch(cfg.seed))
    loggers = instantiate_group(cfg.get("logger"))
    trainer_cfg = cfg.trainer
    profiler = {} if trainer_cfg.get("profiler") else {"profiler": SilentProfiler()}
    # Checkpoints written whole or not at all; the best one holds the weights alone. The one
    # to resume from, already read, is not read again.
    preloaded = {ckpt_path: checkpoint} if checkpoint is not None else None
    checkpoint_io = AtomicCheckpointIO(trust=trust, preloaded=preloaded)
    trainer: L.Trainer = build(trainer_cfg, callbacks=callbacks, logger=loggers or False,
                               plugins=[checkpoint_io], **profiler)
    objects["trainer"] = trainer
    quiet_other_ranks(trainer.global_rank)  # known for certain once the trainer exists

    datamodule, model = build_data_and_model(cfg)
    write_run_info(cfg.paths.output_dir, cfg, datamodule.vocabs)
    announce_run(datamodule, model, trainer, cfg.paths.log_dir)
    if ckpt_path is not None:
        log.info("resuming from %s; outputs go to %s", ckpt_path, cfg.paths.output_dir)

    with distributed_run(trainer), frozen_garbage():
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = dict(trainer.callback_metrics)

        callback = trainer.checkpoint_callback
        best = callback.best_model_path if callback else ""
        if cfg.get("test") and datamodule.paths.get("test") is not None:
            if not best:
                log.warning("no best checkpoint was saved: testing the current weights")
            else:
                load_evaluated_weights(model, best)
            test_whole_split(trainer)
            # One line with 4 decimals, as the epoch lines, not Lightning's table of 17 digits.
            trainer.test(model, datamodule=datamodule, verbose=False)
            metrics.update(trainer.callback_metrics)
            log.info("test (%s): %s", "best checkpoint" if best else "last weights", "; ".join(
                f"{name} {float(value):.4f}" for name, value in sorted(metrics.items())
                if name.startswith("test/")))

    metrics = {k: float(v) for k, v in metrics.items()}
    write_metrics(cfg.paths.output_dir, metrics)
    upload_run_files(trainer, best)  # to an MLflow logger's run: config, metrics, checkpoint
    if best:
        log.info("best checkpoint: %s", best)
    objects.update(datamodule=datamodule, model=model)
    return metrics, objects


def load_evaluated_weights(model: L.LightningModule, ckpt_path: str) -> None:
    """Put the weights that ``seqmodels-eval`` evaluates from ``ckpt_path`` (its
    ``state_dict``: the averaged weights under weight averaging) into ``model``.

    Not ``trainer.test(ckpt_path=...)``: with the averaging callback still attached, its
    ``on_load_checkpoint`` puts the raw weights back, so the run would report a figure that
    no evaluation of its checkpoint reproduces."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])


def test_whole_split(trainer: L.Trainer) -> None:
    """The run's test figure covers the whole test split, as ``seqmodels-eval`` does, even
    where ``trainer.limit_test_batches`` (``debug=limit``) would cut it short."""
    limit = trainer.limit_test_batches
    if limit is not None and limit != 1.0:
        log.info("trainer.limit_test_batches=%s: testing the whole test split all the same, "
                 "so that seqmodels-eval of the checkpoint gives the same figure", limit)
        trainer.limit_test_batches = 1.0


def best_score(trainer: L.Trainer, monitor: str | None) -> float | None:
    """The monitored metric at its best validation: the tested checkpoint's score."""
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor == monitor and callback.best_model_score is not None:
            return float(callback.best_model_score)
    return None


@main_with_verbose_flag
@hold_composition_errors("train")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics, objects = train(cfg)
    # What a sweeper optimises: the monitored metric at its best epoch (the checkpoint that was
    # tested), not the last epoch's, which early stopping leaves `patience` epochs later.
    best = best_score(objects["trainer"], cfg.get("monitor"))
    return best if best is not None else metrics.get(cfg.get("monitor"))


if __name__ == "__main__":
    main()
