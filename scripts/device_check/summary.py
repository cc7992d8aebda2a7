"""``$OUT/summary.md`` and ``$OUT/results.json`` from what the sections of
``scripts/device_check.sh`` left in its work directory: ``records.tsv`` (one line per section:
name, status, seconds, budget, exit code), ``results/<section>.md|json`` and ``logs/<section>.log``.
"""

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

TAIL_LINES = 15


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    if not path.is_file():
        return "(no output)"
    text = path.read_text(errors="replace").replace("\r", "\n")
    kept = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(line[:200] for line in kept) or "(no output)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mode", required=True)
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args()
    records = [line.split("\t") for line in
               (args.work / "records.tsv").read_text().splitlines() if line.strip()]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    total = sum(float(r[2]) for r in records)
    lines = [f"# Device check, {args.mode}", "",
             f"{when}, {platform.node()}, {total:.0f} s in sections. "
             "Made by `scripts/device_check.sh`.", ""]
    lines += [f"- {note}" for note in args.note] + [""]
    lines += ["| section | status | seconds (budget) | first line |", "|---|---|---|---|"]
    results, sections = {}, []
    for name, status, seconds, budget, code in records:
        fragment = args.work / "results" / f"{name}.md"
        body = fragment.read_text().strip() if fragment.is_file() else ""
        if status == "FAIL" and code in ("124", "137"):
            body = f"timed out after {budget} s\n\n{body}".strip()
        first = body.splitlines()[0] if body else ""
        first = first if len(first) < 120 else first[:117] + "..."
        lines.append(f"| {name} | {status} | {float(seconds):.0f} ({budget}) | {first} |")
        sections.append((name, status, body))
        figures = args.work / "results" / f"{name}.json"
        results[name] = {"status": status, "seconds": float(seconds), "budget": float(budget),
                         "exit": code,
                         "figures": json.loads(figures.read_text()) if figures.is_file() else {}}
    for name, status, body in sections:
        lines += ["", f"## {name}: {status}", "", body or "(the section wrote no result)", "",
                  "<details><summary>output tail</summary>", "", "```",
                  tail(args.work / "logs" / f"{name}.log"), "```", "", "</details>"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
