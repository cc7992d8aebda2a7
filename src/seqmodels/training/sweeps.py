"""Optuna searches kept in a database: a study that outlives its command.

hydra-optuna-sweeper asks Optuna for trials and runs each as a Hydra job, but it runs
``n_trials`` *more* trials every time it starts and leaves a trial that was killed marked as
running forever. Here (``hydra/sweeper=study``, which every ``hparams_search`` config uses)
``n_trials`` is the size of the *study*, whoever runs it:

- a trial is claimed (``study.ask()``) only while the study has fewer than ``n_trials`` trials
  finished or running; after a claim, one that came out past the budget (another process
  claimed at the same moment) is given back as failed before it trains. So a rerun of an
  interrupted search runs only what is missing, and two commands on one study (two machines on
  one PostgreSQL database, two shells on one SQLite file) split its trials between them;
- a trial that was running when its command died is marked failed (so it is never counted) and
  replaced by a new one: at once when its process, on this machine, is gone; after
  ``grace_period`` seconds without a heartbeat otherwise (Optuna's RDB heartbeat, which this
  sweeper beats for every trial it runs);
- the command returns once the study has ``n_trials`` finished trials, waiting for those that
  other processes are running;
- with ``pruning=true``, each job reports its validation metric per epoch to its trial
  (``TrialPruning``, a Lightning callback) and stops once the study's pruner finds it hopeless;
  the trial is recorded as pruned.

The sampling, the search space grammar and the result file are the plugin's own.
"""

import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    create_params_from_overrides,
)
from omegaconf import OmegaConf
from optuna.trial import TrialState

from seqmodels.errors import ConfigError

log = logging.getLogger(__name__)

# Trial system attributes: which command runs the trial, which job of it, and where it stopped.
WORKER = "seqmodels:worker"     # "<host>:<pid>" of the sweeping process
JOB = "seqmodels:job"           # "<sweep dir>#<job number>": how a job finds its trial
PRUNED_AT = "seqmodels:pruned_at_epoch"
SURPLUS = "seqmodels:surplus"   # claimed past the budget by a race with another process
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_storage(url: str, heartbeat_interval: int,
                 grace_period: int) -> optuna.storages.RDBStorage:
    """The study's database, with heartbeats. A SQLite file's folder is made first, and its
    writers wait for each other's locks instead of failing at once."""
    if not url or "://" not in str(url):
        raise ConfigError(f"hydra.sweeper.storage={url}: give a database URL, e.g. "
                          "sqlite:///logs/optuna.db or postgresql://user@host/db")
    engine: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine["connect_args"] = {"timeout": 60}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine,
                                          heartbeat_interval=heartbeat_interval,
                                          grace_period=grace_period)
    except Exception as error:  # a bad URL, a driver missing, a server that is down
        raise ConfigError(f"hydra.sweeper.storage={url}: cannot open the study's database: "
                          f"{str(error).splitlines()[0]}") from None


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def process_gone(worker: str) -> bool:
    """Whether the sweeping process ``<host>:<pid>`` is known to be dead: only a process of
    this machine can be checked."""
    host, _, pid = str(worker).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def fail_interrupted(study: optuna.Study) -> list[int]:
    """Mark failed the trials whose command died: its process gone from this machine, or its
    heartbeat older than the grace period. Returns their numbers."""
    storage = study._storage  # optuna 2 has no public handle on a study's storage
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.system_attrs.get(WORKER)
        if worker != this_worker() and worker and process_gone(worker):
            if storage.set_trial_state(trial._trial_id, TrialState.FAIL):
                failed.append(trial.number)
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():  # "experimental" in optuna 2, which the sweeper pins
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    failed += sorted(after - before - set(failed))
    if failed:
        log.warning("study %s: trial(s) %s were interrupted (their command stopped); marked "
                    "failed, and run again", study.study_name, failed)
    return failed


def taken(study: optuna.Study) -> int:
    """Trials that count towards the budget: finished, or running somewhere."""
    return len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


def within_budget(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Whether a trial just claimed is one of the study's first ``n_trials`` that did not fail
    (two processes that claim at the same moment both see room for one more)."""
    kept = [t for t in study.get_trials(deepcopy=False)
            if t.state != TrialState.FAIL and t.number < trial.number]
    return len(kept) < n_trials


@contextmanager
def heartbeats(storage: optuna.storages.RDBStorage, trial_ids: Sequence[int]) -> Iterator[None]:
    """Beat the trials' heartbeats while their jobs run, so that other processes know they
    are alive (and can tell when they are not)."""
    stop = threading.Event()
    interval = storage.get_heartbeat_interval() or 60

    def beat() -> None:
        while True:
            for trial_id in trial_ids:
                try:
                    storage.record_heartbeat(trial_id)
                except Exception as error:  # a database hiccup: try again at the next beat
                    log.warning("heartbeat of trial %d failed: %s", trial_id, error)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True, name="seqmodels-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


class StudySweep(OptunaSweeperImpl):
    """The Optuna sweeper's search, run against a study's budget (module docstring)."""

    def __init__(self, *args, pruning: bool = False, pruner: Any = None,
                 heartbeat_interval: int = 30, grace_period: int = 120,
                 poll_interval: float = 5.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.pruner = pruner if pruning and pruner is not None else optuna.pruners.NopPruner()
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.poll_interval = poll_interval

    def sweep(self, arguments: list[str]) -> None:
        self._process_searchspace_config()
        distributions, fixed = create_params_from_overrides(
            self._parse_sweeper_params_config() + list(arguments))
        if not isinstance(self.sampler, optuna.samplers.BaseSampler):
            raise ConfigError("hydra/sweeper=study: a grid is a plain -m sweep "
                              "(seqmodels-train -m a=1,2 b=x,y); use the TPE or random sampler")
        for name in fixed:  # a value fixed on the command line is not searched
            distributions.pop(name, None)
        storage = open_storage(self.storage, self.heartbeat_interval, self.grace_period)
        study = optuna.create_study(study_name=self.study_name, storage=storage,
                                    sampler=self.sampler, pruner=self.pruner,
                                    directions=self._get_directions(), load_if_exists=True)
        log.info("study %s in %s: %d of %d trials finished", study.study_name, self.storage,
                 len(study.get_trials(deepcopy=False, states=FINISHED)), self.n_trials)
        fail_interrupted(study)
        if study.get_trials(deepcopy=False):
            # A fixed sampler seed would draw the study's first trials over again.
            self.sampler.reseed_rng()
        while True:
            batch = self._claim(study)
            if batch:
                self._run(study, storage, batch, distributions, fixed)
            elif len(study.get_trials(deepcopy=False, states=FINISHED)) >= self.n_trials:
                break
            else:  # the rest are running in other processes: wait for them (or their death)
                time.sleep(self.poll_interval)
                fail_interrupted(study)
        self._report(study)

    def _claim(self, study: optuna.Study) -> list[optuna.Trial]:
        batch = []
        while len(batch) < self.n_jobs and taken(study) < self.n_trials:
            trial = study.ask()
            trial.set_system_attr(WORKER, this_worker())
            if not within_budget(study, trial, self.n_trials):
                trial.set_system_attr(SURPLUS, True)
                study.tell(trial, state=TrialState.FAIL)
                break
            batch.append(trial)
        return batch

    def _run(self, study, storage, batch, distributions, fixed) -> None:
        overrides = self._configure_trials(batch, distributions, fixed)
        for number, trial in enumerate(batch, self.job_idx):
            trial.set_system_attr(JOB, job_key(self.config.hydra.sweep.dir, number))
        log.info("trials %s: jobs %d..%d", [t.number for t in batch], self.job_idx,
                 self.job_idx + len(batch) - 1)
        try:
            with heartbeats(storage, [trial._trial_id for trial in batch]):
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        except BaseException:  # Ctrl+C, SIGTERM: these trials were not finished
            for trial in batch:
                if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                    study.tell(trial, state=TrialState.FAIL)
            raise
        self.job_idx += len(returns)
        failures = []
        for job, (trial, ret) in enumerate(zip(batch, returns), self.job_idx - len(returns)):
            try:
                value = float(ret.return_value)  # raises the job's own error if it failed
            except Exception as error:
                study.tell(trial, state=TrialState.FAIL)
                log.warning("trial %d (job %d) failed: %s", trial.number, job, error)
                failures.append(ret)
                continue
            # from the database itself: the study's cache holds this process's own view
            if PRUNED_AT in storage.get_trial(trial._trial_id).system_attrs:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, values=[value])
        if failures and len(failures) / len(returns) > self.max_failure_rate:
            failures[0].return_value  # noqa: B018 -- raises the first failure, traceback and all

    def _report(self, study: optuna.Study) -> None:
        counts = {name: len(study.get_trials(deepcopy=False, states=(state,))) for name, state
                  in (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED),
                      ("failed", TrialState.FAIL))}
        log.info("study %s: %s", study.study_name,
                 ", ".join(f"{n} {state}" for state, n in counts.items()))
        if not counts["complete"]:
            return
        if len(study.directions) > 1:
            results = {"name": "optuna", "solutions": [
                {"params": t.params, "values": t.values} for t in study.best_trials]}
        else:
            best = study.best_trial
            results = {"name": "optuna", "best_params": best.params, "best_value": best.value,
                       "best_trial": best.number}
            log.info("best value %s (trial %d): %s", best.value, best.number, best.params)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)  # none yet when there was nothing to run
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")


def job_key(sweep_dir: str, job_num: int) -> str:
    return f"{sweep_dir}#{job_num}"


# -- inside a job: pruning ---------------------------------------------------------------------
def this_jobs_trial() -> optuna.Trial | None:
    """This job's trial, when it runs in a study sweep with pruning on; None otherwise."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    sweeper = hydra.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("StudyOptunaSweeper") or not sweeper.get(
            "pruning"):
        return None
    from hydra.utils import instantiate

    storage = open_storage(sweeper.storage, sweeper.heartbeat_interval, sweeper.grace_period)
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage,
                              pruner=instantiate(sweeper.pruner))
    key = job_key(hydra.sweep.dir, hydra.job.num)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.system_attrs.get(JOB) == key:
            return optuna.Trial(study, trial._trial_id)
    log.warning("pruning: no running trial of study %s belongs to this job (%s)",
                sweeper.study_name, key)
    return None


class TrialPruning(L.Callback):
    """Reports ``monitor`` after each validation to this job's Optuna trial, and stops training
    when the study's pruner finds the trial hopeless (what Optuna's own Lightning callback
    does, for a trial that lives in another process: the sweeper's). The run then ends as
    usual (best checkpoint tested, ``metrics.json``); the sweeper records the trial as pruned.
    Does nothing outside a ``hydra/sweeper=study`` search with ``pruning=true``."""

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.trial: optuna.Trial | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            self.trial = this_jobs_trial()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if self.trial is not None and self.monitor in trainer.callback_metrics:
            epoch = trainer.current_epoch
            value = float(trainer.callback_metrics[self.monitor])
            self.trial.report(value, step=epoch)
            prune = self.trial.should_prune()
            if prune:
                self.trial.set_system_attr(PRUNED_AT, epoch)
                log.info("trial %d pruned after epoch %d (%s %.4f)", self.trial.number, epoch,
                         self.monitor, value)
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune)
        if prune:
            trainer.should_stop = True

