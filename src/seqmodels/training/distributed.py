"""One training on several processes (DDP): checks made before any process starts, how the
other ranks of a one-node run are started, and what each rank does differently.

Why we start the other ranks ourselves: Lightning's launcher re-runs the command line
(``sys.argv``) in each child. Under a Hydra sweep (``-m a=1,2``) that command is the whole
sweep, so every child would run every job, in a sweep directory of its own. Instead each child
re-runs *this job*: its own overrides, in Hydra's run mode, writing into this job's output
directory. Lightning then sees ``LOCAL_RANK`` in the environment and treats the processes as
launched externally, exactly as under ``torchrun``. When the job ends the environment, the
thread count and the process group are put back, so that the next job of a sweep starts clean.
"""

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy

# The one private Lightning name in src/: the launcher of `strategy=ddp`, which re-runs
# sys.argv in each child (see above). No public attribute tells it from ddp_spawn's launcher.
# Pinned by tests/test_distributed.py::test_the_one_private_lightning_name_is_still_there
# and by the lightning version range in pyproject.toml.
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from omegaconf import DictConfig

from seqmodels.errors import ConfigError
from seqmodels.training.precision import check_cpu_precision

log = logging.getLogger(__name__)

GPU_ACCELERATORS = ("gpu", "cuda")
# What a rank is told about the process group (as torchrun would tell it).
RANK_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE",
                  "OMP_NUM_THREADS")
# Hydra flags that choose the config, with their value; kept when a job is re-run.
CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
# Hydra settings that belong to the launching job, never passed on to its ranks.
LAUNCH_ONLY = ("hydra.run.", "hydra.sweep.", "hydra.mode", "hydra.output_subdir")


# -- checks before anything starts ------------------------------------------------------------
def check_accelerator(trainer: DictConfig) -> None:
    """Refuse a device setting this machine cannot honour, before Lightning builds anything."""
    accelerator = str(trainer.get("accelerator", "auto"))
    precision = str(trainer.get("precision", "32-true"))
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()
                                and not torch.backends.mps.is_available()):
        check_cpu_precision(precision)  # bf16 RNN kernels: probed on this CPU
    if accelerator not in GPU_ACCELERATORS:
        return
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no GPU visible"
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU, but this machine has none "
            f"({build}, torch {torch.__version__}); use trainer=cpu, or trainer=ddp_cpu for "
            "several CPU processes"
        )
    wanted = requested_devices(trainer.get("devices", 1))
    present = torch.cuda.device_count()
    if wanted is not None and wanted > present:
        raise ConfigError(f"trainer.devices={trainer.devices} asks for {wanted} GPUs, but this "
                          f"machine has {present}; use trainer.devices={present} (or -1: all)")
    if precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"trainer.precision={precision}: this GPU "
                          f"({torch.cuda.get_device_name()}) has no bfloat16 support; use "
                          "trainer.precision=16-mixed or 32-true")


def requested_devices(devices) -> int | None:
    """How many devices a ``trainer.devices`` value names; None for "all" / "auto"."""
    if isinstance(devices, int):
        return None if devices == -1 else devices
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return None
    if "," in text:  # "0,1": device indices
        return len([part for part in text.split(",") if part.strip()])
    return int(text) if text.isdigit() else None


def prepare_determinism(trainer: DictConfig) -> None:
    """``trainer.deterministic=true``: cuBLAS (used by cuDNN's RNNs) needs a fixed workspace to
    be reproducible, and the variable must be set before its first call. Lightning also
    sets it, but only once the Trainer is built; we set it before anything touches CUDA."""
    if trainer.get("deterministic"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def quiet_other_ranks(global_rank: int) -> None:
    """Console and log file get one copy of each message: ranks other than zero report only
    warnings and errors."""
    if global_rank != 0:
        logging.getLogger().setLevel(logging.WARNING)


# -- threads ----------------------------------------------------------------------------------
def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_process(processes: int, cpus: int | None = None) -> int:
    """Each of ``processes`` CPU ranks on one machine gets its share of the cores. More threads
    than cores makes OpenMP threads spin-wait for each other (README, "Scaling up", has the
    measurement)."""
    return max(1, (cpus or available_cpus()) // processes)


def thread_setting(on_cpu: bool, processes: int) -> int | None:
    """``OMP_NUM_THREADS`` for the ranks: the user's value, capped at each rank's share of the
    cores when the ranks compute on the CPU (on a GPU the CPU threads only feed it)."""
    share = threads_per_process(processes)
    asked = os.environ.get("OMP_NUM_THREADS")
    if asked is None:
        return share
    if on_cpu and asked.isdigit() and int(asked) > share:
        log.warning("OMP_NUM_THREADS=%s for each of %d CPU processes on %d cores would "
                    "oversubscribe them; using %d", asked, processes, available_cpus(), share)
        return share
    return None  # keep the user's setting


# -- starting the other ranks -----------------------------------------------------------------
def we_start_the_ranks(trainer: L.Trainer) -> bool:
    """True where Lightning would re-run the script for local ranks 1..N-1 itself."""
    strategy = trainer.strategy
    return (
        isinstance(strategy, DDPStrategy)
        and isinstance(strategy.launcher, _SubprocessScriptLauncher)
        and not strategy.cluster_environment.creates_processes_externally
        and strategy.num_processes > 1
        and hydra_job() is not None
    )


def hydra_job() -> DictConfig | None:
    """The running Hydra job's ``hydra`` config, or None outside a Hydra main (a config from
    the compose API has no run mode: there is no command to run again)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or HydraConfig.get().mode is None:
        return None
    return HydraConfig.get()


def config_flags(argv: Sequence[str]) -> list[str]:
    """The config-choosing flags of a Hydra command line (``-cn name``, ``--config-dir=x``)."""
    kept, index = [], 0
    while index < len(argv):
        arg = argv[index]
        name = arg.split("=", 1)[0]
        if name in CONFIG_FLAGS:
            takes_next = "=" not in arg and index + 1 < len(argv)
            kept += [arg, argv[index + 1]] if takes_next else [arg]
            index += 2 if takes_next else 1
        else:
            index += 1
    return kept


def hydra_quote(value: str) -> str:
    """A string as one quoted Hydra override value (spaces, commas, ``=``, quotes). Hydra reads
    a backslash literally except before a quote, so only those are doubled; ``${`` is escaped
    so that a path is never taken for an interpolation."""
    escaped = re.sub(r'(\\*)"', lambda m: m.group(1) * 2 + '\\"', value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return '"' + escaped.replace("${", "\\${") + '"'


def rank_command(job: DictConfig, argv: Sequence[str] | None = None) -> list[str]:
    """The command that runs this Hydra job once more, as one rank: the job's own overrides
    (one value each, even in a sweep), run mode, this job's output directory, and no second
    copy of ``.hydra/`` (the launching rank wrote it)."""
    import __main__

    argv = list(sys.argv if argv is None else argv)
    spec = getattr(__main__, "__spec__", None)
    program = ["-m", spec.name] if spec is not None else [os.path.abspath(argv[0])]
    own = [o for o in job.overrides.hydra
           if not o.lstrip("+~").startswith(LAUNCH_ONLY)]
    return [
        sys.executable, *program, *config_flags(argv[1:]), *job.overrides.task, *own,
        "hydra.mode=RUN",
        f"hydra.run.dir={hydra_quote(job.runtime.output_dir)}",
        "hydra.output_subdir=null",
    ]


class LocalRanks:
    """Local ranks 1..N-1 of a one-node run: started with the variables Lightning (or torchrun)
    would give them, watched while they run, and never left behind."""

    def __init__(self, trainer: L.Trainer):
        strategy = trainer.strategy
        environment = strategy.cluster_environment
        self.processes = strategy.num_processes
        world_size = self.processes * strategy.num_nodes
        shared = {
            "MASTER_ADDR": environment.main_address,
            "MASTER_PORT": str(environment.main_port),
            "NODE_RANK": str(environment.node_rank()),
            "WORLD_SIZE": str(world_size),
        }
        threads = thread_setting(isinstance(trainer.accelerator, CPUAccelerator), self.processes)
        if threads is not None:
            shared["OMP_NUM_THREADS"] = str(threads)
            torch.set_num_threads(threads)  # this process, whose OpenMP pool already exists
        job = hydra_job()
        command = rank_command(job)
        # Rank 0 is this process; with LOCAL_RANK set, Lightning starts nobody itself.
        os.environ.update(shared, LOCAL_RANK="0")
        self.children: list[subprocess.Popen] = []
        for local_rank in range(1, self.processes):
            env = {**os.environ, **shared, "LOCAL_RANK": str(local_rank)}
            self.children.append(subprocess.Popen(command, env=env, cwd=job.runtime.cwd))
        log.info("started %d more process(es) for this run (world size %d, %s threads each): %s",
                 len(self.children), world_size, threads or os.environ.get("OMP_NUM_THREADS"),
                 " ".join(command))
        self._stopping = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="seqmodels-ranks").start()

    def _watch(self) -> None:
        """A rank that dies leaves the others blocked in a collective (NCCL waits for its
        timeout): stop them all, this process included."""
        while not self._stopping.wait(1.0):
            codes = [child.poll() for child in self.children]
            failed = [(rank, code) for rank, code in enumerate(codes, 1) if code not in (None, 0)]
            if failed and not self._stopping.is_set():
                rank, code = failed[0]
                log.error("local rank %d exited with code %d: stopping the run", rank, code)
                self._kill_children()
                if not self._stopping.wait(3.0):  # time for this process to fail by itself
                    os.kill(os.getpid(), signal.SIGKILL)
                return
            if all(code == 0 for code in codes):
                return

    def _kill_children(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()

    def finish(self, timeout: float = 300.0) -> None:
        """After a run that ended well here: wait for the other ranks to end as well."""
        self._stopping.set()
        for rank, child in enumerate(self.children, 1):
            try:
                code = child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                raise RuntimeError(f"local rank {rank} was still running {timeout:.0f} s after "
                                   "rank 0 finished; stopped it") from None
            if code != 0:
                raise RuntimeError(f"local rank {rank} failed (exit code {code}); its messages "
                                   "are above")

    def abort(self) -> None:
        """After a failure here: the other ranks cannot finish alone."""
        self._stopping.set()
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                child.wait(10.0)
            except subprocess.TimeoutExpired:
                child.kill()


@contextmanager
def distributed_run(trainer: L.Trainer) -> Iterator[None]:
    """Around fit and test: start the other local ranks where Lightning would re-run the
    command line, and afterwards put the process back as it was (rank variables, threads,
    process group), so that the next job of a sweep starts from scratch."""
    saved = {name: os.environ.get(name) for name in RANK_VARIABLES}
    threads = torch.get_num_threads()
    ranks = LocalRanks(trainer) if we_start_the_ranks(trainer) else None
    try:
        yield
    except BaseException:
        if ranks is not None:
            ranks.abort()
        raise
    else:
        if ranks is not None:
            ranks.finish()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        torch.set_num_threads(threads)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
