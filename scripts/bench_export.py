"""Predict speed and accuracy of a checkpoint against its ONNX exports (issue 26,
docs/export.md): seqmodels-predict's own functions in one process (no start-up, no model
loading in the clock), batch 1 and batch 64. A classifier reads a ``<label> <text>`` file, a
tagger a CoNLL-U file (its UPOS column the gold tags; accuracy per token).

    python scripts/bench_export.py CKPT TEST_FILE [--threads 1] [--limit N]
"""

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from seqmodels.cli.eval import load_model
from seqmodels.cli.predict import predict as predict_checkpoint
from seqmodels.config import config_dir
from seqmodels.export.writer import export_model
from seqmodels.inference.commands import predict as predict_exported


def run(predict, ckpt, source: Path, batch: int, threads: int) -> tuple[float, list[str]]:
    """Sentences/s, and the predicted label of each sentence (or tag of each token)."""
    GlobalHydra.instance().clear()
    tagging = source.suffix == ".conllu"
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("predict", [f"ckpt_path={ckpt}", f"input={source}", "format=jsonl",
                                  f"batch_size={batch}", f"threads={threads}", "device=cpu",
                                  f"input_format={'conllu' if tagging else 'text'}"])
    out = io.StringIO()
    started = time.perf_counter()
    count = predict(cfg, out)
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    return count / seconds, ([tag for row in rows for tag in row["tags"]] if tagging
                             else [row["label"] for row in rows])


def test_data(path: Path, limit: int | None, folder: Path, model) -> tuple[Path, list[str]]:
    """The input file to predict and the gold labels (or tags, token by token)."""
    if path.suffix == ".conllu":
        blocks = path.read_text(encoding="utf-8").strip().split("\n\n")[:limit]
        source = folder / "input.conllu"
        source.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
        gold = [line.split("\t")[3] for block in blocks for line in block.splitlines()
                if line.split("\t")[0].isdigit()]
        return source, gold
    lines = path.read_text(encoding="utf-8").splitlines()[:limit]
    source = folder / "input.txt"
    source.write_text("".join(line.split(" ", 1)[1] + "\n" for line in lines), encoding="utf-8")
    names = (model.data_config or {}).get("label_names") or {}
    raw = [line.split(" ", 1)[0] for line in lines]
    return source, [names.get(int(r), names.get(r, r)) if names else r for r in raw]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ckpt")
    parser.add_argument("test_file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_export_"))
    model = load_model(args.ckpt).eval()
    source, gold = test_data(Path(args.test_file), args.limit, folder, model)
    rows = []
    for name, quantize in (("onnx", None), ("onnx-int8", "int8")):
        started = time.perf_counter()
        manifest = export_model(model, folder / name, quantize=quantize, source=args.ckpt)
        size = (folder / name / "model.onnx").stat().st_size / 1e6
        difference = manifest.get("int8_difference", manifest["float32_difference"])
        print(f"export {name}: {time.perf_counter() - started:.1f} s, model.onnx {size:.1f} MB, "
              f"max |onnxruntime - torch| {difference:.1e}")
    print(f"checkpoint file: {Path(args.ckpt).stat().st_size / 1e6:.1f} MB")
    reference = None
    for name, predict, ckpt in (("PyTorch checkpoint", predict_checkpoint, args.ckpt),
                                ("ONNX Runtime", predict_exported, folder / "onnx"),
                                ("ONNX Runtime int8", predict_exported, folder / "onnx-int8")):
        speeds = {}
        for batch in (1, 64):
            speeds[batch], labels = run(predict, ckpt, source, batch, args.threads)
        accuracy = sum(a == b for a, b in zip(labels, gold)) / len(gold)
        reference = reference or labels
        agree = sum(a == b for a, b in zip(labels, reference)) / len(gold)
        rows.append(f"| {name} | {speeds[1]:.0f} | {speeds[64]:.0f} | {100 * accuracy:.2f} | "
                    f"{100 * agree:.2f} |")
    unit = "tokens" if source.suffix == ".conllu" else "sentences"
    print(f"\n{len(gold)} {unit}, {args.threads} thread(s)\n")
    print("| model | sentences/s, batch 1 | sentences/s, batch 64 | test accuracy % | "
          f"same {'tag' if unit == 'tokens' else 'label'} as the checkpoint % |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
