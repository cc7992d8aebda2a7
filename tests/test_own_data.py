"""A user's own data, first try: the commands a user types, run as subprocesses from a working
directory outside the repository, on a Latin-1 TSV with a `text<TAB>sentiment` header and no
test file (issue 15). Built from SST-2's real sentences where the shared data is present (its
accented names: béart, garcía, café ...), else from sentences written here."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

SST2_TRAIN = SHARED_DATA / "sst2" / "stsa.binary.train"
SHRINK = ["trainer.max_epochs=1", "debug=limit", "logger=csv", "model.embedding_dim=8",
          "model.encoder.hidden_size=8"]


def command(name: str) -> list[str]:
    """``seqmodels-<name>`` as installed beside this Python, else ``python -m``."""
    script = Path(sys.executable).parent / f"seqmodels-{name}"
    return [str(script)] if script.is_file() else [sys.executable, "-m", f"seqmodels.{name}"]


def run(name: str, *args: str, cwd: Path, stdin: bytes | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*command(name), *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, timeout=600)


def sentences() -> list[tuple[str, str]]:
    """(text, neg|pos) pairs: SST-2's first 400 training sentences (line 145 holds 'café')."""
    if SST2_TRAIN.is_file():
        pairs = []
        for line in SST2_TRAIN.read_text(encoding="utf-8").splitlines()[:400]:
            label, _, text = line.partition(" ")
            pairs.append((text, "pos" if label == "1" else "neg"))
        return pairs
    good = ["un café délicieux", "très bon", "une soirée réussie", "un accueil chaleureux"]
    bad = ["un café tiède", "très ennuyeux", "une soirée ratée", "un accueil glacé"]
    return [(f"{g} , {b} mais {g}", "pos") if i % 2 else (f"{b} , {g} mais {b}", "neg")
            for i, (g, b) in enumerate(zip(good * 50, bad * 50))]


@pytest.fixture(scope="module")
def latin1_tsv(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    pairs = sentences()
    path = tmp_path_factory.mktemp("data") / "reviews.tsv"
    path.write_bytes("".join(f"{t}\t{y}\n" for t, y in [("text", "sentiment"), *pairs])
                     .encode("latin-1"))
    with pytest.raises(UnicodeDecodeError):  # really not UTF-8: the accents are single bytes
        path.read_bytes().decode("utf-8")
    return path, pairs


def test_a_latin1_tsv_with_a_header_and_no_test_file_trains_by_config_alone(tmp_path,
                                                                           latin1_tsv):
    path, pairs = latin1_tsv
    work = tmp_path / "work"
    work.mkdir()
    result = run("train", "data=text_classification", "data.format=tsv",
                 f"data.train_path={path}", "data.encoding=latin-1",
                 "data.label_column=sentiment", "data.test_fraction=0.1", *SHRINK, cwd=work)
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output[-3000:]
    [run_dir] = (work / "logs" / "train" / "runs").iterdir()

    vocab = json.loads((run_dir / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["labels"]["itos"] == ["neg", "pos"]  # not 'sentiment' as a third class
    words = vocab["tokens"]["itos"]
    assert "café" in words
    accented = {w for w in words if any(ord(c) > 127 for c in w)}
    source_words = {w for text, _ in pairs for w in text.split()}
    assert len(accented) >= 3 and accented <= source_words  # intact, nothing mangled

    log = (run_dir / "train.log").read_text(encoding="utf-8")
    n, n_test = len(pairs), round(len(pairs) * 0.1)
    assert f"carved from {path} ({n} examples): train {n - 2 * n_test}, val {n_test}, " \
           f"test {n_test} (fixed seed)" in log
    assert "no test split" not in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0  # the end-of-training test ran

    # Prediction reads Latin-1 input by default: the checkpoint knows the training encoding.
    [best] = [p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    new = "le café est bon"
    predicted = run("predict", f"ckpt_path={best}", "input=-", "format=jsonl", "device=cpu",
                    cwd=work, stdin=f"{new}\n".encode("latin-1"))
    assert predicted.returncode == 0, predicted.stderr.decode()[-2000:]
    [row] = [json.loads(line) for line in predicted.stdout.decode().splitlines()]
    assert row["text"] == new and row["label"] in ("neg", "pos")


@pytest.mark.parametrize("overrides,message", [
    (["data.encoding=latin-2x"],
     "error: data.encoding='latin-2x' is not a Python text encoding; give one such as utf-8"),
    ([],  # the default UTF-8 on a Latin-1 file: the error names the option that fixes it
     "invalid UTF-8 at byte offset .* name it: data.encoding=latin-1"),
])
def test_encoding_mistakes_are_one_line_before_training(tmp_path, latin1_tsv, overrides,
                                                        message):
    path, _ = latin1_tsv
    result = run("train", "data=text_classification", "data.format=tsv",
                 f"data.train_path={path}", "data.label_column=sentiment", *overrides, *SHRINK,
                 cwd=tmp_path)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(message, last), last
    assert "Traceback" not in stderr and "epoch 0" not in stderr + result.stdout.decode()
