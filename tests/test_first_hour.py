"""A user's first hour (issue 23), through the commands as a user types them: Ctrl+C, their
own CSV and JSON-lines files, config mistakes, a console that shows what matters, readable
outputs. Every command runs as a subprocess from a directory outside the repository."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from tests.conftest import ROOT

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
