"""The README as a test: every command of its ``bash`` blocks, run as a user types it.

Each command runs in a shell, in one fresh working directory outside the repository, in README
order (later commands use the runs of earlier ones), with no ``paths.*`` override: the named
datasets come from tiny copies reached through ``SEQMODELS_DATA_DIR`` only. What a command
needs from a user is filled in the way a user would:

- ``<run>`` is the newest single run on SST-2, ``<tagger run>`` on UD English-EWT and
  ``<charlm run>`` on Tiny Shakespeare; ``<date_time>`` is the newest sweep;
  ``epoch_<NNN>.ckpt`` is the best checkpoint that run kept.
- ``make <target>`` runs the checkout's Makefile (``make -f <repo>/Makefile``).
- A command that trains gets ``debug=limit`` appended (and an Optuna search 2 trials): the
  one override that makes it short, as a user trying the README would add.

A command that cannot run on this machine is listed in ``CANNOT_RUN`` with the reason; nothing
else is skipped, and a new README command is tested without touching this file.

The ``bash`` blocks of ``docs/*.md`` run the same way, after the README's, from the same
directory as a clone's root (``scripts/`` is there): ``export`` lines and ``NAME=value``
assignments set the environment of the commands after them (not ``SEQMODELS_DATA_DIR``: the tiny
datasets stand in for the user's copy). What they cannot run here is in ``DOCS_CANNOT_RUN``.
"""

import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT
from tests.tiny_datasets import write_named_datasets, write_own_files

README = ROOT / "README.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# (what the command contains, why it cannot run here)
CANNOT_RUN = [
    ("make test", "runs this test suite itself (CI's test command)"),
    ("pip install", "installs packages into a new environment; CI's fresh-venv install "
                    "(.ci/run, make install) is that step"),
    ("trainer=gpu", "needs a CUDA GPU"),
    ("trainer=ddp ", "needs CUDA GPUs (trainer=ddp_cpu is the CPU path, tested in "
                     "tests/test_distributed.py)"),
    ("torchrun --nnodes", "needs several machines"),
    ("srun ", "needs a SLURM cluster"),
    ("ssh -N -L", "tunnels to a remote machine (the README's gpu-box stands for the user's)"),
    ("postgresql://", "needs a PostgreSQL server (tests/test_sweeps.py starts one where it "
                      "can: test_a_search_in_postgresql)"),
]


@dataclass
class Command:
    text: str  # as the README has it, continuation lines joined
    line: int  # where it starts in README.md

    @property
    def reason_not_run(self) -> str | None:
        for marker, reason in CANNOT_RUN:
            if marker in self.text + " ":
                return reason
        return None


def readme_commands(text: str) -> list[Command]:
    """The commands of every ```bash block: comments dropped, ``\\`` continuations joined."""
    commands, block, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block:
            continue
        code = strip_comment(line).rstrip()
        if not pending:
            start = number
        if code.endswith("\\"):
            pending += code[:-1] + " "
            continue
        joined = " ".join((pending + code).split())
        pending = ""
        if joined:
            commands.append(Command(joined, start))
    return commands


def strip_comment(line: str) -> str:
    """The line without a ``#`` comment (a ``#`` outside quotes that starts a word)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))
DOCS = sorted((ROOT / "docs").glob("*.md"))
DOC_COMMANDS = [(doc, command) for doc in DOCS
                for command in readme_commands(doc.read_text(encoding="utf-8"))]
# (what the docs command contains, why it does not run here)
DOCS_CANNOT_RUN = [
    ("scripts/device_check.sh", "the GPU check (tests/test_device_check.py runs its CPU dry run)"),
    ("make device-wheels", "packs wheels and data for a GPU machine"),
    ("scripts/bench_cuda_graphs.py", "needs a CUDA GPU (CUDA graphs)"),
    ("$GRID", "a grid of 12 runs per command; tests/test_compare.py runs a real grid sweep "
              "through the same command"),
    ("/tmp/sweeps/", "reads the grid sweeps of the commands above"),
    ("scripts/bench_parallel_cells.py", "a benchmark of minutes (tests/test_parallel_cells.py "
                                        "tests what it times)"),
    ("trainer.max_time=00:00:02:45", "nine capped runs of the comparison, 3 minutes each; "
                                     "their options are tested in tests/test_parallel_cells.py"),
    ("epoch_006.ckpt", "the best checkpoint of the 8-epoch run above; tests/test_charlm.py "
                       "generates from a trained run"),
]


class Workspace:
    """The user's working directory, and what their earlier commands left in it."""

    def __init__(self, cwd: Path, data_dir: Path):
        self.cwd = cwd
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "SEQMODELS_DATA_DIR": str(data_dir),
                    "PATH": bin_dir + os.pathsep + os.environ["PATH"], "OMP_NUM_THREADS": "1",
                    "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}

    def runs(self) -> list[Path]:
        """The single runs' directories (not sweep jobs), oldest first: named by the clock."""
        return sorted(p.parent for p in self.cwd.glob("logs/train/runs/*/config_resolved.yaml"))

    def newest_run(self, data: str) -> Path:
        """The newest run on the named dataset (``data=<data>``, as its experiment sets)."""
        for run in reversed(self.runs()):
            if OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.runtime.choices.data == data:
                return run
        raise AssertionError(f"no run on {data} yet for a README placeholder")

    def newest_sweep(self) -> Path:
        return sorted((self.cwd / "logs" / "train" / "multiruns").iterdir())[-1]

    def fill_in(self, text: str) -> str:
        placeholders = {"<run>": "sst2", "<tagger run>": "ud_ewt",
                        "<charlm run>": "tinyshakespeare"}
        for placeholder, data in placeholders.items():
            if placeholder in text:
                run = self.newest_run(data)
                text = text.replace(placeholder, str(run.relative_to(self.cwd)))
        for match in re.finditer(r"([^\s=]*)/checkpoints/epoch_<NNN>\.ckpt", text):
            (best,) = (self.cwd / match.group(1) / "checkpoints").glob("epoch_*.ckpt")
            text = text.replace(match.group(0), str(best.relative_to(self.cwd)))
        if "<date_time>" in text:
            text = text.replace("<date_time>", self.newest_sweep().name)
        return text


def shortened(text: str) -> str:
    """``debug=limit`` for a command that trains; two trials for an Optuna search."""
    if text.startswith("make train"):
        if "ARGS=" in text:
            return re.sub(r'ARGS="([^"]*)"', r'ARGS="\1 debug=limit"', text)
        return text + ' ARGS="debug=limit"'
    words = shlex.split(text)
    if "seqmodels-train" not in words[0] and "seqmodels.cli.train" not in text:
        return text
    if "--cfg" in words or "debug=" in text:  # a debug config is already short
        return text
    if "hparams_search=" in text:
        text = re.sub(r"hydra\.sweeper\.n_trials=\d+", "", text) + " hydra.sweeper.n_trials=2"
    return text + " debug=limit"


def as_shell(text: str) -> str:
    return re.sub(r"^make ", f"make -f {shlex.quote(str(ROOT / 'Makefile'))} ", text)


def expected_jobs(text: str) -> int:
    """The runs a ``-m`` command makes: the product of its comma-separated choices, or the
    Optuna search's trials."""
    trials = re.search(r"hydra\.sweeper\.n_trials=(\d+)", text)
    if trials:
        return int(trials.group(1))
    choices = [len(word.split("=", 1)[1].split(",")) for word in shlex.split(text)
               if "=" in word and not word.startswith("'") and "[" not in word]
    return math.prod(choices)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    cwd = tmp_path_factory.mktemp("user")
    assert ROOT not in cwd.parents and cwd != ROOT
    data_dir = write_named_datasets(tmp_path_factory.mktemp("data"))
    write_own_files(cwd)
    return Workspace(cwd, data_dir)


def test_the_readme_has_commands_and_names_every_one_it_cannot_run():
    texts = [command.text for command in COMMANDS]
    assert any(text.startswith("make train") for text in texts)
    assert any("seqmodels-train -m" in text for text in texts)
    for marker, _ in CANNOT_RUN:  # an exception that no longer matches anything is stale
        assert any(marker in text + " " for text in texts), f"stale exception {marker!r}"


def test_every_docs_exception_still_matches_a_command():
    texts = [command.text for _, command in DOC_COMMANDS]
    for marker, _ in DOCS_CANNOT_RUN:
        assert any(marker in text for text in texts), f"stale exception {marker!r}"


def serve_until_ready(command: str, ws: Workspace, ready: str, timeout: float = 60) -> str:
    """A server command (``make tensorboard``): up and saying ``ready``, then stopped."""
    process = subprocess.Popen(command, shell=True, cwd=ws.cwd, env=ws.env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    output, deadline = b"", time.monotonic() + timeout
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline and ready.encode() not in output:
        output += process.stdout.read() or b""
        if process.poll() is not None:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
    return (output + (process.stdout.read() or b"")).decode(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_outputs(text: str, ws: Workspace, output: str) -> None:
    """What the README says a command produces is there."""
    words = shlex.split(text.split("|")[-1])
    tool = next((w for w in words if w.startswith("seqmodels-") or w == "make"), "")
    runs = re.findall(r"run directory: (\S+)", output)
    if tool == "seqmodels-train" and "--cfg" not in words or text.startswith("make train"):
        assert runs, "a training command must print its run directory"
        checkpoints = "callbacks=none" not in text and "debug=fdr" not in text
        for run in map(Path, runs):
            assert (run / "metrics.json").is_file(), run
            assert (run / "checkpoints" / "last.ckpt").is_file() or not checkpoints, run
        if "-m" in words:
            assert len(runs) == expected_jobs(text), runs
    if "--cfg" in words:
        assert "model:" in output and "data:" in output
    if tool == "seqmodels-eval":
        assert re.search(r"test/acc|test/loss", output), output[-2000:]
    redirect = re.search(r">\s*(\S+)\s*$", text)
    if tool == "seqmodels-summary" and not redirect:
        assert "total" in output.lower(), output[-2000:]
    if tool == "seqmodels-generate":
        prompt = next(w.split("=", 1)[1] for w in words if w.startswith("prompt="))
        assert output.startswith(prompt), output[:200]
    if tool == "seqmodels-compare":
        assert "|" in output or "," in output, output[-2000:]
    for flag in ("--plot", "--csv"):
        if flag in words:
            path = ws.cwd / words[words.index(flag) + 1]
            assert path.is_file(), path
            assert f"written to {words[words.index(flag) + 1]}" in output, output[-2000:]
            if flag == "--plot":
                assert path.read_bytes().startswith(PNG_MAGIC)
    for word in words:
        if word.startswith("output=") and word != "output=-":
            assert (ws.cwd / word.split("=", 1)[1]).stat().st_size > 0
    if redirect:
        assert (ws.cwd / redirect.group(1)).stat().st_size > 0


@pytest.mark.parametrize("command", COMMANDS, ids=[f"README:{c.line}" for c in COMMANDS])
def test_readme_command(command: Command, workspace: Workspace):
    if command.reason_not_run:
        pytest.skip(f"{command.text!r}: {command.reason_not_run}")
    text = shortened(workspace.fill_in(command.text))
    if text.startswith("make tensorboard"):
        output = serve_until_ready(as_shell(text), workspace, "http://")
        assert re.search(r"TensorBoard \S+ at http://", output), output[-2000:]
        return
    if text.startswith("mlflow ui"):  # on a free port: CI may have something on 5000
        output = serve_until_ready(f"{text} --port {free_port()}", workspace, "running on http")
        assert "Uvicorn running on http://127.0.0.1" in output, output[-2000:]
        return
    result = subprocess.run(as_shell(text), shell=True, cwd=workspace.cwd, env=workspace.env,
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{text}\n{output[-4000:]}"
    if "hydra/launcher=submitit" in text:  # its jobs print into submitit's log files
        output += "".join(log.read_text() for log in sorted(
            workspace.newest_sweep().glob(".submitit/*/*_log.*")))
    check_outputs(text, workspace, result.stdout if "generate" in text else output)


def set_environment(text: str, ws: Workspace) -> bool:
    """``export A=1 B=2`` or ``NAME="value"``: into the environment of later commands (the
    data directory excepted); True when the command was one of these."""
    words = shlex.split(text)
    assignments = words[1:] if words[0] == "export" else words
    if not all(re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word) for word in assignments):
        return False
    for word in assignments:
        name, value = word.split("=", 1)
        if name != "SEQMODELS_DATA_DIR":
            ws.env[name] = value
    return True


@pytest.mark.parametrize("doc,command", DOC_COMMANDS,
                         ids=[f"{d.name}:{c.line}" for d, c in DOC_COMMANDS])
def test_docs_command(doc: Path, command: Command, workspace: Workspace):
    if set_environment(command.text, workspace):
        return
    for marker, reason in CANNOT_RUN + DOCS_CANNOT_RUN:
        if marker in command.text + " ":
            pytest.skip(f"{command.text!r}: {reason}")
    if command.text in {readme.text for readme in COMMANDS}:
        pytest.skip(f"{command.text!r}: the README has this very command (test_readme_command)")
    for folder in ("scripts", "docs"):  # the directory is a clone's root
        if not (workspace.cwd / folder).exists():
            (workspace.cwd / folder).symlink_to(ROOT / folder)
    text = shortened(workspace.fill_in(command.text))
    result = subprocess.run(as_shell(text), shell=True, cwd=workspace.cwd, env=workspace.env,
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{doc.name}:{command.line}: {text}\n{output[-4000:]}"
    check_outputs(text, workspace, result.stdout if "generate" in text else output)
