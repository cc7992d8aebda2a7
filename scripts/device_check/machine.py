"""Section ``env``: what this machine has. torch, CUDA, cuDNN and the GPU; every package
seqmodels needs, its version, where it was imported from (the machine's own, or a carried
wheel under the work directory), and whether it meets pyproject.toml's requirement: the check
that ``make device-wheels`` carried exactly what was missing."""

import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, distribution

import tomllib
import torch
from common import FAIL, PASS, ROOT, Context, table
from packaging.requirements import Requirement

IMPORT_NAMES = {"hydra-core": "hydra", "antlr4-python3-runtime": "antlr4", "pyyaml": "yaml"}


def requirement_rows() -> tuple[list[list], list[str]]:
    """One row per dependency in pyproject.toml (plus antlr4, omegaconf's own): version,
    origin, requirement met; and the names of the unmet ones."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements.append(Requirement("antlr4-python3-runtime==4.9.*"))  # omegaconf 2.3's pin
    rows, unmet = [], []
    for req in requirements:
        name = req.name.lower()
        try:
            version = distribution(name).version
        except PackageNotFoundError:
            rows.append([name, str(req.specifier), "**missing**", "", "no"])
            unmet.append(name)
            continue
        try:
            module = importlib.import_module(IMPORT_NAMES.get(name, name.replace("-", "_")))
            origin = os.path.dirname(os.path.dirname(module.__file__ or "?"))
        except ImportError as error:
            origin = f"**import failed**: {error}"[:120]
            unmet.append(name)
        ok = req.specifier.contains(version, prereleases=True)
        if not ok:
            unmet.append(name)
        rows.append([name, str(req.specifier), version, origin, "yes" if ok else "**no**"])
    return rows, unmet


def env(ctx: Context):
    rows, unmet = requirement_rows()
    facts = {"python": sys.version.split()[0], "torch": torch.__version__,
             "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
             "data_dir": os.environ.get("SEQMODELS_DATA_DIR", "(the default)"),
             "unmet_requirements": unmet}
    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        facts.update(gpus=torch.cuda.device_count(), gpu=props.name,
                     capability=f"{props.major}.{props.minor}",
                     memory_gib=round(props.total_memory / 2**30, 1),
                     multiprocessors=props.multi_processor_count,
                     cudnn=torch.backends.cudnn.version(),
                     bf16=torch.cuda.is_bf16_supported())
    gpu = (f"{facts['gpus']} x {facts['gpu']}, cuDNN {facts['cudnn']}" if ctx.cuda
           else "no CUDA GPU in use")
    text = "\n".join([
        f"Python {facts['python']}, torch {torch.__version__} (CUDA {torch.version.cuda}): "
        f"{gpu}" + (f"; **requirements not met: {', '.join(unmet)}**" if unmet else ""), "",
        table(["package", "pyproject wants", "version", "imported from", "met"], rows), "",
        table(["fact", "value"], [[k, v] for k, v in facts.items()])])
    return (FAIL if unmet else PASS), text, {"packages": rows, **facts}
