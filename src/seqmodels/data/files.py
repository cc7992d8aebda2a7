"""Reading text files line by line, in any Python text encoding, with errors that name the
file, the line and the byte."""

import codecs
from collections.abc import Iterable, Iterator
from pathlib import Path

from seqmodels.errors import ConfigError, DataError

ENCODING_ERRORS = ("strict", "replace", "ignore")
DEFAULT_ENCODING = "utf-8"


def check_encoding(encoding: str, key: str = "data.encoding") -> str:
    """The encoding, checked to be one of Python's text codecs (``utf-8``, ``latin-1``,
    ``cp1252``, ``utf-16``...); ``key`` is the option named in the error."""
    try:
        known = codecs.lookup(str(encoding))._is_text_encoding
    except LookupError:
        known = False
    if not known:
        raise ConfigError(f"{key}={encoding!r} is not a Python text encoding; give one such as "
                          "utf-8, latin-1, cp1252 or utf-16 (the codecs module's list)")
    return str(encoding)


def check_encoding_errors(errors: str, key: str = "data.encoding_errors") -> str:
    if errors not in ENCODING_ERRORS:
        raise DataError(f"{key}={errors!r} is not one of {list(ENCODING_ERRORS)}")
    return errors


def decoding_error(error: UnicodeDecodeError, offset: int, encoding: str, path, line: int,
                   prefix: str = "data.") -> DataError:
    """A ``DataError`` for bytes that are not valid ``encoding`` at byte ``offset``, with the
    two ways out: the file's real encoding, or replacing what cannot be decoded."""
    bad = error.object[error.start : error.start + 1]
    byte = f" (byte {bad[0]:#04x})" if bad else ""
    shown = "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding
    return DataError(
        f"invalid {shown} at byte offset {offset}{byte}; if the file is in another encoding, "
        f"name it: {prefix}encoding=latin-1 (or cp1252, utf-16, ...); or keep "
        f"{prefix}encoding={encoding} and set {prefix}encoding_errors=replace (undecodable "
        "bytes become \ufffd)",
        path,
        line,
    )


def _decoded_prefix(encoding: str, state, raw: bytes) -> str:
    """What a decoder in ``state`` makes of ``raw`` (bytes that precede an error)."""
    decoder = codecs.getincrementaldecoder(encoding)("replace")
    decoder.setstate(state)
    return decoder.decode(raw)


def decode_lines(chunks: Iterable[bytes], name, encoding: str = DEFAULT_ENCODING,
                 errors: str = "strict", prefix: str = "data.") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of a byte stream, 1-based, without its line
    ending (``\\n`` or ``\\r\\n``), decoded incrementally: multi-byte characters split across
    chunks, a byte-order mark (``utf-8-sig``, ``utf-16``) and encodings whose newline is not
    one byte (``utf-16``) all decode as they would in one piece.

    Undecodable bytes raise a ``DataError`` naming ``name``, the line and the byte offset,
    unless ``errors`` is ``replace`` or ``ignore`` (Python's codec error handlers).
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    number, offset, pending = 0, 0, ""
    for raw in chunks:
        state = decoder.getstate()
        try:
            pending += decoder.decode(raw)
        except UnicodeDecodeError as error:
            buffered = len(error.object) - len(raw)  # undecoded bytes held from earlier chunks
            # The line: newlines before the error, in what was held and what decoded of raw.
            before = _decoded_prefix(encoding, state, raw[: max(error.start - buffered, 0)])
            line = number + 1 + (pending + before).count("\n")
            raise decoding_error(error, offset - buffered + error.start, encoding, name, line,
                                 prefix) from None
        offset += len(raw)
        *lines, pending = pending.split("\n")
        for line in lines:
            number += 1
            yield number, line.rstrip("\r")
    try:
        pending += decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:  # the stream ends inside a multi-byte character
        raise decoding_error(error, offset - len(error.object) + error.start, encoding, name,
                             number + 1, prefix) from None
    *lines, pending = pending.split("\n")
    for line in [*lines, pending] if pending else lines:
        number += 1
        yield number, line.rstrip("\r")


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


def read_lines(path: str | Path, errors: str = "strict", encoding: str = DEFAULT_ENCODING,
               prefix: str = "data.") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of a file, 1-based, without its line ending
    (see ``decode_lines``). ``prefix`` is how the options are named in errors (``data.``
    for training, empty for ``seqmodels-predict``)."""
    check_encoding_errors(errors, f"{prefix}encoding_errors")
    check_encoding(encoding, f"{prefix}encoding")
    path = existing_file(path)
    with path.open("rb") as handle:
        yield from decode_lines(handle, path, encoding, errors, prefix)
