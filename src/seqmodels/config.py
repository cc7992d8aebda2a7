"""Where the Hydra configs live and the helpers that turn config groups into objects."""

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


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
            log.info("instantiating %s <%s>", name, entry._target_)
            objects.append(instantiate(entry))
    return objects
