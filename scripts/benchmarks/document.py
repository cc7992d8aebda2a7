"""docs/benchmarks.md itself: its header, one block per section (with the key figures as
JSON in an HTML comment), the summary of targets rebuilt from every block, and rewriting
some sections while keeping the others."""

import contextlib
import json
import os
import platform
import re
from pathlib import Path

import lightning as L
import torch

from benchmarks.common import TASKS, table, verdict
from benchmarks.overhead import overhead_runs

# The sections, in the order `make bench` runs them (full_runs: scripts/bench_full_runs.py).
SECTIONS = ("overhead", "batching", "varlen", "optim", "threads", "generation", "data",
            "compile")

# -- the document ------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"(threads: {torch.get_num_threads()}), lightning {L.__version__}, Python "
            f"{platform.python_version()}")


HEADER = """# Benchmarks (CPU)

Produced by `scripts/benchmark.py` (`make bench`, about 15 minutes); each section is a module
of `scripts/benchmarks/` (overhead.py, batching.py, varlen.py, optim.py, threads.py,
generation.py, data.py, compiled.py) and names the command that made it, and one section can
be rerun alone (`make bench ARGS="--sections generation"`) without touching the others.
Section 2b trains whole runs over several seeds (`scripts/bench_full_runs.py`, about an
hour). GPU figures (bf16, cuDNN) are in
[benchmarks_gpu.md](benchmarks_gpu.md). minGRU / minLSTM vs LSTM:
[parallel_cells.md](parallel_cells.md) (`scripts/bench_parallel_cells.py`). Reading pretrained
word vectors, first time and cached: [results.md](results.md#pretrained-word-vectors-glove-6b-50d)
(`scripts/bench_word_vectors.py`).

How to read them: this machine has 2 cores shared with other jobs, so absolute speeds drift
from minute to minute. Every comparison is therefore a ratio taken inside one run: the two
sides run alternately, several times, on the same batches, and the median of the
per-repetition ratios is reported; tokens/s figures are medians too. Each repetition also
records how busy other processes kept the CPUs meanwhile (`/proc/stat` minus this process's
own CPU time): a repetition during which they used more than 0.2 of a core is "disturbed",
left out of the figures and, where the section allows, run again; each section says how many
were. Runs hold
`/tmp/seqmodels-heavy.lock` so that no other heavy job shares the cores (two processes with 2
torch threads each on 2 cores spin-wait into ~50x slowdowns): `make bench` takes the lock
itself; `flock /tmp/seqmodels-heavy.lock python scripts/benchmark.py --no-lock` is the same.
"Tokens" are real tokens, padding not counted; for the character model, characters.

Performance settings, all in the configs (the defaults are the fastest measured here):
`data.bucketing` (length-bucketed batches, default true), `model.encoder.variable_length`
(`padded` default, `packed`), `model.optimizer.fused` (fused Adam, default true),
`data.num_workers` and `data.pin_memory` (data loading: section 6), `trainer.precision`
(`bf16-mixed` on GPUs: benchmarks_gpu.md). `torch.compile` is measured in section 7.
"""


def block(name: str, body: str, command: str, when: str, seconds: float,
          facts: dict | None = None) -> str:
    """One section of the document; its key figures ride along (for the summary) as JSON in
    an HTML comment."""
    hidden = f"<!-- facts {json.dumps(facts, sort_keys=True)} -->\n" if facts else ""
    return (f"<!-- section:{name} -->\n{body.rstrip()}\n\n"
            f"<sub>`{command}` on {when}, {seconds:.0f} s; {machine()}</sub>\n"
            f"{hidden}<!-- /section:{name} -->")


# full_runs: whole training runs (scripts/bench_full_runs.py), too long for `make bench`.
ORDER = ("summary", "overhead", "batching", "full_runs", *SECTIONS[2:])


def summary(facts: dict) -> str:
    """The issue's targets against the figures of the sections now in the document."""
    rows = []
    for key, _, label, _ in overhead_runs(TASKS):
        if f"overhead_{key}" in facts:
            ratio = facts[f"overhead_{key}"]
            rows.append([f"overhead, {label}", ">= 0.95x", f"{ratio:.3f}x",
                         verdict(ratio >= 0.95), "1"])
    for name in TASKS:
        if f"beyond_{name}" in facts:
            ratio = facts[f"beyond_{name}"]
            ours, naive, epochs = facts[f"beyond_acc_{name}"]
            where = "2"
            accuracy = f"dev {100 * ours:.2f} vs {100 * naive:.2f} after {epochs} epochs"
            if f"full_acc_{name}" in facts:  # whole runs over seeds settle it better
                test_ours, test_naive, ours, naive, seeds = facts[f"full_acc_{name}"]
                where, accuracy = "2, 2b", (
                    f"whole runs, mean of {seeds} seed(s): dev {100 * ours:.2f} vs "
                    f"{100 * naive:.2f}, test {100 * test_ours:.2f} vs {100 * test_naive:.2f}")
            rows.append([f"defaults vs naive plain loop, {TASKS[name].experiment}",
                         ">= 1.5x, accuracy >=", f"{ratio:.2f}x; {accuracy}",
                         verdict(ratio >= 1.5 and ours >= naive), where])
    if "generation_chars_per_s" in facts:
        speed = facts["generation_chars_per_s"]
        vs_rerun, num_chars = facts["generation_vs_rerun"]
        rows.append(["generation, 2x256 LSTM", ">= 3,000 chars/s", f"{speed:,.0f}",
                     verdict(speed >= 3000), "5"])
        rows.append([f"generation vs prefix re-run, {num_chars} chars", ">= 20x",
                     f"{vs_rerun:.0f}x", verdict(vs_rerun >= 20), "5"])
    for name, limit in (("tagging", 2.0), ("charlm", 1.0)):
        if f"index_{name}" in facts:
            took = facts[f"index_{name}"]
            rows.append([f"read + index {TASKS[name].dataset} train", f"< {limit:.0f} s",
                         f"{took:.2f} s", verdict(took < limit), "6"])
    for name in TASKS:
        if f"rss_{name}" in facts:
            rss = facts[f"rss_{name}"]
            rows.append([f"peak RSS, {TASKS[name].experiment}", "< 2 GB", f"{rss:,.0f} MB",
                         verdict(rss < 2048), "6"])
    if not rows:
        return ""
    return "\n".join(["## Targets (issue 6) at a glance", "",
                      table(["target", "wanted", "measured", "status", "section"], rows)])


def document_facts(text: str) -> dict:
    facts = {}
    for found in re.finditer(r"<!-- facts (.*?) -->", text):
        facts.update(json.loads(found.group(1)))
    return facts


def write_document(path: Path, blocks: dict[str, str]) -> None:
    """Replace the given sections' blocks, keep every other section as it was, and rebuild
    the summary from the figures of all of them."""
    text = path.read_text() if path.is_file() else ""
    found = _blocks(text)
    found.update(blocks)
    facts = document_facts("\n".join(found.values()))
    found.pop("summary", None)
    table_text = summary(facts)
    if table_text:
        found["summary"] = (f"<!-- section:summary -->\n{table_text}\n"
                            "<!-- /section:summary -->")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "\n" + "\n\n".join(found[n] for n in ORDER if n in found) + "\n")


def _blocks(text: str) -> dict[str, str]:
    pattern = r"<!-- section:{0} -->.*?<!-- /section:{0} -->"
    return {name: m.group(0) for name in ORDER
            if (m := re.search(pattern.format(name), text, re.S))}
