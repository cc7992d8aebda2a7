"""What a user sees from ``seqmodels-train`` typed in a directory of their own: the run
directory and one line per validation on a console that is not a terminal (and in
``train.log``), a one-line refusal when the model does not fit the data, and no run directory
left by a run that failed before it trained."""

import re

import pytest

from seqmodels.training.run_checks import discard_unstarted_run
from tests.conftest import run_cli

EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+): val/acc ([0-9.]+) \(best ([0-9.]+) at epoch (\d+)\)")


def runs(cwd):
    return sorted((cwd / "logs" / "train" / "runs").glob("*"))


def test_a_piped_run_prints_its_directory_and_one_line_per_validation(user):
    cwd, env = user
    result = run_cli("seqmodels.cli.train", "debug=limit", "trainer.max_epochs=3", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(cwd)
    console = result.stdout + result.stderr
    assert f"run directory: {run}" in console
    lines = EPOCH_LINE.findall(console)
    assert [(int(e), int(last)) for e, last, *_ in lines] == [(0, 2), (1, 2), (2, 2)]
    # "best so far" is the running maximum of the monitored metric, at the epoch it came from.
    values = [float(v) for _, _, v, _, _ in lines]
    for i, (_, _, _, best, at) in enumerate(lines):
        assert float(best) == max(values[: i + 1])
        assert values[int(at)] == float(best)
    assert "best checkpoint: " in console
    logged = EPOCH_LINE.findall((run / "train.log").read_text())
    assert logged == lines


def test_tagging_data_with_the_default_model_names_the_model_to_add(user):
    cwd, env = user
    result = run_cli("seqmodels.cli.train", "data=ud_ewt", cwd=cwd, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data=ud_ewt is tagging data, but model=sentiment is a classification model: "
        "add model=tagger (or start from experiment=ewt_upos)")
    assert "Traceback" not in result.stdout + result.stderr
    assert runs(cwd) == []


@pytest.mark.parametrize("overrides,message", [
    (["data.train_path=missing.txt", "data.dataset=null"], "missing.txt"),
    (["model.encoder.hidden_size=0"], "model.encoder.hidden_size"),
    (["experiment=ewt_upos", "data=conllu", "data.train_path=train.conllu"],
     "no validation file configured (data.val_path)"),
])
def test_a_run_that_fails_before_training_leaves_no_directory(user, overrides, message):
    cwd, env = user
    (cwd / "train.conllu").write_text("1\tthe\tthe\tDET\tDT\t_\t0\tdep\t_\t_\n\n")
    result = run_cli("seqmodels.cli.train", *overrides, cwd=cwd, env=env)
    assert result.returncode == 1, result.stderr[-2000:]
    assert message in result.stderr
    assert runs(cwd) == []


@pytest.mark.parametrize("extra,kept", [(None, False), ("checkpoints/last.ckpt", True),
                                         ("notes.txt", True)])
def test_only_a_directory_of_set_up_files_is_discarded(tmp_path, extra, kept):
    run = tmp_path / "run"
    for name in (".hydra/config.yaml", "train.log", "vocab.json", "tensorboard/events.x"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    if extra:
        (run / extra).parent.mkdir(parents=True, exist_ok=True)
        (run / extra).write_text("x")
    assert discard_unstarted_run(run) is not kept
    assert run.is_dir() is kept
