"""The device check's sections, in the order they run, with their budgets in seconds.

A GPU machine of this project is lent for 15 minutes of device time in all, its start
included, so the whole check is planned to fit in 300 s on a cold machine: the shell's setup
(installing the carried wheels, unpacking the data) and the driver's boot (imports, CUDA
init, the first cuDNN call) count too. tests/test_device_check.py checks the sums. The CPU
dry run's budgets only guard against hangs on a busy CI machine.

Plain Python, no torch: the test and ``--list`` read it without importing anything heavy.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    name: str
    module: str  # scripts/device_check/<module>.py holds ``def <name>(ctx)``
    gpu: float  # seconds on a GPU machine
    cpu: float  # seconds in the CPU dry run (a guard against hangs)
    what: str


# The shell's work before the driver starts: pip install of three small wheels, unpacking
# ~4 MB of data.
SETUP_SECONDS = 10
# Imports of torch / Lightning / Hydra / seqmodels, CUDA init and the first cuDNN call, measured
# by the driver before any section (not interruptible: an import cannot be cut short).
BOOT_SECONDS = 35
TOTAL_LIMIT = 300  # what the whole check may take on a GPU: setup + boot + sections

SECTIONS = (
    Section("env", "machine", 5, 30,
            "versions, where each package came from, pyproject's requirements met, the GPU"),
    Section("throughput", "throughput", 110, 300,
            "per task, 32-true and bf16-mixed: train(cfg) vs the strong anchor vs the plain "
            "loop; padded vs packed on the anchor"),
    Section("syncs", "checks", 25, 120,
            "host syncs per non-logging training step per task, default callbacks"),
    Section("cuda_tests", "cuda_tests", 35, 120,
            "the tests `-k cuda` selects, in this process (dry run: `-m cuda`, all skipped)"),
    Section("deterministic", "checks", 25, 120,
            "trainer.deterministic=true twice per task: bit-identical weights and metrics"),
    Section("generation", "checks", 15, 60, "the char LM's greedy text on the GPU vs the CPU"),
    Section("resume", "runs", 25, 120,
            "the default experiment, default callbacks: one epoch, resumed from last.ckpt, tested"),
    Section("ddp", "runs", 5, 30,
            "seqmodels-train trainer=ddp on every GPU (a subprocess); SKIP on one GPU"),
)

# `--full-runs`: the three default experiments to the end on one GPU (issue 22, item 7).
# max_time caps per run (seconds of training; validation inside counts, setup and test do
# not), chosen so that setup + boot + the runs with their setup and test fit TOTAL_LIMIT.
FULL_RUN_CAPS = {"sentiment": 70, "tagging": 80, "charlm": 70}
FULL_RUNS = (
    Section("full_runs", "full_runs", 250, 300,
            "experiment=sst2_bilstm, ewt_upos, shakespeare_char with trainer=gpu, to the end "
            "or their max_time cap: wall time, test figure, char LM time to val 1.47"),
)


def by_name(full_runs: bool = False) -> dict[str, Section]:
    return {s.name: s for s in (FULL_RUNS if full_runs else SECTIONS)}


def gpu_total(sections) -> float:
    """Seconds the check may take on a GPU machine: setup + boot + the sections' budgets."""
    return SETUP_SECONDS + BOOT_SECONDS + sum(s.gpu for s in sections)
