"""Sweeps and their tables: ``seqmodels-compare`` on run directories written here by hand (the
numbers are known), on a real two-job grid sweep, and the Optuna search configs."""

import csv
import io
import json
import random
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from seqmodels.cli.compare import (
    compare,
    find_runs,
    load_runs,
    main,
    plot_curves,
    read_curve,
    to_markdown,
)
from seqmodels.config import config_dir
from tests.conftest import compose_config, run_cli, write_lines

CONFIGS = Path(config_dir())
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(path: Path, overrides: list[str], metrics: dict | None,
             curve: list[float] = ()) -> Path:
    """What seqmodels-train leaves behind, reduced to what compare reads."""
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), path / ".hydra" / "overrides.yaml")
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if curve:  # the CSV logger's layout: train rows without val values, one val row an epoch
        rows = ["epoch,step,train/loss,val/acc"]
        for epoch, value in enumerate(curve):
            rows += [f"{epoch},{10 * epoch + 5},0.5,", f"{epoch},{10 * epoch + 9},,{value}"]
        write_lines(path / "csv" / "metrics.csv", rows)
    return path


# (cell, seed) -> val/acc_best, test/acc
RESULTS = {("rnn", 1): (0.70, 0.69), ("rnn", 2): (0.74, 0.71), ("rnn", 3): (0.72, 0.70),
           ("lstm", 1): (0.80, 0.81), ("lstm", 2): (0.82, 0.80), ("lstm", 3): (0.81, 0.79)}


@pytest.fixture
def seed_sweep(tmp_path) -> Path:
    """A multirun of 2 cells x 3 seeds, with an unswept override shared by every job."""
    sweep = tmp_path / "multiruns" / "2024-01-01_00-00-00_000000"
    for job, ((cell, seed), (val, test)) in enumerate(RESULTS.items()):
        fake_run(sweep / str(job),
                 ["experiment=sst2_bilstm", f"model.encoder.cell={cell}", f"seed={seed}"],
                 {"val/acc_best": val, "test/acc": test, "train/loss": 0.1},
                 curve=[val - 0.05, val])
    return sweep


def test_seeds_are_averaged_per_setting(seed_sweep):
    table = compare(load_runs(find_runs([str(seed_sweep)])))
    assert table.grouped and table.keys == ["model.encoder.cell"]
    assert table.metrics == ["test/acc", "val/acc_best"]  # val/ and test/ only, not train/
    rnn, lstm = table.rows
    assert rnn.settings == {"model.encoder.cell": "rnn"} and len(rnn.runs) == 3
    # By hand: rnn val 0.70 0.74 0.72 -> mean 0.72, sample std sqrt((4e-4 + 4e-4) / 2) = 0.02.
    assert rnn.mean("val/acc_best") == pytest.approx(0.72)
    assert rnn.std("val/acc_best") == pytest.approx(0.02)
    assert lstm.mean("test/acc") == pytest.approx(0.80)
    assert lstm.std("test/acc") == pytest.approx(0.01)

    markdown = to_markdown(table)
    assert markdown.splitlines()[0] == "| model.encoder.cell | n | test/acc | val/acc_best |"
    assert "| rnn | 3 | 0.7000 ± 0.0100 | 0.7200 ± 0.0200 |" in markdown
    assert "| lstm | 3 | 0.8000 ± 0.0100 | 0.8100 ± 0.0100 |" in markdown
    assert "experiment" not in markdown and "seed" not in markdown


def test_csv_has_full_precision_means_and_stds(seed_sweep, tmp_path):
    out = tmp_path / "table.csv"
    assert main([str(seed_sweep), "--csv", str(out), "--metrics", "val/acc_best"]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["model.encoder.cell", "n", "val/acc_best", "val/acc_best_std"]
    lstm = rows[1]
    assert lstm["model.encoder.cell"] == "lstm" and lstm["n"] == "3"
    assert float(lstm["val/acc_best"]) == pytest.approx(statistics.fmean([0.80, 0.82, 0.81]))
    assert float(lstm["val/acc_best_std"]) == pytest.approx(0.01)


def test_average_over_other_settings(seed_sweep, capsys):
    assert main([str(seed_sweep), "--average-over", "seed", "model.encoder.cell",
                 "--metrics", "test/acc", "--digits", "3"]) == 0
    # By hand: the six test accuracies average 0.75; sample std sqrt(0.0154 / 5) = 0.0555.
    assert capsys.readouterr().out.splitlines()[2] == "| 6 | 0.750 ± 0.055 |"


def test_without_a_seed_sweep_every_run_is_a_row(tmp_path, capsys):
    for job, (cell, layers) in enumerate([("gru", 1), ("gru", 2), ("lstm", 1)]):
        fake_run(tmp_path / "sweep" / str(job),
                 ["logger=csv", f"model.encoder.cell={cell}", f"model.encoder.num_layers={layers}"],
                 {"val/acc": 0.5 + job / 10})
    assert main([str(tmp_path / "sweep"), "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["model.encoder.cell", "model.encoder.num_layers", "run", "val/acc"],
                    ["gru", "1", "0", "0.5"], ["gru", "2", "1", "0.6"], ["lstm", "1", "2", "0.7"]]


def test_sort_globs_and_unfinished_runs(tmp_path, capsys):
    for name, lr, acc in [("a", "0.0014473854079157672", 0.8), ("b", "0.01", 0.9)]:
        fake_run(tmp_path / "runs" / name, [f"model.optimizer.lr={lr}"], {"val/acc": acc})
    fake_run(tmp_path / "runs" / "c", ["model.optimizer.lr=0.1"], None)  # crashed
    assert main([str(tmp_path / "runs" / "*"), "--sort", "val/acc"]) == 0
    out, err = capsys.readouterr()
    assert [line.split(" | ")[1] for line in out.splitlines()[2:]] == ["b", "a", "c"]
    assert "| 0.001447 | a | 0.8000 |" in out  # an Optuna-sampled value, shortened to read
    assert "runs/c has no metrics.json" in err


def test_a_crashed_seed_is_left_out_of_the_mean_and_the_count(tmp_path):
    for seed, metrics in [(1, {"val/acc": 0.6}), (2, {"val/acc": 0.8}), (3, None)]:
        fake_run(tmp_path / str(seed), ["model.encoder.cell=gru", f"seed={seed}"], metrics)
    markdown = to_markdown(compare(load_runs(find_runs([str(tmp_path)]))))
    # By hand: mean 0.7, sample std sqrt(2 * 0.1**2 / 1) = 0.1414.
    assert markdown.splitlines()[2] == "| 2 | 0.7000 ± 0.1414 |"


def test_no_runs_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no training runs found" in capsys.readouterr().err


def test_plot_draws_one_curve_per_run(seed_sweep, tmp_path):
    runs = load_runs(find_runs([str(seed_sweep)]))
    assert read_curve(runs[0].path, "val/acc") == ([0.0, 1.0], [pytest.approx(0.65), 0.70])
    png = tmp_path / "img" / "curves.png"
    assert plot_curves(compare(runs), "val/acc", png) == 6
    assert png.read_bytes().startswith(PNG_MAGIC)


def tiny_sentiment_data(tmp_path: Path) -> list[str]:
    rng = random.Random(0)
    words = {"1": ["good", "fun", "great"], "0": ["bad", "dull", "awful"]}
    lines = [f"{label} " + " ".join(rng.choices(words[label] + ["film", "plot"], k=4))
             for label in rng.choices("01", k=48)]
    train = write_lines(tmp_path / "data" / "train.txt", lines)
    return ["data=text_classification", f"data.train_path={train}", f"data.val_path={train}",
            "data.batch_size=8", "model.embedding_dim=8", "model.encoder.hidden_size=8",
            "callbacks.rich_progress_bar=null", "callbacks.model_summary=null", "test=false"]


def test_a_real_grid_sweep_lands_in_multiruns_and_reads_back(tmp_path):
    result = run_cli("seqmodels.cli.train", "-m", *tiny_sentiment_data(tmp_path),
                     "trainer.max_epochs=2", "model/encoder=rnn,gru", cwd=tmp_path,
                     env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    # runs.py: logs/train/multiruns/<date_time_microseconds>/<job number>
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    cells = [OmegaConf.load(sweep / job / "config_resolved.yaml").model.encoder.cell
             for job in ("0", "1")]
    assert cells == ["rnn", "gru"]

    table = compare(load_runs(find_runs([str(sweep)])), ["val/acc_best", "val/loss"])
    assert table.keys == ["model/encoder"] and not table.grouped
    assert [row.settings["model/encoder"] for row in table.rows] == ["rnn", "gru"]
    for row, job in zip(table.rows, ["0", "1"]):
        recorded = json.loads((sweep / job / "metrics.json").read_text())
        assert row.mean("val/loss") == pytest.approx(recorded["val/loss"])
    # The default logger is TensorBoard: the curves come from its event files.
    epochs, values = read_curve(sweep / "1", "val/acc")
    assert epochs == [0, 1] and len(values) == 2
    png = tmp_path / "curves.png"
    assert plot_curves(table, "val/acc", png) == 2
    assert png.read_bytes().startswith(PNG_MAGIC)


SEARCHES = [("sst2_bilstm", "sst2_optuna"), ("ewt_upos", "ewt_optuna"),
            ("shakespeare_char", "charlm_optuna")]


@pytest.mark.parametrize("experiment,search", SEARCHES)
def test_every_search_space_names_existing_keys(tmp_path, experiment, search):
    cfg = compose_config(tmp_path, [f"experiment={experiment}", f"hparams_search={search}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == {"max": "maximize", "min": "minimize"}[cfg.monitor_mode]
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key


def test_an_optuna_search_runs_its_trials_and_reports_the_best(tmp_path):
    result = run_cli("seqmodels.cli.train", *tiny_sentiment_data(tmp_path),
                     "hparams_search=sst2_optuna", "hydra.sweeper.n_trials=2",
                     "trainer.max_epochs=3", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    # No paths.* or hydra.sweep.dir override: the sweep lands where a user's would.
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    # The objective is each trial's best epoch (val/acc_best), not its last.
    values = [json.loads((sweep / job / "metrics.json").read_text())["val/acc_best"]
              for job in ("0", "1")]
    assert best.best_value == pytest.approx(max(values))
    # A value fixed on the command line (hidden_size=8 of the tiny data) is not searched.
    space = OmegaConf.load(CONFIGS / "hparams_search" / "sst2_optuna.yaml").hydra.sweeper.params
    searched = set(space)
    assert set(best.best_params) == searched - {"model.encoder.hidden_size"}
