"""Shared fixtures: configs composed with Hydra's compose API and pointed at a temp directory,
and tiny data files that the tests write themselves."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from seqmodels.config import config_dir
from seqmodels.training.precision import cpu_bf16_rnns

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def compose_config(tmp_path: Path, overrides=(), config_name: str = "train") -> DictConfig:
    """The composed config, as ``seqmodels-<config_name> <overrides>`` would see it, with every
    output under ``tmp_path`` and no network."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.cpu_bf16``: the test runs RNNs under bfloat16 autocast on the CPU, which
    oneDNN cannot do on every CPU (AVX2-only x86 has no bf16 LSTM). Decided by the probe that
    refuses ``trainer.precision=bf16-mixed`` to users, and skipped with its reason."""
    if item.get_closest_marker("cpu_bf16") is not None:
        probe = cpu_bf16_rnns()
        if not probe.works:
            pytest.skip(f"no bfloat16 RNN kernels on this CPU: {probe.reason}")


@pytest.fixture(autouse=True)
def _isolation():
    """Each test starts from the same RNG, dtype and thread settings and leaves no Hydra or
    process-group state behind."""
    torch.manual_seed(0)
    yield
    GlobalHydra.instance().clear()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second intra-op thread, and on a busy 2-core machine
    every op would wait for it (measured: 70 s instead of 4 s for one test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_lines(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def run_cli(module: str, *overrides: str, cwd: Path, timeout: int = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> <overrides>`` in ``cwd``, as a user would run it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def user(tmp_path):
    """A user's own working directory (not the repo) and the tiny named datasets, reached as a
    user reaches a copy of theirs: through SEQMODELS_DATA_DIR."""
    from tests.tiny_datasets import write_named_datasets  # it imports this module

    data_dir = write_named_datasets(tmp_path / "datasets")
    cwd = tmp_path / "work"
    cwd.mkdir()
    return cwd, {"SEQMODELS_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
