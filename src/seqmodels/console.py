"""What a training command shows on the console, and what only its log file (``train.log``)
keeps.

Before the first epoch the console says where the run is, what it reads (the data's sizes),
how big the model is and where TensorBoard looks; then one line per epoch. The rest of what
Lightning and our own modules log (the callbacks built, the hardware, the model's table, tips
and deprecation warnings from the libraries) goes to ``train.log`` only. ``verbose=true`` (or
``-v``) puts it all on the console as well.
"""

import logging
import sys

log = logging.getLogger(__name__)

# Library messages that tell a user nothing they can act on: into train.log only. Warnings
# about a user's data or settings are not here, so they still reach the console.
LIBRARY_NOISE = (
    "is deprecated",            # LeafSpec and other deprecations inside Lightning or torch
    "log_every_n_steps",        # a short epoch under debug=limit
    "`weights_only` was not set",
    "Tip:",                     # litlogger / litmodels advertising
    "does not have many workers",
)
# Our own records that the console leaves out: ``log.info(..., extra=FILE_ONLY)``.
FILE_ONLY = {"console": False}


class ConsoleFormatter(logging.Formatter):
    """The console's lines: a message alone, ``warning: ...`` / ``error: ...`` above INFO
    (``train.log`` keeps the time and the logger's name on every line)."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class ConsoleFilter(logging.Filter):
    """Our modules' records (unless marked ``FILE_ONLY``), and other libraries' warnings and
    errors that are not ``LIBRARY_NOISE``."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Ours: our modules, and the command's own (``python -m seqmodels.cli.train``: __main__)
        if record.name.split(".")[0] in ("seqmodels", "__main__"):
            return getattr(record, "console", True)
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        return not any(noise in message for noise in LIBRARY_NOISE)


def take_verbose_flag(argv: list[str]) -> list[str]:
    """``-v``/``--verbose`` on the command line -> the ``verbose=true`` override that Hydra's
    parser understands (it has no such flag)."""
    flags = {"-v", "--verbose"}
    if not flags & set(argv[1:]):
        return argv
    return [argv[0], *(a for a in argv[1:] if a not in flags), "verbose=true"]


def quiet_console(verbose: bool) -> None:
    """Route Lightning's records and Python warnings into the logging that Hydra set up (so
    ``train.log`` has them), and filter the console's handlers unless ``verbose``."""
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger, train.log
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        # Lightning gives its loggers a stderr handler of their own when imported before
        # logging is set up (our modules import it before Hydra runs); theirs bypass the file.
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            if type(handler) is logging.StreamHandler:
                library.removeHandler(handler)
        library.propagate = True
    if verbose:
        return
    for handler in logging.getLogger().handlers:
        filtered = any(isinstance(f, ConsoleFilter) for f in handler.filters)  # a sweep's jobs
        if not isinstance(handler, logging.FileHandler) and not filtered:
            handler.addFilter(ConsoleFilter())


def count(number: int) -> str:
    """12,345 -> ``12.3 K``; 4,960,000 -> ``4.96 M`` (three significant digits)."""
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if number >= size:
            return f"{number / size:.3g} {unit}"
    return str(number)


def data_sizes(datamodule) -> str | None:
    """``train 6,920, val 872 examples`` for datamodules of examples (a char LM's datamodule
    reports its characters itself)."""
    splits = getattr(datamodule, "splits", None) or {}
    if getattr(datamodule, "task", None) == "language_model" or not splits:
        return None
    return ", ".join(f"{split} {len(items):,}" for split, items in splits.items()) + " examples"


def tensorboard_dir(trainer) -> str | None:
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.log_dir
    return None


def announce_run(datamodule, model, trainer, log_dir: str) -> None:
    """The lines before the first epoch: the data's sizes, the model's size, where TensorBoard
    looks (the run directory came first)."""
    sizes = data_sizes(datamodule)
    if sizes:
        log.info("data: %s", sizes)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = f" ({count(total - trainable)} frozen)" if trainable < total else ""
    log.info("model: %s, %s parameters%s; its layers are in train.log", type(model).__name__,
             count(total), frozen)
    if tensorboard_dir(trainer):
        log.info("TensorBoard: `tensorboard --logdir %s` shows this run beside the others",
                 log_dir)


def main_with_verbose_flag(main):
    """A Hydra main that also takes ``-v``: the flag becomes ``verbose=true``."""

    def wrapper():
        sys.argv = take_verbose_flag(sys.argv)
        return main()

    wrapper.__doc__ = main.__doc__
    return wrapper
