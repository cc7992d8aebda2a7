"""The project's own error types: what a user did wrong, said in words they can act on."""


class SeqModelsError(Exception):
    """Base class of every error that seqmodels raises on purpose."""


class DataError(SeqModelsError):
    """A data file is missing, unreadable or malformed."""

    def __init__(self, message: str, path=None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


class ConfigError(SeqModelsError):
    """A configuration value is invalid or a combination of values is impossible."""


class TrainingError(SeqModelsError):
    """Training cannot usefully go on (for example the loss is no longer a finite number)."""
