"""The choices seqmodels makes for a run on CUDA, checked on the CPU: batches pinned for the
copies to overlap the step (``data.pin_memory=auto``), and a refusal of anything else; and the
captured-step benchmark, whose CUDA test runs in the device check."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from seqmodels.cli.train import build_data_and_model
from seqmodels.errors import DataError
from tests.conftest import compose_config
from tests.tiny_datasets import write_named_datasets

EXPERIMENTS = ["sst2_bilstm", "ewt_upos", "shakespeare_char"]


def on(device: str) -> SimpleNamespace:
    """A stand-in for a trainer whose strategy runs on ``device``, at the start of a run (what
    the datamodule reads: the device, the epoch, the callbacks for a resumed position)."""
    start = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=0)))
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)),
                           fit_loop=start, callbacks=[], current_epoch=0)


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


@pytest.mark.parametrize("experiment", ["sst2_bilstm", "ewt_upos"])
def test_loader_workers_on_cuda_make_the_batches_the_main_process_makes(experiment, tmp_path,
                                                                        monkeypatch):
    """data.num_workers=auto: loader processes only on CUDA; and what they make (the tagger's
    spellings included) is what the training process would have made itself."""
    monkeypatch.setenv("SEQMODELS_DATA_DIR", str(write_named_datasets(tmp_path / "data")))
    cfg = compose_config(tmp_path, [f"experiment={experiment}", "data.batch_size=16"])
    assert cfg.data.num_workers == "auto"
    datamodule, _ = build_data_and_model(cfg)
    datamodule.trainer = on("cpu")
    assert datamodule.workers() == 0
    alone = list(datamodule.train_dataloader())
    datamodule.trainer = on("cuda")
    assert datamodule.workers() == 2
    datamodule.pin_memory = False  # pinning needs a GPU; the workers do not
    loader = datamodule.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    for mine, theirs in zip(alone, loader, strict=True):
        for name in ("tokens", "lengths", "targets"):
            torch.testing.assert_close(getattr(theirs, name), getattr(mine, name))
        if mine.chars is not None:
            torch.testing.assert_close(theirs.chars.spellings, mine.chars.spellings)
            torch.testing.assert_close(theirs.chars.index, mine.chars.index)
            assert theirs.chars.groups == mine.chars.groups


def test_a_pin_memory_setting_that_is_not_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMODELS_DATA_DIR", str(write_named_datasets(tmp_path / "data")))
    cfg = compose_config(tmp_path, ["experiment=sst2_bilstm", "data.pin_memory=always"])
    with pytest.raises((DataError, InstantiationException),
                       match="data.pin_memory must be true, false or auto"):
        instantiate(cfg.data)


# -- captured training steps (scripts/bench_cuda_graphs.py) --------------------------------------
def bench_cuda_graphs():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_cuda_graphs

    return bench_cuda_graphs


def test_graph_benchmark_runs_its_eager_arm_on_the_cpu():
    result = bench_cuda_graphs().main(["--device", "cpu", "--steps", "2", "--vocab", "40"])
    assert result["eager_steps_per_s"] > 0 and result["captured_steps_per_s"] is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_captured_step_trains_the_weights_the_eager_step_does():
    """Within the noise of two eager runs (cuDNN and the embedding's backward add in an order
    of their own), or within 1e-5 where two eager runs agree."""
    bench = bench_cuda_graphs()
    device = torch.device("cuda")
    batches = bench.make_batches(4, 200, device)
    floor = bench.max_weight_difference(200, batches, device, count=10, captured=False)
    assert bench.max_weight_difference(200, batches, device, count=10) <= max(10 * floor, 1e-5)


# -- fixed shapes: a few batch shapes for captured steps ------------------------------------------
@pytest.mark.parametrize("experiment", ["sst2_bilstm", "ewt_upos"])
def test_fixed_shape_batches_give_the_results_of_the_plain_ones(experiment, tmp_path,
                                                               monkeypatch):
    """data.pad_to_multiple=16 data.drop_last=true: every training batch is (batch_size, a
    multiple of 16) and the network's loss and outputs on it are those of the same examples
    batched as usual (the tagger's character features included)."""
    monkeypatch.setenv("SEQMODELS_DATA_DIR", str(write_named_datasets(tmp_path / "data")))
    overrides = [f"experiment={experiment}", "data.batch_size=16", "model.embedding_dim=8",
                 "model.encoder.hidden_size=8"]
    plain_cfg = compose_config(tmp_path, [*overrides, "data.bucketing=false"])
    fixed_cfg = compose_config(tmp_path, [*overrides, "data.bucketing=false",
                                          "data.pad_to_multiple=16", "data.drop_last=true"])
    plain_data, model = build_data_and_model(plain_cfg)
    fixed_data, _ = build_data_and_model(fixed_cfg)
    model.eval()  # no dropout: its masks would be drawn over the wider batch differently
    plain_batches, fixed_batches = list(plain_data.train_dataloader()), \
        list(fixed_data.train_dataloader())
    assert len(fixed_batches) == len(plain_data.splits["train"]) // 16 < len(plain_batches)
    for plain, fixed in zip(plain_batches, fixed_batches, strict=False):
        assert fixed.tokens.shape[0] == 16 and fixed.tokens.shape[1] % 16 == 0
        assert fixed.tokens.shape[1] >= plain.tokens.shape[1]
        torch.testing.assert_close(fixed.lengths, plain.lengths)
        torch.testing.assert_close(model.net.training_loss(fixed)[0],
                                   model.net.training_loss(plain)[0])


def test_a_pad_multiple_that_is_not_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMODELS_DATA_DIR", str(write_named_datasets(tmp_path / "data")))
    cfg = compose_config(tmp_path, ["experiment=sst2_bilstm", "data.pad_to_multiple=0"])
    with pytest.raises((DataError, InstantiationException),
                       match="data.pad_to_multiple must be a positive integer or null"):
        instantiate(cfg.data)
