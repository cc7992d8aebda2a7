"""CPU benchmarks of seqmodels, written to docs/benchmarks.md with the command that made them.

    make bench                                         # every section (~15 minutes on 2 cores)
    make bench ARGS="--sections overhead,generation"   # rerun some sections; the others stay
    make bench ARGS="--quick"                          # smoke test, to /tmp; figures mean nothing

Every figure is a ratio taken inside one process: the two sides (A and B) run alternately,
several times over, on the same batches, and the median of the per-repetition ratios is
reported. The machine is shared and noisy; alternation keeps both sides under the same noise.
The whole run holds ``/tmp/seqmodels-heavy.lock`` (one heavy job at a time: two processes with
two torch threads each on two cores spin-wait into ~50x slowdowns).

Sections:
  overhead    training tokens/s of ``seqmodels.cli.train.train(cfg)`` (callbacks, rich progress bar
              and TensorBoard on) vs a plain PyTorch loop on the same model, optimizer, batches
  batching    length-bucketed vs random batches, and the framework's defaults vs a plain loop's
              naive choices: tokens/s and dev accuracy after the same epochs (SST-2, EWT)
  varlen      encoder ``variable_length=padded`` vs ``packed`` (forward + backward + step)
  optim       Adam: default (for-loop) vs foreach vs fused vs sparse embedding gradients
  threads     torch.set_num_threads(1) vs 2
  generation  characters/s: state carried vs prefix re-run (scripts/bench_generate.py loops)
  data        read + index time of each dataset, loader-only throughput, peak RSS per run
  compile     torch.compile of the sentiment model vs eager
"""

import argparse
import contextlib
import fcntl
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks import batching, compiled, data, generation, optim, overhead, threads, varlen
from benchmarks.common import (  # noqa: F401  (re-exported: tests and scripts use benchmark.X)
    ROOT,
    SHARED_DATA,
    TASKS,
    Bench,
    Settings,
    compose_config,
    order_balanced_ratio,
    ratios,
    table,
    tps,
)
from benchmarks.document import SECTIONS, block, write_document  # noqa: F401

LOCK = "/tmp/seqmodels-heavy.lock"
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"

# Each section is a module of scripts/benchmarks/ with one entry point: Bench -> markdown.
RUNNERS: dict[str, Callable[[Bench], str]] = {
    "overhead": overhead.section_overhead, "batching": batching.section_batching,
    "varlen": varlen.section_varlen, "optim": optim.section_optim,
    "threads": threads.section_threads, "compile": compiled.section_compile,
    "generation": generation.section_generation, "data": data.section_data,
}


@contextlib.contextmanager
def heavy_lock(path: str | None):
    if not path:
        yield
        return
    with open(path, "a") as handle:
        print(f"waiting for {path} ...", file=sys.stderr, flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("Sections:")[1])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, from: {', '.join(SECTIONS)}")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated, from: {', '.join(TASKS)}")
    parser.add_argument("--quick", action="store_true",
                        help="a few batches per measurement: checks that everything runs")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed repetitions per arm after a warm-up (default 3; quick 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (default: one per core)")
    parser.add_argument("--output", type=Path, default=None,
                        help="markdown file (default docs/benchmarks.md; with --quick, "
                             "a file in the temp directory)")
    parser.add_argument("--lock", default=LOCK,
                        help="lock file held for the whole run ('' to skip: when the command "
                             "is already wrapped in `flock <file>`)")
    parser.add_argument("--no-lock", dest="lock", action="store_const", const="",
                        help="same as --lock ''")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON: see child_run
    args = parser.parse_args(argv)
    for name, known in (("sections", SECTIONS), ("tasks", TASKS)):
        values = [v for v in getattr(args, name).split(",") if v]
        unknown = [v for v in values if v not in known]
        if unknown:
            parser.error(f"--{name}: unknown {unknown}; choose from {list(known)}")
        setattr(args, name, values)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.output is None:
        args.output = (Path(tempfile.gettempdir()) / "benchmarks_quick.md" if args.quick
                       else DEFAULT_OUTPUT)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "SEQMODELS_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
        os.environ["SEQMODELS_DATA_DIR"] = str(SHARED_DATA)
    if args.child:
        optim.child_run(json.loads(args.child))
        return
    command = "python scripts/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.set_num_threads(args.threads)
    with heavy_lock(args.lock), tempfile.TemporaryDirectory(prefix="seqmodels_bench_") as tmp:
        bench = Bench(Settings(args.quick, args.reps, args.threads), args.tasks, Path(tmp))
        blocks = {}
        for name in args.sections:
            print(f"\n=== {name} ===", file=sys.stderr, flush=True)
            start = time.perf_counter()
            known = set(bench.facts)
            body = RUNNERS[name](bench)
            when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            facts = {k: v for k, v in bench.facts.items() if k not in known}
            blocks[name] = block(name, body, command.strip(), when, time.perf_counter() - start,
                                 facts)
            write_document(args.output, blocks)  # after each section: a crash keeps the rest
            print(body, file=sys.stderr, flush=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
