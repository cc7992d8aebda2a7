"""Section 5: characters/s of generation, state carried vs the prefix re-run
(``scripts/bench_generate.py``'s loops)."""

import time
from statistics import median

import torch

import plain_loops as pl
from benchmarks.common import (
    Bench,
    table,
    verdict,
)


# -- 5. generation -----------------------------------------------------------------------------
def section_generation(bench: Bench) -> str:
    try:
        import bench_generate as bg  # scripts/bench_generate.py (the char-LM engineer's loops)
    except ImportError as error:
        return f"## 5. Generation\n\nnot measured: scripts/bench_generate.py missing ({error})\n"
    watch = pl.CpuWatch()
    num_chars = 300 if bench.settings.quick else 2000
    reps = 1 if bench.settings.quick else 3
    model = bg.random_model()
    prompt = model.encode_prompt("\n", unknown_chars="skip")
    fast = {name: loop for name, loop in bg.LOOPS.items() if name != "rerun_prefix"}
    seconds = {(name, t): [] for name in [*fast, "model.generate"] for t in (1, 2)}
    texts = {}
    # The state-carrying loops, interleaved across loops and thread counts.
    for _ in range(reps):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name, loop in fast.items():
                ids, _, took = bg.sample(model, loop(model), prompt, num_chars, 1.0, 0)
                seconds[name, threads].append(took)
                texts[name, threads] = ids
            start = time.perf_counter()
            model.generate("\n", num_chars, 1.0, seed=0, unknown_chars="skip")
            seconds["model.generate", threads].append(time.perf_counter() - start)
    best = min((1, 2), key=lambda t: median(seconds["model.generate", t]))
    # The prefix re-run is ~100x slower: once, at the thread count where generate is fastest.
    torch.set_num_threads(best)
    reference, _, rerun = bg.sample(model, bg.Rerun(model), prompt, num_chars, 1.0, 0)
    torch.set_num_threads(bench.settings.threads)
    rows = [["rerun_prefix", best, f"{num_chars / rerun:,.0f}", "1.0x", "(reference)"]]
    for (name, threads), took in seconds.items():
        same = texts.get((name, threads))
        rows.append([name, threads, f"{num_chars / median(took):,.0f}",
                     f"{rerun / median(took):.0f}x",
                     "-" if same is None else ("yes" if same == reference else "**no**")])
    speed = num_chars / median(seconds["model.generate", best])
    vs_rerun = rerun / median(seconds["model.generate", best])
    bench.facts["generation_chars_per_s"] = speed
    bench.facts["generation_vs_rerun"] = [vs_rerun, num_chars]
    return "\n".join([
        "## 5. Generation",
        "",
        f"A 2-layer, 256-unit LSTM character model (67 characters, random weights: speed does "
        f"not depend on them), {num_chars} characters sampled at temperature 1 after the prompt "
        "`\\n`, with the loops of `scripts/bench_generate.py`. The state-carrying loops run "
        f"interleaved (loops and thread counts alternating), {reps} repetition(s), medians; "
        "`model.generate` is the production path end to end (prompt check, `make_stepper`'s "
        "fused LSTM step, sampling, decoding). `rerun_prefix` re-reads the whole text for every "
        "new character; it runs once, at the thread count where `model.generate` is fastest "
        "(its ratio is large enough that noise does not matter). \"same text\": the same seed "
        "wrote the same characters as `rerun_prefix`.",
        "",
        table(["loop", "threads", "characters/s", "vs rerun", "same text"], rows),
        "",
        f"- `model.generate`: **{speed:,.0f} characters/s** ({best} thread(s)); target >= "
        f"3,000: {verdict(speed >= 3000)}",
        f"- vs re-running the prefix for a {num_chars}-character sample: **{vs_rerun:.0f}x**; "
        f"target >= 20x: {verdict(vs_rerun >= 20)}",
        f"- other processes kept {watch.others():.2f} cores busy on average meanwhile",
        "",
    ])
