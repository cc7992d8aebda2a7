"""The GPU check, end to end on the CPU: ``scripts/device_check.sh --cpu-dry-run`` runs every
section in one process at tiny sizes, so that the one short call a GPU machine gets is not
spent on a broken script; its budgets fit that call; a section that overruns its deadline is
cut short, keeps its rows, and the next one runs."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.sh"
sys.path.insert(0, str(ROOT / "scripts" / "device_check"))
import driver  # noqa: E402  (plan and summary only: no torch at import)
import plan  # noqa: E402
import summary  # noqa: E402


def test_the_budgets_fit_one_gpu_call_of_300_seconds():
    assert plan.gpu_total(plan.SECTIONS) <= plan.TOTAL_LIMIT == 300
    assert plan.gpu_total(plan.FULL_RUNS) <= plan.TOTAL_LIMIT
    # the runs' caps leave their setup and test inside the section's budget
    assert sum(plan.FULL_RUN_CAPS.values()) <= plan.FULL_RUNS[0].gpu - 25
    assert all(s.gpu > 0 and s.cpu >= s.gpu for s in (*plan.SECTIONS, *plan.FULL_RUNS))


def test_a_section_past_its_deadline_is_timeout_with_its_rows_and_the_next_one_runs(tmp_path):
    shown = []

    def update(record):
        shown.append(dict(record))
        summary.write(tmp_path, {"mode": "test"}, [record])

    def slow(ctx):
        ctx.partial("| row 1 |", {"rows": [1]})
        try:
            time.sleep(30)
        except Exception:  # noqa: BLE001  a section's own handler must not swallow the deadline
            return driver.PASS, "swallowed", {}
        return driver.PASS, "never", {}

    def make_ctx(name, deadline, report):
        ctx = type("Ctx", (), {})()
        ctx.partial = lambda text, figures=None: report(text, figures or {})
        return ctx

    started = time.monotonic()
    record = driver.run_section("slow", slow, 0.5, make_ctx, update)
    assert time.monotonic() - started < 5
    assert record["status"] == driver.TIMEOUT
    assert "| row 1 |" in record["text"] and record["figures"] == {"rows": [1]}
    assert "slow | RUNNING" in summary.render({"mode": "test"}, [shown[1]])  # the partial
    assert "| slow | TIMEOUT |" in (tmp_path / "summary.md").read_text()
    after = driver.run_section("next", lambda ctx: (driver.PASS, "done", {"x": 1}), 5.0,
                               make_ctx, update)
    assert after["status"] == driver.PASS and after["figures"] == {"x": 1}
    failing = driver.run_section("bad", lambda ctx: 1 / 0, 5.0, make_ctx, update)
    assert failing["status"] == driver.FAIL and "ZeroDivisionError" in failing["text"]


def dry_run(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, str, dict]:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    env.pop("SEQMODELS_DATA_DIR", None)  # the dry run writes its own tiny data
    result = subprocess.run(["bash", str(SCRIPT), "--cpu-dry-run", *args], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=900)
    text = (tmp_path / "out" / "summary.md").read_text()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    return result, text, results


def statuses(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\| (\w+) \| (PASS|FAIL|SKIP|TIMEOUT|RUNNING) \|", text,
                           flags=re.M))


def test_the_dry_run_runs_every_section_in_one_process_and_none_fails(tmp_path):
    listed = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True,
                            check=True).stdout
    sections = [line.split("\t")[0] for line in listed.splitlines() if "\t" in line]
    assert sections == [s.name for s in plan.SECTIONS]
    result, text, results = dry_run(tmp_path)
    output = result.stdout + result.stderr
    table = statuses(text)
    assert list(table) == sections, text
    bad = {name: status for name, status in table.items() if status in ("FAIL", "TIMEOUT")}
    assert not bad, f"{bad}\n{text}\n{output[-3000:]}"
    assert result.returncode == 0, output[-3000:]
    assert output.count("driver up") == 1  # one Python process ran every section
    for step in ("import torch", "import lightning", "import seqmodels", "first LSTM call"):
        assert any(key.startswith(step) for key in results["boot"]), results["boot"]
    figures = results["sections"]
    trained = figures["throughput"]["figures"]["train"]
    assert {r["task"] for r in trained} == {"sentiment", "tagging", "charlm"}
    assert all(r["vs_anchor"] > 0 and r["vs_plain"] > 0 for r in trained)
    variants = {(r["task"], r["variant"]) for r in figures["throughput"]["figures"]["varlen"]}
    assert {("sentiment", "padded"), ("sentiment", "packed"), ("tagging", "packed")} <= variants
    assert set(figures["syncs"]["figures"]) == {"sentiment", "tagging", "charlm"}
    assert figures["resume"]["figures"]["epoch"] == 1
    # What the device tool brings back: few files, no folders; the work directory is gone.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "driver.log", "results.json", "summary.md"]
    assert not list(tmp_path.glob("device_check.*")), "the work directory is left behind"


def test_the_full_runs_dry_run_trains_the_three_experiments_and_reports_them(tmp_path):
    result, text, results = dry_run(tmp_path, "--full-runs")
    assert statuses(text) == {"full_runs": "SKIP"}, text + result.stdout[-3000:]
    runs = results["sections"]["full_runs"]["figures"]
    assert set(runs) == {"sentiment", "tagging", "charlm"}
    for task, run in runs.items():
        assert run["total_seconds"] > 0 and run["epochs"] >= 1 and run["final_val"] > 0
        assert (run["test"] is None) == (task == "charlm")  # Tiny Shakespeare: no test split
    assert "s to val <= 1.47" in text and "max_time cap" in text
