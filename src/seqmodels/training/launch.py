"""Where each job of a parallel sweep computes (``hydra/launcher=parallel``).

hydra-joblib-launcher runs a sweep's jobs in worker processes, ``hydra.launcher.n_jobs`` at a
time; it knows nothing about devices. Each job settles its own device here, before its trainer
is built:

- on GPUs: job ``k`` trains on GPU ``gpus[k % len(gpus)]``, where ``gpus`` is every GPU the
  process sees (``launch.gpus=all``) or the user's list (``launch.gpus=[0,2]``). The launcher
  runs ``len(gpus) * launch.jobs_per_gpu`` jobs at a time, so with the default one job per GPU
  a grid of equal jobs keeps each GPU busy with one job at a time.
  ``trainer.devices=[i]`` is how the job is pinned: the launcher's worker processes are reused
  from job to job, and a worker's CUDA context, once made, ignores a later
  ``CUDA_VISIBLE_DEVICES``.
- on CPUs: each job gets its share of the cores as threads (``cores // jobs at a time``), the
  same rule as the ranks of ``trainer=ddp_cpu`` (``seqmodels.training.distributed``).

The resolver ``seqmodels_parallel_jobs`` (registered on import) sizes the launcher from the same
settings.
"""

import logging
from collections.abc import Sequence

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from seqmodels.errors import ConfigError
from seqmodels.training.distributed import (
    GPU_ACCELERATORS,
    available_cpus,
    requested_devices,
    thread_setting,
)

log = logging.getLogger(__name__)

JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def on_gpus(accelerator: str) -> bool:
    """Whether a job with this ``trainer.accelerator`` computes on CUDA GPUs."""
    accelerator = str(accelerator)
    return accelerator in GPU_ACCELERATORS or (accelerator == "auto"
                                               and torch.cuda.is_available())


def sweep_gpus(gpus, visible: int) -> list[int]:
    """The GPU indices a sweep's jobs share: ``all`` (every visible GPU) or the user's list."""
    if str(gpus) == "all":
        return list(range(visible))
    if isinstance(gpus, int):
        gpus = [gpus]
    if not isinstance(gpus, Sequence | ListConfig) or isinstance(gpus, str) or not gpus:
        raise ConfigError(f"launch.gpus={gpus}: give `all` or a list of GPU indices, "
                          "e.g. launch.gpus=[0,2]")
    indices = [int(index) for index in gpus]
    missing = [index for index in indices if not 0 <= index < visible]
    if missing:
        raise ConfigError(f"launch.gpus={indices}: this machine has no GPU {missing[0]} "
                          f"({visible} visible: 0..{visible - 1})")
    return indices


def job_gpu(job_num: int, gpus, visible: int) -> int:
    """The GPU of sweep job ``job_num``: job number modulo the sweep's GPUs."""
    indices = sweep_gpus(gpus, visible)
    if not indices:
        raise ConfigError("a GPU sweep on a machine with no GPU visible; use trainer=cpu")
    return indices[job_num % len(indices)]


def parallel_jobs(gpus, jobs_per_gpu: int, accelerator: str) -> int:
    """How many jobs the launcher runs at a time: ``jobs_per_gpu`` on each of the sweep's GPUs,
    or one per CPU core (a thread each)."""
    if on_gpus(accelerator):
        return max(1, len(sweep_gpus(gpus, torch.cuda.device_count()))) * int(jobs_per_gpu)
    return available_cpus()


def running_jobs() -> tuple[int, int] | None:
    """(this job's number, jobs at a time) inside a sweep run by the parallel launcher; None
    elsewhere (a single run, the basic launcher, SLURM, where each job has its own devices)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    launcher = hydra.get("launcher") or {}
    if launcher.get("_target_") != JOBLIB_LAUNCHER:
        return None
    n_jobs = int(launcher.n_jobs)
    return int(hydra.job.num), available_cpus() if n_jobs < 1 else n_jobs


def place_job(cfg: DictConfig) -> None:
    """Pin this sweep job to its GPU, or cap its CPU threads at its share of the cores."""
    jobs = running_jobs()
    if jobs is None:
        return
    job_num, at_a_time = jobs
    launch = cfg.get("launch") or {}
    trainer = cfg.trainer
    if on_gpus(trainer.get("accelerator", "auto")):
        if requested_devices(trainer.get("devices", 1)) != 1:
            raise ConfigError(f"trainer.devices={trainer.get('devices')}: a job of a parallel "
                              "sweep trains on one GPU (the launcher spreads the jobs over "
                              "launch.gpus); use trainer=gpu")
        gpu = job_gpu(job_num, launch.get("gpus", "all"), torch.cuda.device_count())
        with open_dict(trainer):
            trainer.devices = [gpu]
        log.info("sweep job %d: GPU %d (%d jobs at a time)", job_num, gpu, at_a_time)
        return
    threads = thread_setting(on_cpu=True, processes=at_a_time)
    if threads is not None:
        torch.set_num_threads(threads)
    log.info("sweep job %d: %d CPU thread(s) (%d jobs at a time on %d cores)", job_num,
             torch.get_num_threads(), at_a_time, available_cpus())


def _parallel_jobs_resolver(gpus, jobs_per_gpu, accelerator) -> int:
    if isinstance(gpus, ListConfig):
        gpus = OmegaConf.to_container(gpus)
    return parallel_jobs(gpus, jobs_per_gpu, accelerator)


OmegaConf.register_new_resolver("seqmodels_parallel_jobs", _parallel_jobs_resolver, replace=True)


def in_sweep_job() -> bool:
    """Whether this process runs a job of a ``-m`` sweep: there a user error fails the job
    (Hydra records it, the other jobs run on), instead of ending the process."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
