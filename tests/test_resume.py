"""Resuming: a run continues in its own directory from its last checkpoint and ends exactly
where an uninterrupted run with the same seed ends, on one process or on several."""

import json
from pathlib import Path

import pytest
import torch

from seqmodels.callbacks.resume import epoch_seed
from seqmodels.cli.train import train
from seqmodels.training.runs import checkpoint_run_dir, hydra_subdir, launcher_run_id, run_dir
from tests.conftest import compose_config, run_cli
from tests.test_charlm import TEXT as CHARLM_TEXT
from tests.test_distributed import ONE_THREAD, QUIET, sentiment_data

STAMP = "2026-01-01_00-00-00_000000"


def fake_run(root: Path) -> Path:
    (root / "run" / ".hydra").mkdir(parents=True)
    checkpoint = root / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"")
    return checkpoint


def test_a_checkpoint_inside_a_run_resumes_into_that_run(tmp_path):
    checkpoint = fake_run(tmp_path)
    assert checkpoint_run_dir(str(checkpoint)) == tmp_path / "run"
    assert run_dir("logs/train/runs", STAMP, str(checkpoint)) == str(tmp_path / "run")
    assert hydra_subdir(STAMP, str(checkpoint)) == f".hydra/resumed_{STAMP}"
    # Anything else is a new run in a new directory.
    loose = tmp_path / "elsewhere.ckpt"
    loose.write_bytes(b"")
    for other in (None, "last", str(loose), str(tmp_path / "run" / "checkpoints" / "gone.ckpt")):
        assert run_dir("logs/train/runs", STAMP, other) == f"logs/train/runs/{STAMP}"
        assert hydra_subdir(STAMP, other) == ".hydra"


def test_every_process_of_a_torchrun_or_slurm_launch_shares_one_directory(monkeypatch):
    for name in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_ID",
                 "SLURM_STEP_ID", "SLURM_PROCID", "RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launcher_run_id() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launcher_run_id() is None  # one process: the clock is fine
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert run_dir("logs/train/runs", STAMP) == "logs/train/runs/torchrun_abc"
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert launcher_run_id() == "slurm_4242.0"
    monkeypatch.setenv("SLURM_PROCID", "3")  # only rank 0 records the config
    assert hydra_subdir(STAMP) is None
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert hydra_subdir(STAMP) == ".hydra"


def test_epoch_seeds_differ_by_seed_epoch_and_rank_and_are_stable():
    seeds = {epoch_seed(s, e, r) for s in (1, 2) for e in (0, 1) for r in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**32 for s in seeds)
    assert epoch_seed(12345, 3, 0) == epoch_seed(12345, 3, 0)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.usefixtures("one_thread")
def test_stopped_after_one_epoch_and_resumed_ends_with_the_uninterrupted_weights(tmp_path):
    """Dropout stays on: the per-epoch seed, not luck, makes the resumed epoch draw the same
    masks; bucketing stays on: the resumed epoch must get its own batch order, not epoch 0's."""
    data, _ = sentiment_data(tmp_path)
    data = [o for o in data if not o.startswith(("model.embedding_dropout", "model.dropout"))]
    common = [*data, "data.batch_size=16", "data.bucketing=true", "test=false", *QUIET,
              f"paths.log_dir={tmp_path / 'logs'}"]
    first = run_cli("seqmodels.cli.train", *common, "trainer.max_epochs=1", cwd=tmp_path,
                    env=ONE_THREAD)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 8

    resumed = run_cli("seqmodels.cli.train", *common, "trainer.max_epochs=3", f"ckpt_path={last}",
                      cwd=tmp_path, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in (tmp_path / "logs" / "train" / "runs").iterdir()] == [run.name]
    assert torch.load(last, weights_only=True)["global_step"] == 24
    assert len(list((run / ".hydra").glob("resumed_*/overrides.yaml"))) == 1
    assert "trainer.max_epochs=1" in (run / ".hydra" / "overrides.yaml").read_text()

    cfg = compose_config(tmp_path / "uninterrupted", [*common, "trainer.max_epochs=3"])
    _, objects = train(cfg)
    expected = objects["model"].state_dict()
    got = weights(last)
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


@pytest.mark.slow
def test_a_one_process_run_resumes_on_two_processes_in_its_directory(tmp_path):
    data, _ = sentiment_data(tmp_path)
    common = [*data, "data.batch_size=8", "test=false", *QUIET]
    run = tmp_path / "run"
    first = run_cli("seqmodels.cli.train", *common, "trainer.max_epochs=1", f"hydra.run.dir={run}",
                    cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    steps_first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    # `last` names this run's last.ckpt once hydra.run.dir names the run.
    resumed = run_cli("seqmodels.cli.train", *common, "trainer=ddp_cpu", "trainer.max_epochs=2",
                      "ckpt_path=last", f"hydra.run.dir={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # Epoch 2 ran on two ranks: half the steps of one process with the same batch per rank.
    assert final["global_step"] == steps_first + steps_first // 2
    assert final["epoch"] >= 1
    assert "val/acc" in json.loads((run / "metrics.json").read_text())


def sentiment_inside_epoch(tmp_path: Path) -> tuple[list[str], int]:
    """Dropout and word dropout on (random draws), bucketing on (an epoch-specific order),
    weights averaged (callback state). 128 sentences, 8 batches an epoch."""
    data, _ = sentiment_data(tmp_path)
    data = [o for o in data if not o.startswith(("model.embedding_dropout", "model.dropout",
                                                 "model.word_dropout", "data.bucketing"))]
    return [*data, "data.batch_size=16", "model.word_dropout=0.2", "data.bucketing=true",
            "callbacks=[default,weight_averaging,step_checkpoint]"], 8


def sentiment_with_loader_workers(tmp_path: Path) -> tuple[list[str], int]:
    """Worker processes draw indices as soon as the loader's iterator is made."""
    overrides, batches = sentiment_inside_epoch(tmp_path)
    return [*overrides, "data.num_workers=2"], batches


def charlm_inside_epoch(tmp_path: Path) -> tuple[list[str], int]:
    """The carried state across windows must come back too. 19 windows an epoch."""
    path = tmp_path / "tiny.txt"
    path.write_text(CHARLM_TEXT, encoding="utf-8")
    return ["experiment=shakespeare_char", "data=text_files", f"data.path={path}",
            "data.batch_size=4", "data.bptt=16", "model.encoder.hidden_size=16",
            "model.embedding_dim=8", "model.sample_every_n_steps=0",
            "callbacks=[default,step_checkpoint]"], 19


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("task", [sentiment_inside_epoch, sentiment_with_loader_workers,
                                  charlm_inside_epoch])
def test_resumed_inside_an_epoch_ends_with_the_uninterrupted_weights(tmp_path, task):
    """The step checkpoint is written after the third batch of epoch 1 (and not again): the
    resumed run must skip those three batches of epoch 1's own order, draw what the
    uninterrupted run drew next, and carry what it carried."""
    overrides, batches = task(tmp_path)
    common = [*overrides, f"callbacks.step_checkpoint.every_n_train_steps={batches + 3}",
              "test=false", *QUIET, "trainer.max_epochs=2", "logger=csv"]
    cfg = compose_config(tmp_path / "uninterrupted", common)
    _, uninterrupted = train(cfg)
    middle = Path(cfg.paths.output_dir) / "checkpoints" / "last_step.ckpt"
    saved = torch.load(middle, weights_only=True)
    assert saved["global_step"] == batches + 3
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 2

    resumed_cfg = compose_config(tmp_path / "resumed", [*common, f"ckpt_path={middle}"])
    _, resumed = train(resumed_cfg)
    assert resumed["trainer"].global_step == uninterrupted["trainer"].global_step
    expected, got = uninterrupted["model"].state_dict(), resumed["model"].state_dict()
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
