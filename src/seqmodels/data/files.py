"""Reading text files line by line with errors that name the file, the line and the byte."""

from collections.abc import Iterator
from pathlib import Path

from seqmodels.errors import DataError

ENCODING_ERRORS = ("strict", "replace", "ignore")


def existing_file(path: str | Path, what: str = "data file") -> Path:
    """The path, checked to be a readable, non-empty file."""
    if path is None:
        raise DataError(f"no {what} configured")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} not found", path)
    if not path.is_file():
        raise DataError(f"{what} is a directory, expected a file", path)
    if path.stat().st_size == 0:
        raise DataError(f"{what} is empty", path)
    return path


def read_lines(path: str | Path, errors: str = "strict") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line, 1-based, without its line ending.

    Windows (``\\r\\n``) endings are accepted. Bytes that are not UTF-8 raise a ``DataError``
    naming the line and the byte offset in the file, unless ``errors`` is ``replace`` or
    ``ignore`` (Python's codec error handlers).
    """
    if errors not in ENCODING_ERRORS:
        raise DataError(f"encoding_errors={errors!r} is not one of {list(ENCODING_ERRORS)}")
    path = existing_file(path)
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8", errors=errors)
            except UnicodeDecodeError as error:
                raise DataError(
                    f"invalid UTF-8 at byte offset {offset + error.start} "
                    f"(byte {raw[error.start]:#04x}); fix the file or set "
                    "data.encoding_errors=replace",
                    path,
                    number,
                ) from None
            offset += len(raw)
            yield number, text.rstrip("\r\n")
