"""Where the Hydra configs live and the helpers that turn config groups into objects."""

import functools
import logging
import os
import signal
import sys
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from seqmodels.console import FILE_ONLY, quiet_console
from seqmodels.errors import DataError, SeqModelsError
from seqmodels.overrides import release_held_stderr

log = logging.getLogger(__name__)

# paths.root_dir: registered on import, which every command's module does before Hydra starts.
OmegaConf.register_new_resolver("seqmodels_cwd", os.getcwd, replace=True)


def config_dir() -> str:
    """The ``configs/`` tree: packaged inside a wheel, or at the root of a source checkout."""
    packaged = Path(__file__).parent / "configs"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "configs")


def instantiate_group(group: DictConfig | None) -> list:
    """Every entry of a dict-shaped group (callbacks, loggers) that has a ``_target_``."""
    objects = []
    for name, entry in (group or {}).items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            log.info("instantiating %s <%s>", name, entry._target_, extra=FILE_ONLY)
            objects.append(build(entry))
    return objects


# The data settings that name files; a missing one is named by its key.
DATA_PATH_KEYS = ("train_path", "val_path", "test_path", "path")


def check_data_paths(data: DictConfig) -> None:
    """Every file the data settings name exists (checked once a named dataset is fetched): a
    missing one is one line naming its key and where it was looked for."""
    for key in DATA_PATH_KEYS:
        value = data.get(key)
        if value is not None and not Path(value).exists():
            where = "" if Path(value).is_absolute() else f" (looked for in {os.getcwd()})"
            raise DataError(f"data.{key}={value}: no such file{where}")


def build(cfg: DictConfig, **kwargs):
    """``hydra.utils.instantiate``, but our own errors come out as themselves, not wrapped."""
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, SeqModelsError):
            raise cause from None
        raise


def record_in_log_files(message: str, level: int = logging.ERROR,
                        logger: logging.Logger = log) -> None:
    """A record into the run's log files (``train.log``) only, not the console: an error,
    which the console gets once as the last line from ``exit_on_user_error``, or a line the
    console shows otherwise (a progress bar)."""
    record = logger.makeRecord(logger.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def exit_on_user_error(main):
    """For CLI mains: a user's mistake (bad data, impossible config) is one clear line on
    stderr and exit status 1, not a traceback; a run stopped by SIGTERM exits with 143, one
    stopped by Ctrl+C (SIGINT) with 130, as shells report them, after the one line that says
    where its checkpoint is (the safety callback's)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        release_held_stderr()  # the config is composed: stderr flows again
        if args and isinstance(args[0], DictConfig):
            quiet_console(bool(args[0].get("verbose", False)))
        try:
            return main(*args, **kwargs)
        except MissingMandatoryValue as error:  # a `???` setting the command was not given
            key = getattr(error, "full_key", None) or "a required setting"
            message = f"{key} is required: add {key}=... to the command"
            if key == "ckpt_path":
                message += " (a checkpoint, e.g. logs/train/runs/<run>/checkpoints/last.ckpt)"
            record_in_log_files(message)
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)
        except SeqModelsError as error:
            record_in_log_files(f"{type(error).__name__}: {error}")
            print(f"error: {error}", file=sys.stderr)
            from seqmodels.training.launch import in_sweep_job

            if in_sweep_job():
                raise  # Hydra records this job as failed; the sweep's other jobs run on
            sys.exit(1)
        except SIGTERMException:
            # Lightning's SIGTERM exit carries no status; a terminated run is not a success.
            sys.exit(128 + signal.SIGTERM)
        except KeyboardInterrupt:  # before or after fitting, where Lightning does not catch it
            record_in_log_files("interrupted (Ctrl+C)", logging.WARNING)
            print("interrupted (Ctrl+C)", file=sys.stderr)
            sys.exit(128 + signal.SIGINT)
        except SystemExit as exit_:
            # Lightning ends a fit stopped by Ctrl+C with sys.exit(1), raised while it handles
            # the KeyboardInterrupt (after the callbacks' on_exception: the checkpoint).
            if isinstance(exit_.__context__, KeyboardInterrupt):
                sys.exit(128 + signal.SIGINT)
            raise

    return wrapper
