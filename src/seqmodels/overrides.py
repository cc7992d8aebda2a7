"""A mistyped override, said in one line that names the keys that exist nearby.

Hydra answers ``model.encoder.hiden_size=64`` with advice to write ``+model.encoder.hiden_size``,
which would add a key that nothing reads. It prints that advice while composing the config,
before our command's code runs; so the command's entry point holds back what is written to
stderr until the config is composed (``hold_composition_errors``), and in place of Hydra's
"Could not override" it says which keys are close (``did you mean model.encoder.hidden_size?``).
Everything else Hydra says is passed on as it was.
"""

import difflib
import functools
import io
import re
import sys
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

NOT_OVERRIDABLE = re.compile(r"Could not override '([^']+)'")
# Command-line flags after which the overrides are not composed the usual way.
OTHER_COMPOSITION = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")


class HeldStderr(io.TextIOBase):
    """stderr, held back until ``release()``; what was held is then written through."""

    def __init__(self, real):
        self.real = real
        self.held = io.StringIO()

    def write(self, text: str) -> int:
        return self.held.write(text)

    def flush(self) -> None:
        pass

    def release(self) -> None:
        sys.stderr = self.real
        self.real.write(self.held.getvalue())
        self.real.flush()


def release_held_stderr() -> None:
    """Called once the config is composed (the command's code starts): stderr as it was."""
    if isinstance(sys.stderr, HeldStderr):
        sys.stderr.release()


def dotted_keys(cfg, prefix: str = "") -> list[str]:
    """Every key of a config, dotted (``model.encoder.hidden_size``), without resolving."""
    keys = []
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        keys.append(name)
        if isinstance(value, dict):
            keys += dotted_keys(value, name + ".")
    return keys


def compose_without(config_name: str, overrides: list[str]) -> DictConfig | None:
    """The command's config with these overrides, less those Hydra cannot apply (other
    mistyped keys), or None when it does not compose for another reason."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from seqmodels.config import config_dir

    for _ in range(len(overrides) + 1):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir(), version_base="1.3"):
                return compose(config_name, overrides=overrides)
        except Exception as error:  # noqa: BLE001 - any other mistake: Hydra's message stands
            found = NOT_OVERRIDABLE.search(str(error))
            if not found:
                return None
            overrides = [o for o in overrides if key_of(o) != found.group(1)]
    return None


def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def nearby_keys(key: str, keys: list[str]) -> list[str]:
    """Keys spelled like ``key``: the whole dotted name close, or the same parent and a close
    last part."""
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.8)
    parent, _, last = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == parent}
    close += [siblings[name] for name in difflib.get_close_matches(last, list(siblings), n=3,
                                                                   cutoff=0.6)]
    return list(dict.fromkeys(close))[:3]


def typo_message(key: str, config_name: str, command: str, overrides: list[str]) -> str | None:
    """The line that replaces Hydra's advice for ``key``, or None to keep Hydra's."""
    cfg = compose_without(config_name, [o for o in overrides if key_of(o) != key])
    if cfg is None:
        return None
    keys = dotted_keys(OmegaConf.to_container(cfg, resolve=False))
    parent = key.rpartition(".")[0]
    while parent and parent not in keys:  # a mistyped group: modle.x -> did you mean model?
        key, parent = parent, parent.rpartition(".")[0]
    close = nearby_keys(key, keys)
    if close:
        return (f"error: {key} is not a setting of {command}; did you mean "
                f"{' or '.join(close)}?")
    siblings = sorted(k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent)
    where = (f"{parent} has: {', '.join(siblings)}" if parent and siblings
             else f"`{command} --cfg job` shows every setting")
    return f"error: {key} is not a setting of {command}; {where}"


def hold_composition_errors(config_name: str) -> Callable:
    """For a ``@hydra.main`` entry point: a mistyped override key gets one line naming the keys
    close to it instead of Hydra's advice to add it with ``+``."""

    def decorate(hydra_main: Callable) -> Callable:
        @functools.wraps(hydra_main)
        def wrapper():
            argv = sys.argv[1:]
            if any(arg.split("=")[0] in OTHER_COMPOSITION for arg in argv):
                return hydra_main()
            held = sys.stderr = HeldStderr(sys.stderr)
            try:
                return hydra_main()
            except SystemExit as exit_:
                text = held.held.getvalue()
                found = NOT_OVERRIDABLE.search(text) if sys.stderr is held else None
                line = found and typo_message(found.group(1), config_name,
                                              f"seqmodels-{config_name}",
                                              [a for a in argv if not a.startswith("-")])
                if not line:
                    raise
                held.held = io.StringIO()
                print(line, file=held.real)
                raise SystemExit(exit_.code) from None
            finally:
                if sys.stderr is held:
                    held.release()

        return wrapper

    return decorate
