"""Several processes (DDP, on CPU with gloo) give the numbers of one process, write one run
directory, and work inside Hydra sweeps; device settings this machine cannot honour are refused
before Lightning starts."""

import json
import os
import random
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from seqmodels.callbacks.vocabularies import SameVocabularies, vocabulary_fingerprint
from seqmodels.cli.train import train
from seqmodels.data.batching import Batch, LengthBatchSampler
from seqmodels.data.vocab import Vocab
from seqmodels.errors import ConfigError, DataError
from seqmodels.training.distributed import (
    check_accelerator,
    config_flags,
    prepare_determinism,
    rank_command,
    requested_devices,
    thread_setting,
    threads_per_process,
)
from tests.conftest import ROOT, compose_config, run_cli, write_lines
from tests.test_sentiment import negation_sentence
from tests.test_tagging import LEXICON, write_conllu

QUIET = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null"]
# Tiny models run fastest on one thread, and a busy machine cannot stall it (two OpenMP threads
# waiting for each other on shared cores can make a step 50x slower).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# Dropout masks come from each rank's own random stream: a legitimate difference, switched off
# where the test wants one process's numbers exactly.
NO_DROPOUT = ["model.embedding_dropout=0", "model.dropout=0", "model.encoder.dropout=0"]




# -- the command each rank runs ---------------------------------------------------------------
def job(task, hydra=(), output_dir="/runs/sweep/1"):
    return OmegaConf.create({"overrides": {"task": list(task), "hydra": list(hydra)},
                             "runtime": {"output_dir": output_dir, "cwd": "/work"}})


def test_a_rank_reruns_its_own_job_of_a_sweep_not_the_whole_sweep():
    argv = ["train.py", "-m", "-cn", "train", "--config-dir=extra", "seed=1,2", "trainer=ddp_cpu"]
    sweep_job = job(["seed=2", "trainer=ddp_cpu"],
                    ["hydra.sweep.dir=/runs/sweep", "hydra.mode=MULTIRUN", "hydra.verbose=true"])
    command = rank_command(sweep_job, argv)
    arguments = command[command.index("-cn"):]
    assert arguments == [
        "-cn", "train", "--config-dir=extra",  # the config it chose
        "seed=2", "trainer=ddp_cpu",  # this job's values, not the sweep's "1,2"
        "hydra.verbose=true",  # the user's own Hydra settings
        "hydra.mode=RUN", 'hydra.run.dir="/runs/sweep/1"', "hydra.output_subdir=null",
    ]
    assert "-m" not in command


def test_config_flags_keep_their_values_in_both_spellings():
    assert config_flags(["-cp", "conf", "x=1", "--config-name=exp", "--cfg", "job"]) == [
        "-cp", "conf", "--config-name=exp"]


@pytest.mark.parametrize("path", ["/tmp/a b", "/tmp/a,b=c", '/tmp/a "b" c', r"C:\runs\x",
                                  "ends\\", '/q\\"x'])
def test_any_run_directory_reaches_the_rank_unchanged(path):
    """Through Hydra's override parser and OmegaConf, as the rank's Hydra reads it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = rank_command(job(["seed=1"], output_dir=path), ["train.py"])[-2]
    (parsed,) = OverridesParser.create().parse_overrides([override])
    assert parsed.key_or_group == "hydra.run.dir"
    assert OmegaConf.create({"dir": parsed.value()}).dir == path


# -- threads and devices ----------------------------------------------------------------------
def test_each_cpu_process_gets_its_share_of_the_cores(monkeypatch):
    assert threads_per_process(2, cpus=2) == 1
    assert threads_per_process(3, cpus=16) == 5
    assert threads_per_process(4, cpus=2) == 1
    monkeypatch.setattr("seqmodels.training.distributed.available_cpus", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert thread_setting(on_cpu=True, processes=2) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "8")  # would oversubscribe: capped on the CPU ...
    assert thread_setting(on_cpu=True, processes=2) == 4
    assert thread_setting(on_cpu=False, processes=2) is None  # ... kept for GPU ranks
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert thread_setting(on_cpu=True, processes=2) is None


@pytest.mark.parametrize("devices,count", [(1, 1), (-1, None), ("auto", None), ("0,1", 2),
                                           ([0, 2, 3], 3), ("4", 4)])
def test_requested_devices(devices, count):
    assert requested_devices(devices) == count


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_gpu_trainer_without_a_gpu_is_refused_before_lightning_starts(tmp_path, trainer):
    cfg = compose_config(tmp_path, [f"trainer={trainer}"])
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu needs a CUDA GPU.*trainer=cpu"):
        check_accelerator(cfg.trainer)
    check_accelerator(compose_config(tmp_path, ["trainer=ddp_cpu"]).trainer)  # no complaint


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_trainer_without_a_gpu_is_one_line_from_the_cli(tmp_path):
    result = run_cli("seqmodels.cli.train", "trainer=gpu", f"paths.log_dir={tmp_path}",
                     cwd=tmp_path,
                     timeout=120)
    assert result.returncode == 1
    assert "error: trainer.accelerator=gpu needs a CUDA GPU" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # Said once on the console; a run refused before training leaves no directory behind.
    assert (result.stderr + result.stdout).count("needs a CUDA GPU") == 1
    assert not list(tmp_path.glob("train/runs/*"))


def test_deterministic_preset_fixes_the_cublas_workspace(tmp_path, monkeypatch):
    # setenv first: delenv of an unset variable records nothing, and the value set below
    # would outlive the test. Now teardown puts back whatever was there (or nothing).
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    prepare_determinism(compose_config(tmp_path).trainer)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    prepare_determinism(compose_config(tmp_path, ["trainer.deterministic=true"]).trainer)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.deterministic


def test_ddp_cpu_config_builds_a_gloo_ddp_trainer(tmp_path):
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import DDPStrategy

    cfg = compose_config(tmp_path, ["trainer=ddp_cpu", "trainer.devices=3"])
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy.process_group_backend == "gloo"
    assert trainer.num_devices == 3 and trainer.world_size == 3
    ddp = compose_config(tmp_path, ["trainer=ddp", "trainer.num_nodes=2"]).trainer
    assert (ddp.accelerator, ddp.devices, ddp.num_nodes) == ("gpu", -1, 2)


# -- data under DDP ---------------------------------------------------------------------------
def test_evaluation_shards_cover_every_example_once_and_none_is_empty(monkeypatch):
    lengths = [5, 3, 9, 2, 7]  # one evaluation batch's worth, 2 ranks
    shards = []
    for rank in range(2):
        monkeypatch.setattr("seqmodels.data.batching.distributed_rank_and_size",
                            lambda rank=rank: (rank, 2))
        sampler = LengthBatchSampler(lengths, 256, shuffle=False, even_shards=False)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == 1  # a rank without a batch would hang the rest
    assert sorted(i for shard in shards for batch in shard for i in batch) == list(range(5))
    monkeypatch.setattr("seqmodels.data.batching.distributed_rank_and_size", lambda: (0, 8))
    with pytest.raises(DataError, match="5 evaluation examples cannot be shared by 8 processes"):
        list(LengthBatchSampler(lengths, 256, shuffle=False, even_shards=False))


def test_lightning_reaches_the_samplers_epoch():
    from lightning.fabric.utilities.data import _set_sampler_epoch

    sampler = LengthBatchSampler([3] * 40, 4, seed=1)
    loader = DataLoader(list(range(40)), batch_sampler=sampler)
    first = list(sampler)
    _set_sampler_epoch(loader, 1)  # what Lightning does at each epoch start
    assert sampler.epoch == 1 and list(sampler) != first


def test_moving_a_batch_to_a_device_leaves_lengths_on_the_cpu(tmp_path):
    """What packing needs (a sync per batch otherwise), for each task's batch type."""
    from seqmodels.data.batching import collate_classification
    from seqmodels.data.tagging import TaggingDataModule, collate_tagging
    from seqmodels.data.text import CharTextDataModule, TrackBatches

    batches = {
        "sentence": collate_classification([([5, 6], 1), ([7], 0)]),
        "tagging": collate_tagging([([5, 6], [0, 1], [[2, 3], [4]])]),
        "chars": next(iter(TrackBatches(torch.arange(40), batch_size=2, bptt=5))),
    }
    modules = {"sentence": TaggingDataModule, "tagging": TaggingDataModule,
               "chars": CharTextDataModule}
    for name, batch in batches.items():
        moved = modules[name].transfer_batch_to_device(None, batch, torch.device("meta"), 0)
        assert isinstance(moved, Batch) and moved.tokens.device.type == "meta", name
        assert moved.lengths.device.type == "cpu", name


def test_ranks_with_different_vocabularies_are_stopped():
    class Strategy:  # rank 0's fingerprint arrives from the broadcast
        def __init__(self, reference):
            self.reference = reference

        def broadcast(self, obj, src=0):
            return self.reference

    class Trainer:
        world_size, global_rank = 2, 1

    class Module:
        vocabs = {"tokens": Vocab(["good", "bad"], has_specials=False)}

    check, trainer = SameVocabularies(), Trainer()
    trainer.strategy = Strategy(vocabulary_fingerprint(Module.vocabs))
    check.setup(trainer, Module(), "fit")  # the same words: nothing to say
    other = {"tokens": Vocab(["good", "awful"], has_specials=False)}
    trainer.strategy = Strategy(vocabulary_fingerprint(other))
    with pytest.raises(DataError, match="rank 1 built different vocabularies from rank 0"):
        check.setup(trainer, Module(), "fit")


# -- whole runs through the CLI ---------------------------------------------------------------
def sentiment_data(tmp_path: Path) -> tuple[list[str], list[str]]:
    """128 train (a multiple of the global batch: every step is full on every rank) and 37
    validation sentences (an odd count: the two ranks' shards differ in size). Without
    bucketing, batch k of the global order is the same examples whatever the batch size."""
    rng = random.Random(1)
    lines = [f"{label} {' '.join(s)}" for s, label in (negation_sentence(rng) for _ in range(165))]
    train_file = write_lines(tmp_path / "data" / "train.txt", lines[:128])
    val_file = write_lines(tmp_path / "data" / "val.txt", lines[128:])
    overrides = ["data=text_classification", f"data.train_path={train_file}",
                 f"data.val_path={val_file}", "data.eval_batch_size=8", "data.bucketing=false",
                 "model.embedding_dim=16", "model.encoder.hidden_size=16",
                 "model.optimizer.lr=0.01"]
    return overrides + NO_DROPOUT + ["model.word_dropout=0"], ["data.batch_size"]


def tagging_data(tmp_path: Path) -> tuple[list[str], list[str]]:
    """Sentences of one length: the per-rank token-mean losses then average to the token mean
    of the global batch, as with one process."""
    rng = random.Random(0)
    pattern = ["DET", "ADJ", "NOUN", "VERB", "DET", "NOUN"]
    files = {}
    for split, count in (("train", 64), ("dev", 21)):
        sentences = [([rng.choice(LEXICON[t]) for t in pattern], pattern) for _ in range(count)]
        files[split] = write_conllu(tmp_path / f"{split}.conllu", sentences)
    return ["experiment=ewt_upos", "data=conllu", f"data.train_path={files['train']}",
            f"data.val_path={files['dev']}", "data.eval_batch_size=4", "data.bucketing=false",
            *NO_DROPOUT, "model.word_dropout=0", "model.embedding_dim=8",
            "model.chars.embedding_dim=4", "model.chars.hidden_size=4",
            "model.encoder.hidden_size=8"], ["data.batch_size"]


def charlm_data(tmp_path: Path) -> tuple[list[str], list[str]]:
    """The global batch's tracks are the same text in both runs, so validation tracks must be
    too: evaluation batches scale with the ranks as well."""
    rng = random.Random(0)
    pieces = ["ROMEO: ", "JULIET: ", "O Romeo, ", "wherefore ", "art thou\n", "the ", "light "]
    path = tmp_path / "input.txt"
    path.write_text("".join(rng.choice(pieces) for _ in range(600)), encoding="utf-8")
    return ["experiment=shakespeare_char", "data=text_files", f"data.path={path}", "data.bptt=16",
            "model.encoder.hidden_size=16", "model.encoder.num_layers=1",
            "model.embedding_dim=8", "model.sample_every_n_steps=0", *NO_DROPOUT], \
        ["data.batch_size", "data.eval_batch_size"]


TASKS = {
    "sentiment": (sentiment_data, "val/acc"),
    "tagging": (tagging_data, "val/acc"),
    "charlm": (charlm_data, "val/loss"),
}


def event_file_writers(run_dir: Path) -> set[str]:
    """The process ids in TensorBoard event file names (events.out.tfevents.<t>.<host>.<pid>.n)."""
    return {re.match(r"events\.out\.tfevents\.\d+\..+\.(\d+)\.\d+$", p.name).group(1)
            for p in run_dir.rglob("events.out.tfevents.*")}


class CountGradientSyncs(L.Callback):
    """In each rank: the backward passes, and those whose gradients DDP all-reduced (its comm
    hook sees bucket 0 once per such backward; metric syncs do not go through it), written to
    ``<path>/rank<r>.json`` when training ends."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.syncs = self.backwards = 0

    def on_train_start(self, trainer, pl_module) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def hook(state, bucket):
            self.syncs += bucket.index() == 0
            return allreduce_hook(state, bucket)

        trainer.strategy.model.register_comm_hook(None, hook)  # the DDP-wrapped module

    def on_after_backward(self, trainer, pl_module) -> None:
        self.backwards += 1

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        counts = {"syncs": self.syncs, "backwards": self.backwards, "steps": trainer.global_step}
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(counts))


COUNT_SYNCS = ["+callbacks.count_syncs._target_=tests.test_distributed.CountGradientSyncs",
               "+callbacks.count_syncs.path=${paths.output_dir}/syncs"]


@pytest.mark.parametrize("task", ["sentiment", "tagging", "charlm", "sentiment, accumulating 2"])
@pytest.mark.usefixtures("one_thread")
def test_two_processes_report_what_one_process_reports(tmp_path, task):
    """Rank r takes batches r, r+2, ... of the one global order, so with a per-process batch of
    4 (8) a step of the 2-process run sees exactly the examples of a step of the 1-process run
    with a batch of 8 (16), and DDP averages the two ranks' mean gradients into that step's mean
    gradient. Validation shards are disjoint and the metrics sum their states across ranks.
    What is left is float32 rounding (sums in another order: ~1e-7 relative per step), which
    over these ~30 steps stays below 1e-5; a duplicated or lost example or a missing metric
    sync moves the validation loss by more than 1e-3. Accumulating, the ranks skip the
    all-reduce of a window's first batch, and the summed gradient comes out the same (the
    weights cannot tell: an all-reduce of every batch averages to the same sum), so each rank
    counts the backward passes DDP communicated: one per optimizer step."""
    make_data, metric = TASKS[task.split(",")[0]]
    data, per_process = make_data(tmp_path)
    common = [*data, "trainer.max_epochs=3", "test=false", *QUIET]
    if "accumulating" in task:
        common.append("trainer.accumulate_grad_batches=2")
    sizes = {"data.batch_size": 8, "data.eval_batch_size": 4}
    ddp = run_cli("seqmodels.cli.train", *common, "trainer=ddp_cpu", *COUNT_SYNCS,
                  *(f"{key}={sizes[key] // 2}" for key in per_process),
                  f"paths.log_dir={tmp_path / 'logs'}", cwd=tmp_path,
                  env={**ONE_THREAD, "PYTHONPATH": str(ROOT)})  # the counting callback
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    # One run directory, written once: one TensorBoard writer, one metrics file, checkpoints.
    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1, runs
    run_dir = runs[0]
    assert len(event_file_writers(run_dir)) == 1
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / ".hydra").is_dir()
    started = "started 1 more process(es) for this run (world size 2, 1 threads each)"
    assert started in ddp.stdout + ddp.stderr
    log_text = (run_dir / "train.log").read_text()
    assert log_text.count("instantiating model <") == 1  # rank 1 reports warnings only
    ddp_metrics = json.loads((run_dir / "metrics.json").read_text())
    accumulate = 2 if "accumulating" in task else 1
    for rank in (0, 1):
        counts = json.loads((run_dir / "syncs" / f"rank{rank}.json").read_text())
        assert counts["backwards"] == accumulate * counts["steps"] > 0, counts  # full windows
        assert counts["syncs"] == counts["steps"], counts  # the all-reduce: once a window

    single_cfg = compose_config(tmp_path / "single", [
        *common, "trainer=cpu", "logger=csv", *(f"{key}={sizes[key]}" for key in per_process)])
    single_metrics, objects = train(single_cfg)
    assert ddp_metrics["val/loss"] == pytest.approx(single_metrics["val/loss"], rel=1e-5)
    assert ddp_metrics[metric] == pytest.approx(single_metrics[metric], rel=1e-5, abs=1e-6)
    ddp_weights = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    for name, value in objects["model"].state_dict().items():
        torch.testing.assert_close(ddp_weights["state_dict"][name], value, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_processes_started_by_torchrun_share_one_run_directory(tmp_path):
    """Under torchrun every process runs Hydra itself: the clock would give each its own
    directory; the launcher's run id gives them one."""
    import subprocess
    import sys

    data, _ = sentiment_data(tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", "-m", "seqmodels.cli.train", *data, "trainer=ddp_cpu",
               "data.batch_size=8", "trainer.max_epochs=1", "test=false", *QUIET,
               f"paths.log_dir={tmp_path / 'logs'}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **ONE_THREAD})
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert run_dir.name.startswith("torchrun_")
    assert (run_dir / "metrics.json").is_file() and len(event_file_writers(run_dir)) == 1
    assert "started 1 more process" not in result.stdout + result.stderr  # torchrun did


@pytest.mark.slow
def test_tagger_validation_with_unseen_words_on_one_rank_only(tmp_path):
    rng = random.Random(0)
    pattern = ["DET", "ADJ", "NOUN", "VERB", "DET", "NOUN"]
    train_sentences = [([rng.choice(LEXICON[t]) for t in pattern], pattern) for _ in range(32)]
    dev = [(["the", "big", "zebra", "runs", "a", "cat"], pattern)]  # sentence 0: rank 0's shard
    dev += [([rng.choice(LEXICON[t]) for t in pattern], pattern) for _ in range(5)]
    (tmp_path / "oov").mkdir()
    files = {name: write_conllu(tmp_path / "oov" / f"{name}.conllu", sentences)
             for name, sentences in (("train", train_sentences), ("dev", dev))}
    data, _ = tagging_data(tmp_path)
    data = [o for o in data if not o.startswith(("data.train_path", "data.val_path"))]
    result = run_cli("seqmodels.cli.train", *data, f"data.train_path={files['train']}",
                     f"data.val_path={files['dev']}", "trainer=ddp_cpu", "data.batch_size=4",
                     "trainer.max_epochs=1", "test=false", *QUIET,
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/oov_acc" in json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_a_sweep_of_two_ddp_jobs_makes_exactly_two_job_directories(tmp_path):
    data, _ = sentiment_data(tmp_path)
    result = run_cli("seqmodels.cli.train", "-m", *data, "seed=1,2", "trainer=ddp_cpu",
                     "data.batch_size=8", "trainer.max_epochs=1", "test=false", *QUIET,
                     f"paths.log_dir={tmp_path / 'logs'}", cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = tmp_path / "logs" / "train"
    assert not (logs / "runs").exists()  # no rank made a run directory of its own
    sweeps = list((logs / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for number, seed in (("0", 1), ("1", 2)):
        job_dir = sweeps[0] / number
        assert OmegaConf.load(job_dir / "config_resolved.yaml").seed == seed
        assert "val/acc" in json.loads((job_dir / "metrics.json").read_text())
        assert len(event_file_writers(job_dir)) == 1
    assert (result.stdout + result.stderr).count("started 1 more process(es)") == 2


PRIVATE_LIGHTNING = re.compile(
    r"from lightning[\w.]* import [^\n]*\b_[A-Za-z]|\b(?:trainer|strategy|launcher|pl_module|"
    r"fit_loop|epoch_loop)\._[a-z]|batch_progress|_logger_connector|_fabric\b")


def test_the_one_private_lightning_name_is_still_there():
    """src/ reaches Lightning through public interfaces, but for one launcher class
    (seqmodels/training/distributed.py says why): it must still be what strategy=ddp starts
    ranks with,
    and not what ddp_spawn does."""
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    def launcher(strategy):
        return L.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False,
                         enable_checkpointing=False).strategy.launcher

    assert isinstance(launcher("ddp"), _SubprocessScriptLauncher)
    assert not isinstance(launcher("ddp_spawn"), _SubprocessScriptLauncher)
    found = [f"{path.relative_to(ROOT)}: {line.strip()}"
             for path in sorted((ROOT / "src").rglob("*.py"))
             for line in path.read_text().splitlines() if PRIVATE_LIGHTNING.search(line)]
    assert found == ["src/seqmodels/training/distributed.py: from lightning.pytorch.strategies."
                     "launchers import _SubprocessScriptLauncher"]
