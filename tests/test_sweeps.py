"""Experiments at scale, run as a user types them: parallel sweeps (hydra-joblib-launcher), the
submitit launcher's local executor (the SLURM code path without SLURM), and Optuna searches
whose study lives in a database (SQLite; PostgreSQL where its server binaries are installed):
interrupted and continued, shared by two processes."""

import datetime
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, read_write
from optuna.trial import TrialState

from seqmodels.cli.compare import compare, find_runs, load_runs
from seqmodels.errors import ConfigError
from seqmodels.training.launch import job_gpu, place_job
from seqmodels.training.sweeps import WORKER
from tests.conftest import ROOT, compose_config, write_lines


def tiny_args(cwd: Path, epochs: int = 2) -> list[str]:
    """A sentence classifier small enough to train in a second, on a file in ``cwd``."""
    rng = random.Random(0)
    words = {"1": ["good", "fun", "great"], "0": ["bad", "dull", "awful"]}
    lines = [f"{label} " + " ".join(rng.choices(words[label] + ["film", "plot"], k=4))
             for label in rng.choices("01", k=48)]
    write_lines(cwd / "train.txt", lines)
    return ["data=text_classification", "data.train_path=train.txt", "data.val_path=train.txt",
            "data.batch_size=8", "model.embedding_dim=8", "model.encoder.hidden_size=8",
            "callbacks.rich_progress_bar=null", "callbacks.model_summary=null", "test=false",
            f"trainer.max_epochs={epochs}"]


def train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "seqmodels.cli.train", *args]


def run(cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(train_command(*args), cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def user_dir(tmp_path: Path) -> Path:
    cwd = tmp_path / "work"
    cwd.mkdir()
    assert ROOT not in cwd.parents
    return cwd


def the_sweep(cwd: Path) -> Path:
    (sweep,) = (cwd / "logs" / "train" / "multiruns").iterdir()
    return sweep


def job_span(job: Path) -> tuple[float, float]:
    """When a job started (its log's first line) and ended (its metrics.json written)."""
    first = (job / "train.log").read_text().splitlines()[0]
    stamp = datetime.datetime.strptime(first[1:24], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp(), (job / "metrics.json").stat().st_mtime


# -- parallel sweeps on one machine --------------------------------------------------------------
@pytest.mark.slow  # whether two jobs overlap depends on the load: on a busy 2-core CI it may not
def test_a_parallel_sweep_runs_its_jobs_at_the_same_time_and_survives_a_failed_one(tmp_path):
    cwd = user_dir(tmp_path)
    args = tiny_args(cwd, epochs=4)
    shutil.copy(cwd / "train.txt", cwd / "dev.txt")
    # three jobs, two at a time; the third fails (no such file) once the first two are done
    result = run(cwd, "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *args,
                 "data.val_path=train.txt,dev.txt,missing.txt")
    assert result.returncode == 1
    # the failed job's one-line error, and again as the sweep's last line
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("error: ") and "missing.txt" in line for line in lines)
    assert "missing.txt" in lines[-1], lines[-1]
    sweep = the_sweep(cwd)
    jobs = [sweep / "0", sweep / "1"]
    for job in jobs:
        assert (job / "metrics.json").is_file(), job
        # each job one thread: the two cores shared between two jobs
        assert f"sweep job {job.name}: 1 CPU thread(s) (2 jobs at a time" in (
            job / "train.log").read_text()
    assert not (sweep / "2").exists()  # a run that never started leaves nothing behind
    (start0, end0), (start1, end1) = map(job_span, jobs)
    assert start0 < end1 and start1 < end0, "the two jobs did not run at the same time"
    # seqmodels-compare reads the sweep as it reads one from the default launcher
    table = compare(load_runs(find_runs([str(sweep)])), ["val/acc_best"])
    assert len(table.rows) == 2 and table.keys == ["data.val_path"], table.keys
    shown = subprocess.run([sys.executable, "-m", "seqmodels.cli.compare", str(sweep)],
                           cwd=cwd, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "val/acc_best" in shown.stdout, shown.stderr[-2000:]


@pytest.mark.parametrize("gpus,per_gpu,job,expected", [
    ("all", 1, 5, 1),          # job 5 on 4 GPUs: GPU 1
    ([0, 2], 2, 3, 2),         # the user's GPUs: jobs 0, 2 on GPU 0; 1, 3 on GPU 2
])
def test_each_job_of_a_gpu_sweep_gets_its_gpu(tmp_path, monkeypatch, gpus, per_gpu, job,
                                              expected):
    # A machine with 4 GPUs, as torch would report it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    gpu_list = str(gpus).replace(" ", "")
    cfg = compose_config(tmp_path, ["hydra/launcher=parallel", "trainer=gpu",
                                    f"launch.gpus={gpu_list}", f"launch.jobs_per_gpu={per_gpu}"])
    with read_write(cfg.hydra):
        cfg.hydra.job.num = job  # this process runs job `job` of the sweep
    HydraConfig().set_config(cfg)
    # jobs at a time: jobs_per_gpu on each of the sweep's GPUs
    assert cfg.hydra.launcher.n_jobs == (4 if gpus == "all" else 2) * per_gpu
    place_job(cfg)
    assert list(cfg.trainer.devices) == [expected]


def test_gpu_assignment_rule_and_its_errors():
    assert [job_gpu(k, "all", 3) for k in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [job_gpu(k, [3, 1], 4) for k in range(4)] == [3, 1, 3, 1]
    with pytest.raises(ConfigError, match=r"launch.gpus=\[0, 5\]: this machine has no GPU 5"):
        job_gpu(0, [0, 5], 4)
    with pytest.raises(ConfigError, match="no GPU visible"):
        job_gpu(0, "all", 0)


def test_a_job_of_a_parallel_gpu_sweep_uses_one_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = compose_config(tmp_path, ["hydra/launcher=parallel", "trainer=ddp"])
    with pytest.raises(ConfigError, match="a job of a parallel sweep trains on one GPU"):
        place_job(cfg)


# -- clusters: the submitit launcher, locally ----------------------------------------------------
def test_submitit_local_runs_a_two_job_sweep(tmp_path):
    cwd = user_dir(tmp_path)
    result = run(cwd, "-m", "hydra/launcher=submitit_local", *tiny_args(cwd), "seed=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = the_sweep(cwd)
    assert all((sweep / job / "metrics.json").is_file() for job in ("0", "1"))
    # submitit ran them: its own folder holds each job's pickled result
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2


# -- Optuna studies in a database ----------------------------------------------------------------
SEARCH = ["hparams_search=sst2_optuna", "hydra.sweeper.study_name=tiny"]


def study_states(url: str, name: str = "tiny") -> dict[str, int]:
    study = optuna.load_study(study_name=name, storage=url)
    states = [trial.state for trial in study.trials]
    return {state.name: states.count(state) for state in TrialState if state in states}


def start(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(train_command(*args), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def kill_when_training(process: subprocess.Popen, sweeps: Path, sweep: int, job: int,
                       signum: int) -> None:
    """``signum`` to the search once job ``job`` of its sweep (the ``sweep``-th under
    ``sweeps``) has finished an epoch."""
    deadline = time.monotonic() + 240
    while True:
        found = sorted(sweeps.iterdir()) if sweeps.is_dir() else []
        log = found[sweep] / str(job) / "train.log" if len(found) > sweep else None
        if log is not None and log.is_file() and "epoch 0/" in log.read_text():
            break
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the job never started training"
        time.sleep(0.1)
    process.send_signal(signum)
    process.wait(timeout=120)


def test_an_interrupted_search_continues_to_its_number_of_trials(tmp_path):
    cwd = user_dir(tmp_path)
    command = [*SEARCH, "hydra.sweeper.n_trials=3", *tiny_args(cwd, epochs=20)]
    url = f"sqlite:///{cwd}/logs/optuna.db"  # where the search keeps it by default
    sweeps = cwd / "logs" / "train" / "multiruns"
    # SIGTERM during the second trial: it ends as failed, the first stays complete
    first = start(cwd, *command)
    kill_when_training(first, sweeps, sweep=0, job=1, signum=signal.SIGTERM)
    assert first.returncode == 128 + signal.SIGTERM
    assert study_states(url) == {"COMPLETE": 1, "FAIL": 1}
    # the same command, SIGKILL during its first trial (the study's third): nothing marks it,
    # so it stays "running" under a process that is gone
    second = start(cwd, *command)
    kill_when_training(second, sweeps, sweep=1, job=0, signum=signal.SIGKILL)
    assert study_states(url) == {"COMPLETE": 1, "FAIL": 1, "RUNNING": 1}
    # the same command once more: the dead trial is failed, the missing two are run
    third = run(cwd, *command)
    assert third.returncode == 0, third.stderr[-3000:]
    assert study_states(url) == {"COMPLETE": 3, "FAIL": 2}
    assert "were interrupted" in third.stdout + third.stderr
    last = sorted(sweeps.iterdir())[-1]
    assert sorted(p.name for p in last.iterdir() if p.name.isdigit()) == ["0", "1"]
    best = OmegaConf.load(last / "optimization_results.yaml")
    assert best.best_value == pytest.approx(
        optuna.load_study(study_name="tiny", storage=url).best_value)


def test_two_processes_share_one_study(tmp_path):
    cwd = user_dir(tmp_path)
    command = [*SEARCH, "hydra.sweeper.n_trials=4", "hydra.sweeper.poll_interval=0.5",
               *tiny_args(cwd, epochs=6)]
    processes = [start(cwd, *command) for _ in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    url = f"sqlite:///{cwd}/logs/optuna.db"
    states = study_states(url)
    assert states["COMPLETE"] == 4 and states.get("RUNNING", 0) == 0, states
    # every complete trial was trained once, by one of the two, in a job directory of its own
    runs = list((cwd / "logs" / "train" / "multiruns").glob("*/*/metrics.json"))
    assert len(runs) == 4
    study = optuna.load_study(study_name="tiny", storage=url)
    workers = {t.system_attrs[WORKER] for t in study.trials if t.state == TrialState.COMPLETE}
    assert workers <= {f"{socket.gethostname()}:{p.pid}" for p in processes}


def test_pruning_stops_a_hopeless_trial_and_records_it_as_pruned(tmp_path):
    cwd = user_dir(tmp_path)
    # A pruner that finds every trial hopeless after its first epoch: accuracy is never >= 2.
    result = run(cwd, *SEARCH, "hydra.sweeper.n_trials=2", "hydra.sweeper.pruning=true",
                 "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
                 "~hydra.sweeper.pruner.n_startup_trials", "+hydra.sweeper.pruner.lower=2.0",
                 "hydra.sweeper.pruner.n_warmup_steps=0", *tiny_args(cwd, epochs=5))
    assert result.returncode == 0, result.stderr[-3000:]
    url = f"sqlite:///{cwd}/logs/optuna.db"
    assert study_states(url) == {"PRUNED": 2}
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [list(t.intermediate_values) for t in study.trials] == [[0], [0]]
    for job in ("0", "1"):  # stopped after one epoch of five, and ended as a run does
        log = (the_sweep(cwd) / job / "train.log").read_text()
        assert "epoch 0/4" in log and "epoch 1/4" not in log and "pruned after epoch 0" in log
        assert "val/acc_best" in json.loads((the_sweep(cwd) / job / "metrics.json").read_text())


# -- PostgreSQL, for several machines ------------------------------------------------------------
def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else (
        Path(shutil.which("initdb")).parent if shutil.which("initdb") else None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own on 127.0.0.1, for this test only: its URL."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="no psycopg2 (pip install psycopg2-binary)")
    # Not under pytest's tmp_path: as root, the server runs as the postgres user, who cannot
    # enter pytest's private folders.
    base = Path(tempfile.mkdtemp(prefix="seqmodels-pg-"))
    data, port = base / "data", free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "seqmodels",
                        "--auth=trust"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l",
                        str(base / "server.log"), "-o", f"-p {port} -k {base} -h 127.0.0.1",
                        "start"], check=True, capture_output=True, timeout=120)
        yield f"postgresql://seqmodels@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_a_search_in_postgresql(tmp_path, postgres):
    cwd = user_dir(tmp_path)
    result = run(cwd, *SEARCH, "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={postgres}",
                 *tiny_args(cwd))
    assert result.returncode == 0, result.stderr[-3000:]
    assert study_states(postgres) == {"COMPLETE": 2}
    assert not (cwd / "logs" / "optuna.db").exists()
