"""``seqmodels-compare``: the table of a sweep. Reads training runs (a multirun directory, run
directories, or glob patterns), takes each run's command-line overrides from
``.hydra/overrides.yaml`` and its final numbers from ``metrics.json``, and prints the settings
that differ between runs against the chosen metrics, as markdown or CSV.

Runs that differ only in ``seed`` are grouped: each metric shows mean ± sample standard
deviation (n - 1) over the seeds, and ``n`` counts them; ``--average-over`` names other
settings to average over the same way (the cell, say, to compare directions across cells).
``--plot`` draws one validation curve per run from its CSV log (``logger=csv``), or from its
TensorBoard events.

    seqmodels-compare logs/train/multiruns/<stamp> --metrics val/acc_best test/acc
    seqmodels-compare 'logs/train/runs/*' --csv runs.csv --plot curves.png
"""

import argparse
import csv
import glob
import io
import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf


@dataclass
class Run:
    path: Path
    name: str
    overrides: dict[str, str]  # "key=value" from the command line, values as typed
    metrics: dict[str, float]  # empty for a run that failed or has not finished


def find_runs(patterns: list[str]) -> list[Path]:
    """Run directories (those with ``metrics.json`` or ``.hydra/overrides.yaml``) at or below
    each path; patterns are expanded here too, so quoting them on the shell is fine."""
    roots = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        roots += [Path(m) for m in matches if Path(m).is_dir()]
    runs = set()
    for root in roots:
        runs |= {p.parent for p in root.rglob("metrics.json")}
        runs |= {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    # Multirun jobs are numbered 0..N-1: sort 2 before 10.
    return sorted(runs, key=lambda p: [(0, int(s), "") if s.isdigit() else (1, 0, s)
                                       for s in p.parts])


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """``+key=v``, ``++key=v`` and ``key=v`` all set ``key``; ``~key`` removes it."""
    overrides = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        if key.startswith("~"):
            overrides[key[1:]] = "(deleted)"
        else:
            overrides[key.lstrip("+")] = value
    return overrides


def load_run(path: Path, name: str) -> Run:
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = parse_overrides(OmegaConf.load(overrides_file)) if overrides_file.is_file() else {}
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return Run(path, name, overrides, metrics)


def load_runs(paths: list[Path]) -> list[Run]:
    """Runs named by their path below the deepest directory they all share."""
    paths = [p.absolute() for p in paths]
    common = Path(os.path.commonpath(paths)) if paths else None
    return [load_run(p, str(p.relative_to(common)) if p != common else p.name) for p in paths]


def swept_keys(runs: list[Run]) -> list[str]:
    """The override keys whose value is not the same in every run, in command-line order."""
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides))
    return [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]


def default_metrics(runs: list[Run]) -> list[str]:
    """Every validation and test metric that all finished runs report."""
    finished = [set(run.metrics) for run in runs if run.metrics]
    common = set.intersection(*finished) if finished else set()
    return sorted(k for k in common if k.startswith(("val/", "test/")))


@dataclass
class Row:
    settings: dict[str, str]
    runs: list[Run]

    @property
    def n(self) -> int:
        """The runs that finished: a crashed seed is not averaged."""
        return sum(1 for run in self.runs if run.metrics)

    def values(self, metric: str) -> list[float]:
        return [run.metrics[metric] for run in self.runs if metric in run.metrics]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else None


def group_runs(runs: list[Run], keys: list[str]) -> list[Row]:
    """One row per distinct setting of ``keys``, in order of first appearance."""
    rows: dict[tuple, Row] = {}
    for run in runs:
        settings = {k: run.overrides.get(k, "") for k in keys}
        rows.setdefault(tuple(settings.values()), Row(settings, [])).runs.append(run)
    return list(rows.values())


@dataclass
class Table:
    keys: list[str]       # the swept settings shown (not those averaged over)
    metrics: list[str]
    rows: list[Row]
    grouped: bool         # several runs a row: show n and mean ± std


def compare(runs: list[Run], metrics: list[str] | None = None, sort: str | None = None,
            descending: bool = True, average_over: tuple[str, ...] = ("seed",)) -> Table:
    """Rows of runs that differ only in ``average_over`` (the seed, by default) are merged."""
    keys = swept_keys(runs)
    metrics = metrics or default_metrics(runs)
    kept = [k for k in keys if k not in average_over]
    rows = group_runs(runs, kept)
    grouped = any(len(row.runs) > 1 for row in rows)
    if grouped:
        keys = kept
    else:  # nothing to average: one row per run, seed shown if it differs
        rows = group_runs(runs, keys)
    if sort:
        missing = float("-inf") if descending else float("inf")
        rows.sort(key=lambda row: row.mean(sort) if row.mean(sort) is not None else missing,
                  reverse=descending)
    return Table(keys, metrics, rows, grouped)


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _short(value: str) -> str:
    """A setting for reading: Optuna's 0.0014473854079157672 as 0.001447 (the CSV keeps it)."""
    try:
        return f"{float(value):.4g}" if len(value) > 8 and not value.isdigit() else value
    except ValueError:
        return value


def to_markdown(table: Table, digits: int = 4) -> str:
    header = [*table.keys, "n" if table.grouped else "run", *table.metrics]
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join(["---"] * (len(header) - len(table.metrics))
                              + ["---:"] * len(table.metrics)) + " |"]
    for row in table.rows:
        first = str(row.n) if table.grouped else row.runs[0].name
        cells = [*map(_short, row.settings.values()), first]
        for metric in table.metrics:
            cell = _fmt(row.mean(metric), digits)
            if row.std(metric) is not None:
                cell += f" ± {_fmt(row.std(metric), digits)}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Full precision; grouped tables get a ``<metric>_std`` column beside each mean."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if table.grouped:
        writer.writerow([*table.keys, "n",
                         *(c for m in table.metrics for c in (m, f"{m}_std"))])
        for row in table.rows:
            writer.writerow([*row.settings.values(), row.n,
                             *(v for m in table.metrics for v in (row.mean(m), row.std(m)))])
    else:
        writer.writerow([*table.keys, "run", *table.metrics])
        for row in table.rows:
            writer.writerow([*row.settings.values(), row.runs[0].name,
                             *(row.mean(m) for m in table.metrics)])
    return out.getvalue()


def read_curve(run: Path, metric: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of ``metric``: from the CSV logger's metrics.csv if the run has one,
    else from its TensorBoard event files (epochs from the ``epoch`` scalar at each step)."""
    for path in sorted(run.rglob("metrics.csv")):
        with path.open(newline="") as f:
            points = [(float(r["epoch"]), float(r[metric])) for r in csv.DictReader(f)
                      if r.get(metric) and r.get("epoch")]
        return [x for x, _ in points], [y for _, y in points]
    event_dirs = sorted({p.parent for p in run.rglob("events.out.tfevents.*")})
    if not event_dirs:
        return [], []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_dirs[0]), size_guidance={"scalars": 0}).Reload()
    tags = events.Tags()["scalars"]
    if metric not in tags:
        return [], []
    epoch_at = {e.step: e.value for e in events.Scalars("epoch")} if "epoch" in tags else {}
    points = [(epoch_at.get(e.step, e.step), e.value) for e in events.Scalars(metric)]
    return [x for x, _ in points], [y for _, y in points]


def plot_curves(table: Table, metric: str, path: Path, title: str | None = None) -> int:
    """One line per run, one colour per row of the table. Returns the number of curves."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab20" if len(table.rows) > 10 else "tab10")
    drawn = 0
    for i, row in enumerate(table.rows):
        label = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in row.settings.items())
        for j, run in enumerate(row.runs):
            xs, ys = read_curve(run.path, metric)
            if xs:
                ax.plot(xs, ys, marker=".", color=colours(i % colours.N),
                        label=(label or run.name) if j == 0 else None)
                drawn += 1
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} per run")
    ax.grid(alpha=0.3)
    if drawn:  # beside the axes: a dozen labels inside would hide the curves
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return drawn


def monitored_metric(runs: list[Run]) -> str:
    """The ``monitor`` of the first run's resolved config; val/acc when there is none."""
    for run in runs:
        config = run.path / "config_resolved.yaml"
        if config.is_file():
            return OmegaConf.load(config).get("monitor") or "val/acc"
    return "val/acc"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="seqmodels-compare",
        description="Table of the settings that differ between training runs against their "
                    "final metrics; seeds are averaged (mean ± sample std).")
    parser.add_argument("paths", nargs="+",
                        help="multirun directories, run directories or glob patterns")
    parser.add_argument("--metrics", nargs="+", metavar="KEY",
                        help="metrics.json keys to show (default: every val/ and test/ key)")
    parser.add_argument("--format", choices=["markdown", "csv"], default="markdown",
                        help="what to print (default: markdown)")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV")
    parser.add_argument("--average-over", nargs="+", default=["seed"], metavar="KEY",
                        help="settings to average over: their runs share a row (default: seed)")
    parser.add_argument("--sort", metavar="KEY", help="order rows by this metric (best first)")
    parser.add_argument("--ascending", action="store_true",
                        help="with --sort: smallest first (for losses)")
    parser.add_argument("--digits", type=int, default=4, help="decimals in markdown (default 4)")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="draw each run's validation curve into this image")
    parser.add_argument("--curve", metavar="KEY",
                        help="the metric to plot (default: the runs' `monitor`)")
    parser.add_argument("--title", help="title of the plot")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = load_runs(find_runs(args.paths))
    if not runs:
        print(f"error: no training runs found under {' '.join(args.paths)}", file=sys.stderr)
        return 1
    for run in runs:
        if not run.metrics:
            print(f"warning: {run.path} has no metrics.json (failed or still running)",
                  file=sys.stderr)
    table = compare(runs, args.metrics, args.sort, descending=not args.ascending,
                    average_over=tuple(args.average_over))
    unknown = [m for m in table.metrics if not any(row.values(m) for row in table.rows)]
    if unknown:
        print(f"warning: no run reports {', '.join(unknown)}", file=sys.stderr)
    print(to_csv(table) if args.format == "csv" else to_markdown(table, args.digits), end="")
    if args.csv:
        args.csv.write_text(to_csv(table))
        print(f"table written to {args.csv}", file=sys.stderr)
    if args.plot:
        metric = args.curve or monitored_metric(runs)
        curves = plot_curves(table, metric, args.plot, args.title)
        if not curves:
            print(f"warning: no run logged {metric}: {args.plot} is empty", file=sys.stderr)
        else:  # on stderr: stdout is the table, for a pipe
            print(f"{metric} curves of {curves} runs written to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
