"""``$OUT/summary.md`` and ``$OUT/results.json``, rewritten by the driver after every section
(and whenever a section reports rows), so that a run cut short still leaves both.

A record is a dict: name, status (PASS, FAIL, SKIP, TIMEOUT, or RUNNING while it runs),
seconds, budget, text (the section's markdown) and figures (its numbers, for results.json).
"""

import json
import platform
from datetime import datetime, timezone
from pathlib import Path


def first_line(text: str, width: int = 120) -> str:
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) < width else line[:width - 3] + "..."


def render(meta: dict, records: list[dict]) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    spent = sum(r["seconds"] for r in records)
    lines = [f"# Device check, {meta['mode']}", "",
             f"{when}, {platform.node()}; {spent:.0f} s in sections, "
             f"{meta.get('elapsed', 0):.0f} s since the shell started. "
             "Made by `scripts/device_check.sh`.", ""]
    lines += [f"- {note}" for note in meta.get("notes", [])]
    boot = meta.get("boot") or {}
    if boot:
        lines.append("- boot: " + "; ".join(f"{k} {v:.2f} s" if isinstance(v, float) else
                                            f"{k} {v}" for k, v in boot.items()))
    lines += ["", "| section | status | seconds (budget) | first line |", "|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['name']} | {r['status']} | {r['seconds']:.0f} ({r['budget']:.0f}) "
                     f"| {first_line(r['text'])} |")
    for r in records:
        lines += ["", f"## {r['name']}: {r['status']}", "",
                  r["text"].strip() or "(the section wrote no result)"]
    return "\n".join(lines) + "\n"


def write(out: Path, meta: dict, records: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(render(meta, records))
    results = {"mode": meta["mode"], "boot": meta.get("boot", {}), "notes": meta.get("notes", []),
               "sections": {r["name"]: {k: r[k] for k in ("status", "seconds", "budget",
                                                          "figures")} for r in records}}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=plain) + "\n")


def plain(value):
    """JSON for what figures hold besides numbers and strings: one-element tensors (metrics)
    as numbers, anything else as its text."""
    if getattr(value, "numel", None) is not None and value.numel() == 1:
        return value.item()
    return str(value)
