"""What is written beside every run: the resolved config, the vocabularies, the code version
and the package versions, so that a result can be traced and reproduced."""

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

PACKAGES = ("seqmodels", "torch", "lightning", "hydra-core", "omegaconf", "torchmetrics",
            "tensorboard")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@rank_zero_only
def write_run_info(output_dir: str | Path, cfg: DictConfig, vocabs: dict) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (output_dir / "vocab.json").write_text(
        json.dumps({name: vocab.to_dict() for name, vocab in vocabs.items()}, ensure_ascii=False)
    )
    (output_dir / "environment.json").write_text(
        json.dumps({"git_commit": git_commit(), "packages": package_versions()}, indent=2)
    )
