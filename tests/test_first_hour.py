"""A user's first hour (issue 23), through the commands as a user types them: Ctrl+C, their
own CSV and JSON-lines files, config mistakes, a console that shows what matters, readable
outputs. Every command runs as a subprocess from a directory outside the repository."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from tests.conftest import ROOT
from tests.tiny_datasets import write_named_datasets, write_own_files

BIN = Path(sys.executable).parent
# A small model, so that an epoch of the tiny SST-2 takes a fraction of a second.
SMALL = ["model.embedding_dim=8", "model.encoder.hidden_size=8", "data.batch_size=8"]


def command(tool: str, *args: str, cwd: Path, env: dict, timeout: int = 300,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    """``seqmodels-<tool> <args>``: the console script, in the user's directory."""
    assert ROOT not in cwd.parents
    return subprocess.run([str(BIN / f"seqmodels-{tool}"), *args], cwd=cwd,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict]:
    """One user's directory for the module (their own files as the README names them) and the
    tiny named datasets: later tests use the runs of earlier ones."""
    cwd = tmp_path_factory.mktemp("user")
    data_dir = write_named_datasets(tmp_path_factory.mktemp("data"))
    write_own_files(cwd)
    return cwd, {"SEQMODELS_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The command failed with one line on stderr (no traceback): that line."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


def run_dir_of(result: subprocess.CompletedProcess) -> Path:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Path(result.stdout.split("run directory: ")[1].split()[0])


def session_end_status(run_dir: Path) -> int:
    board = EventAccumulator(str(run_dir / "tensorboard"))
    board.Reload()
    content = board.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    end = hparams_metadata.parse_session_end_info_plugin_data(
        content[hparams_metadata.SESSION_END_INFO_TAG])
    return end.status


def test_ctrl_c_writes_last_ckpt_says_one_line_and_exits_130(user):
    """A real SIGINT to ``seqmodels-train`` with the default callbacks (the HParams tab
    among them): ``last.ckpt``, one line, the shell's Ctrl+C status, no traceback."""
    cwd, env = user
    run_dir = cwd / "interrupted"
    process = subprocess.Popen(
        [str(BIN / "seqmodels-train"), "experiment=sst2_bilstm", *SMALL,
         "trainer.max_epochs=100000", "callbacks.early_stopping.patience=100000",
         f"hydra.run.dir={run_dir}"],
        cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not last.exists():  # the first epoch is over
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.2)
    written = last.stat().st_mtime_ns
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT, output[-3000:]
    assert "Traceback" not in output and "Error" not in output, output[-3000:]
    lines = output.splitlines()
    last_epoch = max(i for i, line in enumerate(lines) if "epoch 0/" in line or " epoch " in line)
    said = [line for line in lines[last_epoch + 1:] if line.strip()]
    assert len(said) == 1 and "ckpt_path=" in said[0], said
    assert last.stat().st_mtime_ns > written
    status = session_end_status(run_dir)
    assert status not in (api_pb2.STATUS_SUCCESS, api_pb2.STATUS_RUNNING), status


# -- 2. comma-separated files and JSON lines ---------------------------------------------------
@pytest.fixture(scope="module")
def csv_run(workspace) -> Path:
    """A spreadsheet's CSV export (``id,review,label``, quoted commas, cp1252), trained on as
    the README says, with a tenth of it held out for testing."""
    cwd, env = workspace
    result = command("train", "data=text_classification", "data.train_path=my/reviews.csv",
                     "data.format=csv", "data.encoding=cp1252", "data.test_fraction=0.1",
                     *SMALL, "trainer.max_epochs=1", cwd=cwd, env=env)
    return run_dir_of(result)


def test_a_csv_file_trains_evaluates_and_predicts(workspace, csv_run):
    cwd, env = workspace
    vocab = (csv_run / "vocab.json").read_text(encoding="utf-8")
    assert '"negative"' in vocab and '"positive"' in vocab  # the label column, by its name
    assert "isn\u2019t" in vocab or "isn’t" in vocab  # cp1252's apostrophe, decoded
    evaluated = command("eval", f"ckpt_path={csv_run}/checkpoints/last.ckpt", cwd=cwd, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "test/acc" in evaluated.stdout + evaluated.stderr
    predicted = command("predict", f"ckpt_path={csv_run}/checkpoints/last.ckpt",
                        "input=my/reviews.csv", "input_format=csv", cwd=cwd, env=env)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    header, first, *rest = predicted.stdout.splitlines()
    assert header.split("\t")[:3] == ["line", "text", "label"]
    line, text, label, *probs = first.split("\t")
    assert line == "2" and text.endswith('("so" they say)') and label in ("negative", "positive")
    assert all(len(p.split(".")[1]) == 4 for p in probs), probs  # 4 decimals
    assert len(rest) == 79


def test_json_lines_train_and_verbose_shows_the_rest(workspace):
    cwd, env = workspace
    result = command("train", "-v", "data=text_classification",
                     "data.train_path=my/reviews.jsonl", "data.format=jsonl", *SMALL,
                     "trainer.max_epochs=1", "test=false", cwd=cwd, env=env)
    assert '"positive"' in (run_dir_of(result) / "vocab.json").read_text()
    assert "instantiating model <" in result.stdout + result.stderr  # -v: train.log's lines too


def test_a_csv_file_read_in_another_format_is_told_data_format_csv(workspace):
    """Named .txt and read in the default format, its first line says CSV."""
    cwd, env = workspace
    plain = cwd / "my" / "reviews_csv.txt"
    plain.write_bytes((cwd / "my" / "reviews.csv").read_bytes())
    line = one_line_error(command("train", "data=text_classification",
                                  f"data.train_path={plain.relative_to(cwd)}",
                                  "data.encoding=cp1252", cwd=cwd, env=env))
    assert "data.format=csv" in line, line


@pytest.mark.parametrize("fmt", ["label_text", "tsv"])
def test_a_csv_name_read_in_another_format_is_told_data_format_csv(workspace, fmt):
    from seqmodels.data.classification import TextClassificationDataModule
    from seqmodels.errors import DataError

    cwd, _ = workspace
    datamodule = TextClassificationDataModule(str(cwd / "my" / "reviews.csv"), format=fmt,
                                              encoding="cp1252")
    with pytest.raises(DataError, match=f"read with data.format={fmt}: .*data.format=csv"):
        datamodule.read(cwd / "my" / "reviews.csv")


# -- 3. config mistakes, each one line that says what to type ----------------------------------
def test_a_mistyped_key_is_told_the_keys_nearby(workspace):
    cwd, env = workspace
    line = one_line_error(command("train", "model.encoder.hiden_size=64", cwd=cwd, env=env))
    assert "did you mean model.encoder.hidden_size?" in line and "+" not in line, line


def test_eval_without_a_checkpoint_says_to_pass_one(workspace):
    cwd, env = workspace
    line = one_line_error(command("eval", cwd=cwd, env=env))
    assert "ckpt_path=" in line, line


def test_a_missing_data_file_is_named_by_its_key(workspace):
    cwd, env = workspace
    line = one_line_error(command("train", "data=text_classification",
                                  "data.train_path=my/nope.tsv", cwd=cwd, env=env))
    assert "data.train_path=my/nope.tsv" in line, line


def test_max_time_is_a_key_and_debug_fdr_keeps_the_chosen_accelerator(workspace):
    cwd, env = workspace
    result = command("train", "trainer=gpu", "debug=fdr", "trainer.max_time=00:00:10:00",
                     "--cfg", "job", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_time: 00:00:10:00" in result.stdout and "accelerator: gpu" in result.stdout


# -- 4. a quiet console; 5. readable outputs ----------------------------------------------------
@pytest.fixture(scope="module")
def sst2_run(workspace) -> tuple[Path, str]:
    """``seqmodels-train experiment=sst2_bilstm`` (small), its console (a pipe, not a
    terminal) with a progress line as often as possible and a validation at mid-epoch."""
    cwd, env = workspace
    result = command("train", "experiment=sst2_bilstm", *SMALL, "trainer.max_epochs=2",
                     "data.batch_size=10", "+trainer.val_check_interval=0.5",  # at 6 and 12 of 12
                     "callbacks.rich_progress_bar.line_every_s=0", cwd=cwd, env=env)
    return run_dir_of(result), result.stdout + result.stderr


def test_the_console_shows_what_a_user_needs_before_the_first_epoch(sst2_run):
    run_dir, console = sst2_run
    lines = console.splitlines()
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch 0/1"))
    before = [line for line in lines[:first_epoch] if not re.search(r"batch \d+/\d+, ", line)]
    assert [line.split(":")[0] for line in before] == [
        "run directory", "vocabulary", "data", "model", "TensorBoard"], before
    assert re.match(r"model: SentimentClassifier, [\d.]+ K parameters", before[3]), before
    for noise in ("instantiating", "Tip:", "LeafSpec", "Params", "GPU available", "Seed set"):
        assert noise not in console, noise
    assert re.search(r"^test \(best checkpoint\): test/acc 0\.\d{4}; ", console, re.MULTILINE)
    assert "DataLoader 0" not in console  # Lightning's table of 17-digit figures
    log = (run_dir / "train.log").read_text()
    for kept in ("instantiating model <", "Params", "GPU available"):
        assert kept in log, kept


def test_a_progress_line_off_a_terminal_and_the_mid_epoch_validation_marked(sst2_run):
    _, console = sst2_run
    progress = re.findall(r"^epoch 0/1: batch (\d+)/(\d+), [\d.]+ batches/s, \d+:\d\d left",
                          console, re.MULTILINE)
    assert progress and all(int(done) <= int(total) for done, total in progress), console
    total = progress[0][1]
    assert total == "12", progress
    mid = re.findall(r"^epoch (\d)/1, batch 6/12: val/acc", console, re.MULTILINE)
    ends = re.findall(r"^epoch (\d)/1: val/acc", console, re.MULTILINE)
    assert mid == ["0", "1"] and ends == ["0", "1"], console


def test_named_labels_and_four_digit_probabilities(workspace, sst2_run):
    cwd, env = workspace
    run_dir, console = sst2_run
    assert "2 labels ['negative', 'positive']" in console
    result = command("predict", f"ckpt_path={run_dir}/checkpoints/last.ckpt", "format=jsonl",
                     stdin="a gripping , funny film\n", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout)
    assert record["label"] in ("negative", "positive")
    assert sorted(record["probs"]) == ["negative", "positive"]
    assert all(round(p, 4) == p for p in record["probs"].values()), record
