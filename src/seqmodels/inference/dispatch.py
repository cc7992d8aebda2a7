"""The ``seqmodels-predict`` and ``seqmodels-generate`` console scripts: with
``ckpt_path=<a directory seqmodels-export wrote>`` they run it with onnxruntime
(``commands.py``) and never import torch or Lightning; with a checkpoint, the torch commands
(``seqmodels.cli.predict`` / ``generate``) as before. Decided from the command line before
anything heavy is imported."""

import os
import sys

import hydra
from omegaconf import DictConfig

from seqmodels.inference import commands
from seqmodels.inference.bundle import is_export_dir
from seqmodels.overrides import hold_composition_errors


def exported_dir(argv: list[str]) -> str | None:
    """The exported directory that the command line's (last) ``ckpt_path=`` names, if any."""
    for arg in reversed(argv):
        if arg.startswith("ckpt_path="):
            value = arg.split("=", 1)[1].strip("'\"")
            return value if is_export_dir(value) else None
    return None


@hold_composition_errors("predict")
@hydra.main(version_base="1.3", config_path=commands.config_dir(), config_name="predict")
@commands.one_line_errors
def _predict_exported(cfg: DictConfig) -> None:
    try:
        commands.predict(cfg)
    except BrokenPipeError:  # ``| head``: stop quietly, without a traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


@hold_composition_errors("generate")
@hydra.main(version_base="1.3", config_path=commands.config_dir(), config_name="generate")
@commands.one_line_errors
def _generate_exported(cfg: DictConfig) -> None:
    commands.generate(cfg)


def predict_main() -> None:
    if exported_dir(sys.argv[1:]):
        return _predict_exported()
    from seqmodels.cli.predict import main

    return main()


def generate_main() -> None:
    if exported_dir(sys.argv[1:]):
        return _generate_exported()
    from seqmodels.cli.generate import main

    return main()
