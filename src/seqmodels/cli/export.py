"""``seqmodels-export``: write a trained checkpoint as a directory that onnxruntime runs
without torch (``seqmodels.export``); seqmodels-predict and seqmodels-generate read it with
``ckpt_path=<directory>``."""

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from seqmodels.cli.eval import load_model
from seqmodels.config import config_dir, exit_on_user_error
from seqmodels.errors import ConfigError
from seqmodels.export.writer import FORMATS, QUANTIZATIONS, export_model
from seqmodels.overrides import hold_composition_errors

log = logging.getLogger(__name__)


def default_output(ckpt_path: str, quantize: str | None) -> Path:
    path = Path(ckpt_path)
    return path.with_name(f"{path.stem}-onnx" + (f"-{quantize}" if quantize else ""))


def export(cfg: DictConfig) -> Path:
    """Export ``cfg.ckpt_path``; return the directory written."""
    fmt, quantize = str(cfg.format), cfg.get("quantize")
    # Checked before the checkpoint is read: a typo costs no load.
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not one of {list(FORMATS)}")
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize={quantize!r} is not one of {list(QUANTIZATIONS)}")
    output = Path(cfg.output) if cfg.get("output") else default_output(cfg.ckpt_path, quantize)
    if output.exists():
        raise ConfigError(f"output={str(output)!r} exists; name a new directory (nothing is "
                          "overwritten)")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError("seqmodels-export needs onnx and onnxruntime: "
                          "pip install 'seqmodels[export]'") from None
    model = load_model(cfg.ckpt_path, trust=cfg.get("trust_checkpoint", False)).eval()
    manifest = export_model(model, output, fmt, cfg.opset, quantize, source=str(cfg.ckpt_path))
    size = sum(f.stat().st_size for f in output.iterdir()) / 1e6
    print(f"exported {manifest['task']} model to {output} ({size:.1f} MB, "
          f"{manifest['export_seconds']:.1f} s; onnxruntime vs PyTorch: max difference "
          f"{manifest.get('int8_difference', manifest['float32_difference']):.1e}"
          + (" after int8 quantization" if quantize else "") + ")")
    return output


@hold_composition_errors("export")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
