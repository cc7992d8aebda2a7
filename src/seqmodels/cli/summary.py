"""``seqmodels-summary``: every weight matrix of a model under its textbook name, with its shape,
its parameter count, and the equation and counting formula of the layer it belongs to
(``seqmodels.models.anatomy``).

The model comes from a checkpoint (``ckpt_path=...``), or is built from the training config
(``experiment=...``, ``model=... model/encoder=...``) exactly as ``seqmodels-train`` builds it:
the data is set up first, because the vocabulary sizes come from the training split.
"""

import sys
from typing import TextIO

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from rich.text import Text

from seqmodels.cli.eval import load_model
from seqmodels.cli.train import build_data_and_model
from seqmodels.config import config_dir, exit_on_user_error
from seqmodels.errors import ConfigError
from seqmodels.models.anatomy import Block, describe, module_totals

FORMATS = ("text", "markdown")


# -- writing it -----------------------------------------------------------------------------------
def render_text(name: str, blocks: list[Block], totals: list, total: int, out: TextIO) -> None:
    console = Console(file=out, highlight=False, width=None if out.isatty() else 110)
    console.print(Text(f"{name}: {total:,} parameters", style="bold"))
    for block in blocks:
        console.print()
        console.print(Text(block.title, style="bold"))
        for equation in block.equations:
            console.print(Text("    " + equation))
        table = Table(show_edge=False, pad_edge=False)
        for column, justify in (("", "left"), ("torch tensor", "left"), ("shape", "right"),
                                ("parameters", "right")):
            table.add_column(column, justify=justify)
        for row in block.rows:
            table.add_row(Text(row.symbol), Text(row.tensor), Text(row.shape), f"{row.count:,}")
        console.print(table)
        console.print(Text(f"    parameters: {block.formula or f'{block.count:,}'}"))
    console.print()
    table = Table(title="per module", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("module")
    table.add_column("type")
    table.add_column("parameters", justify="right")
    for module, kind, count in totals:
        table.add_row(Text(module), Text(kind), f"{count:,}")
    table.add_row(Text("total", style="bold"), "", Text(f"{total:,}", style="bold"))
    console.print(table)


def render_markdown(name: str, blocks: list[Block], totals: list, total: int, out: TextIO) -> None:
    lines = [f"## {name}: {total:,} parameters", ""]
    for block in blocks:
        lines += [f"### {block.title}", ""]
        if block.equations:
            lines += ["```", *block.equations, "```", ""]
        lines += ["| | torch tensor | shape | parameters |", "|---|---|---:|---:|"]
        lines += [f"| {r.symbol} | `{r.tensor}` | {r.shape} | {r.count:,} |" for r in block.rows]
        lines += ["", f"parameters: {block.formula or f'{block.count:,}'}", ""]
    lines += ["### per module", "", "| module | type | parameters |", "|---|---|---:|"]
    lines += [f"| {module} | {kind} | {count:,} |" for module, kind, count in totals]
    lines += [f"| **total** | | **{total:,}** |", ""]
    out.write("\n".join(lines))


def summarize(cfg: DictConfig, out: TextIO = sys.stdout) -> int:
    """Print the summary of the configured model; return its parameter count."""
    output_format = str(cfg.get("format", "text"))
    if output_format not in FORMATS:
        raise ConfigError(f"format={output_format!r} is not one of {list(FORMATS)}")
    if cfg.get("ckpt_path"):
        model = load_model(cfg.ckpt_path, trust=cfg.get("trust_checkpoint", False))
        name = f"{type(model).__name__} from {cfg.ckpt_path}"
    else:
        _, model = build_data_and_model(cfg)
        name = type(model).__name__
    network = model.net  # the task's plain network (models/networks.py) holds every weight
    blocks = describe(network)
    total = sum(block.count for block in blocks)
    if total != sum(p.numel() for p in model.parameters()):  # describe() skipped or repeated one
        raise RuntimeError(f"summary counts {total:,} parameters, torch "
                           f"{sum(p.numel() for p in model.parameters()):,}")
    render = render_text if output_format == "text" else render_markdown
    render(name, blocks, module_totals(network, blocks), total, out)
    return total


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="summary")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    summarize(cfg)


if __name__ == "__main__":
    main()
