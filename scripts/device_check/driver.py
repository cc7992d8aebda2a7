"""The device check's one process: ``scripts/device_check.sh`` installs the carried wheels,
unpacks the data and execs this.

It prints at once, imports torch, Lightning, Hydra and seqmodels once (timing each, then CUDA
init and the first cuDNN call: the boot), and runs the sections of ``plan.py`` as functions,
each under its own deadline: a SIGALRM timer raises ``SectionTimeout`` in the section, which
is recorded TIMEOUT with the rows it had reported, and the next section starts. summary.md and
results.json are rewritten after every section and whenever a section reports rows. Global
torch state a section may change (deterministic algorithms, cuDNN flags, the sync debug mode)
is put back after it.

    python scripts/device_check/driver.py --work DIR --out DIR [--cpu-dry-run] [--full-runs]
        [--sections a,b] [--varlen padded,packed] [--list]
"""

import argparse
import contextlib
import gc
import importlib
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for path in (HERE, ROOT):  # the sections' modules; tests/ (tiny data for the dry run)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import plan  # noqa: E402  (plain Python)
import summary  # noqa: E402

PASS, FAIL, SKIP, TIMEOUT = "PASS", "FAIL", "SKIP", "TIMEOUT"


class SectionTimeout(BaseException):
    """Raised in the main thread when a section's deadline passes. A BaseException, so that a
    section's ``except Exception`` (one failed row) does not swallow it; Lightning's trainer
    re-raises it after its own clean-up."""


def _alarm(signum, frame):
    raise SectionTimeout()


def run_section(name: str, fn, budget: float, make_ctx, update) -> dict:
    """``fn(ctx)`` under a ``budget``-second alarm; returns its record. ``update(record)`` is
    called at the start, on every ``ctx.partial`` and at the end."""
    start = time.monotonic()
    record = {"name": name, "status": "RUNNING", "seconds": 0.0, "budget": budget, "text": "",
              "figures": {}}

    def report(text: str, figures: dict) -> None:
        record.update(text=text, figures=figures, seconds=time.monotonic() - start)
        update(record)

    update(record)
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, max(budget, 0.01))
            status, text, figures = fn(make_ctx(name, start + budget, report))
            signal.setitimer(signal.ITIMER_REAL, 0)
            record.update(status=status, text=text, figures=figures)
        except SectionTimeout:
            record["status"] = TIMEOUT
            record["text"] = (f"stopped at its {budget:.0f} s deadline; what it had reported:\n\n"
                              + (record["text"] or "(nothing yet)"))
        except Exception as error:  # noqa: BLE001  (any failure is this section's FAIL)
            signal.setitimer(signal.ITIMER_REAL, 0)
            traceback.print_exc()
            record["status"] = FAIL
            record["text"] = (f"failed: {type(error).__name__}: {error}"[:400]
                              + (f"\n\nreported before:\n\n{record['text']}" if record["text"]
                                 else ""))
    except SectionTimeout:  # the alarm rang between the section's end and its disarming
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    record["seconds"] = time.monotonic() - start
    update(record)
    return record


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cpu-dry-run", action="store_true")
    parser.add_argument("--full-runs", action="store_true")
    parser.add_argument("--sections", default="")
    parser.add_argument("--varlen", default="padded,packed",
                        help="model.encoder.variable_length values the throughput section "
                             "compares on the strong anchor")
    parser.add_argument("--shell-start", type=float, default=None,
                        help="the shell's start (seconds since the epoch): setup time")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    known = plan.by_name(args.full_runs)
    args.selected = [n for n in args.sections.split(",") if n] or list(known)
    unknown = [n for n in args.selected if n not in known]
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {list(known)}")
    if not args.list and (args.work is None or args.out is None):
        parser.error("--work and --out are required")
    return args


def boot(dry_run: bool) -> dict:
    """Imports, CUDA init and the first cuDNN call, timed and printed as they happen."""
    times = {}

    def step(label: str, action) -> None:
        start = time.perf_counter()
        action()
        times[label] = time.perf_counter() - start
        print(f"device_check: {label}: {times[label]:.2f} s", flush=True)

    step("import torch", lambda: importlib.import_module("torch"))
    step("import lightning", lambda: importlib.import_module("lightning"))
    step("import hydra + omegaconf", lambda: [importlib.import_module(m) for m in
                                              ("hydra", "omegaconf")])
    step("import seqmodels", lambda: [importlib.import_module(f"seqmodels.{m}") for m in
                                      ("cli.train", "models.sentiment", "models.tagger",
                                       "models.charlm")])
    import torch

    if dry_run:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        times["CUDA init"] = "n/a (dry run)"
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("device_check: torch sees no CUDA GPU here; on a CPU use "
                             "--cpu-dry-run")
        device = torch.device("cuda")

        def cuda_init():
            torch.cuda.init()
            torch.zeros(1, device=device)
            torch.cuda.synchronize()

        step("CUDA init", cuda_init)

    def first_rnn():
        rnn = torch.nn.LSTM(8, 8, batch_first=True).to(device)
        rnn(torch.zeros(2, 3, 8, device=device))[0].sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step("first cuDNN call" if device.type == "cuda" else "first LSTM call (CPU)", first_rnn)
    return times


@contextlib.contextmanager
def isolated():
    """Put back the global torch state a section (Lightning's trainer.deterministic, the
    sync debug mode, a test) may change, and free what it left on the GPU."""
    import warnings

    import torch

    flags = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    cwd = os.getcwd()
    try:
        with warnings.catch_warnings():
            yield
    finally:
        os.chdir(cwd)
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags[2:]
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.empty_cache()


def quiet() -> None:
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")


def main(argv=None) -> int:
    started = time.monotonic()
    print(f"device_check: driver up, Python {sys.version.split()[0]} at {sys.executable}",
          flush=True)
    args = parse_args(argv)
    sections = [plan.by_name(args.full_runs)[n] for n in args.selected]
    if args.list:
        for s in sections:
            print(f"{s.name}\t{s.gpu:.0f}\t{s.cpu:.0f}\t{s.what}")
        return 0
    setup = 0.0 if args.shell_start is None else max(time.time() - args.shell_start, 0.0)
    mode = ("CPU dry run (tiny data and models; figures mean nothing)" if args.cpu_dry_run
            else "GPU") + (", full runs" if args.full_runs else "")
    meta = {"mode": mode, "notes": [*args.note, f"work directory: {args.work}"],
            "boot": {"shell setup": setup}}
    records: list[dict] = []

    def update(current: dict | None = None) -> None:
        meta["elapsed"] = setup + time.monotonic() - started
        shown = records + ([current] if current is not None and current not in records else [])
        summary.write(args.out, meta, shown)

    update()
    try:
        meta["boot"].update(boot(args.cpu_dry_run))
        from common import Context  # the sections' shared code: benchmarks/, plain_loops
    except BaseException as error:  # an import failed: say which, in the summary too
        traceback.print_exc()
        meta["notes"].append(f"**boot failed**: {type(error).__name__}: {error}"[:400])
        update()
        if not os.environ.get("KEEP_WORK"):
            shutil.rmtree(args.work, ignore_errors=True)
        return 2
    quiet()
    if args.cpu_dry_run:
        from tests.tiny_datasets import write_named_datasets

        os.environ["SEQMODELS_DATA_DIR"] = str(write_named_datasets(args.work / "data"))
    meta["notes"].append(f"data: {os.environ.get('SEQMODELS_DATA_DIR', '(the default)')}")
    update()
    options = {"varlen": [v for v in args.varlen.split(",") if v]}
    # On a GPU the whole check has plan.TOTAL_LIMIT seconds from the shell's start.
    limit = (sum(s.cpu for s in sections) if args.cpu_dry_run
             else plan.TOTAL_LIMIT - setup - (time.monotonic() - started))
    until = time.monotonic() + limit

    def make_ctx(name, deadline, report):
        return Context(name, args.work, args.cpu_dry_run, deadline, report, options)

    for section in sections:
        budget = min(section.cpu if args.cpu_dry_run else section.gpu, until - time.monotonic())
        if budget < 3:
            records.append({"name": section.name, "status": SKIP, "seconds": 0.0,
                            "budget": max(budget, 0.0), "figures": {},
                            "text": "not run: the check's time was spent"})
            update()
            continue
        print(f"== {section.name} (budget {budget:.0f} s) ...", flush=True)
        fn = getattr(importlib.import_module(section.module), section.name)
        with isolated():
            record = run_section(section.name, fn, budget, make_ctx, update)
        records.append(record)
        update()
        print(f"== {section.name}: {record['status']} in {record['seconds']:.0f} s "
              f"(budget {budget:.0f} s)\n{record['text'].strip()}\n", flush=True)
    print("device_check: " + ", ".join(f"{r['name']} {r['status']}" for r in records)
          + f"; {meta['elapsed']:.0f} s; {args.out / 'summary.md'}", flush=True)
    if not os.environ.get("KEEP_WORK"):
        shutil.rmtree(args.work, ignore_errors=True)
    return 1 if any(r["status"] in (FAIL, TIMEOUT) for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
