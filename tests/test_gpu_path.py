"""The choices seqmodels makes for a run on CUDA, checked on the CPU: batches pinned for the
copies to overlap the step (``data.pin_memory=auto``), and a refusal of anything else."""

from types import SimpleNamespace

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from seqmodels.errors import DataError
from tests.conftest import compose_config
from tests.tiny_datasets import write_named_datasets

EXPERIMENTS = ["sst2_bilstm", "ewt_upos", "shakespeare_char"]


def on(device: str) -> SimpleNamespace:
    """A stand-in for a trainer whose strategy runs on ``device`` (what the datamodule reads)."""
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_batches_are_pinned_when_training_on_cuda_only(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMODELS_DATA_DIR", str(write_named_datasets(tmp_path / "data")))
    cfg = compose_config(tmp_path, [f"experiment={experiment}"])
    assert cfg.data.pin_memory == "auto"
    datamodule = instantiate(cfg.data)
    assert datamodule.pins_memory() is False  # outside a run
    datamodule.trainer = on("cpu")
    assert datamodule.pins_memory() is False
    datamodule.trainer = on("cuda")
    assert datamodule.pins_memory() is True
    datamodule.pin_memory = False  # data.pin_memory=false: never
    assert datamodule.pins_memory() is False


def test_a_pin_memory_setting_that_is_not_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMODELS_DATA_DIR", str(write_named_datasets(tmp_path / "data")))
    cfg = compose_config(tmp_path, ["experiment=sst2_bilstm", "data.pin_memory=always"])
    with pytest.raises((DataError, InstantiationException),
                       match="data.pin_memory must be true, false or auto"):
        instantiate(cfg.data)
