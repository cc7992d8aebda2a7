"""Where a training run writes, and what makes a resumed run continue exactly.

- A new run gets a new directory named by the clock (microseconds: never reused). Under
  ``torchrun`` or SLURM every process runs Hydra by itself, so the clock would give each its own
  directory: there the launcher's job id names the directory instead, shared by all processes.
- Resuming from a checkpoint that lies in a run's ``checkpoints/`` folder continues in that
  run's directory: same checkpoints, same TensorBoard run, same log file.
- What makes a resumed run continue exactly (seeds per epoch, the batches done) are callbacks:
  ``seqmodels.callbacks.resume``.

The resolvers are registered on import, before Hydra reads ``configs/hydra/train.yaml``.
"""

import os
from pathlib import Path

from omegaconf import OmegaConf

# ckpt_path values that name no file: Lightning's own keywords.
CHECKPOINT_KEYWORDS = ("last", "best", "hpc")


def checkpoint_run_dir(ckpt_path: str | None) -> Path | None:
    """The run directory that holds ``ckpt_path`` (``<run>/checkpoints/x.ckpt`` beside the
    run's recorded config), or None for any other checkpoint."""
    if not ckpt_path or str(ckpt_path) in CHECKPOINT_KEYWORDS:
        return None
    path = Path(str(ckpt_path)).expanduser().absolute()
    run = path.parent.parent
    recorded = (run / ".hydra").is_dir() or (run / "config_resolved.yaml").is_file()
    if path.is_file() and path.parent.name == "checkpoints" and recorded:
        return run
    return None


def launcher_run_id() -> str | None:
    """A name that every process of one multi-process ``torchrun`` or SLURM launch shares."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and run_id not in ("", "none"):
        return f"torchrun_{run_id}"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        step = os.environ.get("SLURM_STEP_ID")
        return f"slurm_{os.environ['SLURM_JOB_ID']}" + (f".{step}" if step else "")
    return None


def run_dir(base: str, stamp: str, ckpt_path: str | None = None) -> str:
    """``hydra.run.dir`` (and ``hydra.sweep.dir``) of a training run: the resumed run's
    directory, else ``base/<launcher id>`` under torchrun/SLURM, else ``base/<stamp>``."""
    resumed = checkpoint_run_dir(ckpt_path)
    if resumed is not None:
        return str(resumed)
    return f"{base}/{launcher_run_id() or stamp}"


def launcher_rank() -> int:
    """This process's global rank as torchrun (RANK) or SLURM (SLURM_PROCID) gave it; 0 else."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def hydra_subdir(stamp: str, ckpt_path: str | None = None) -> str | None:
    """Where Hydra records a run's config: ``.hydra``; a resumed run records its own command
    beside the original's, in ``.hydra/resumed_<stamp>``, instead of overwriting it. Under
    torchrun or SLURM only rank 0 records it (None: not at all)."""
    if launcher_rank() > 0:
        return None
    return ".hydra" if checkpoint_run_dir(ckpt_path) is None else f".hydra/resumed_{stamp}"


OmegaConf.register_new_resolver("seqmodels_run_dir", run_dir, replace=True)
OmegaConf.register_new_resolver("seqmodels_hydra_subdir", hydra_subdir, replace=True)

