"""``seqmodels-generate``: continue a prompt with a trained character language model, writing
each character to stdout as soon as it is sampled."""

import sys
from typing import TextIO

import hydra
import torch
from omegaconf import DictConfig

from seqmodels.cli.eval import load_model
from seqmodels.config import config_dir, exit_on_user_error
from seqmodels.errors import ConfigError
from seqmodels.inference import commands as exported
from seqmodels.inference.bundle import is_export_dir


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when there is one; asking for a GPU that is absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not one of auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}, but torch sees no CUDA GPU; use device=cpu")
    return device


def generate_text(cfg: DictConfig, out: TextIO = sys.stdout) -> str:
    """Write the prompt, then the sampled characters one by one, to ``out``; return them."""
    if is_export_dir(cfg.ckpt_path):  # seqmodels-export's directory: run by onnxruntime
        return exported.generate(cfg, out)
    device = resolve_device(str(cfg.get("device", "auto")))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    model = load_model(cfg.ckpt_path, expected_task="language_model", map_location=device,
                       trust=cfg.get("trust_checkpoint", False))
    model.to(device)
    characters = model.stream(
        str(cfg.prompt), int(cfg.num_chars), float(cfg.temperature), cfg.get("top_k"),
        cfg.get("seed"), str(cfg.get("unknown_chars", "error"))
    )  # the prompt is checked here, before anything is written
    out.write(str(cfg.prompt))
    out.flush()
    written = []
    for char in characters:
        out.write(char)
        out.flush()
        written.append(char)
    out.write("\n")
    out.flush()
    return "".join(written)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="generate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    generate_text(cfg)


if __name__ == "__main__":
    main()
