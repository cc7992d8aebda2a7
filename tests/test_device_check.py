"""The GPU check, end to end on the CPU: ``scripts/device_check.sh --cpu-dry-run`` runs every
section at tiny sizes (about 2 minutes on 2 cores), so that the one short run a GPU machine gets
is not spent on a broken script."""

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.sh"


def test_the_dry_run_reports_every_section_and_none_fails(tmp_path):
    sections = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True,
                              check=True).stdout.split()
    assert "throughput" in sections and "resume" in sections
    env = {**os.environ, "OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    env.pop("SEQMODELS_DATA_DIR", None)  # the dry run writes its own tiny data
    result = subprocess.run(["bash", str(SCRIPT), "--cpu-dry-run"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=1200)
    summary = (tmp_path / "out" / "summary.md").read_text()
    table = dict(re.findall(r"^\| (\w+) \| (PASS|FAIL|SKIP) \|", summary, flags=re.M))
    assert list(table) == sections, summary
    failed = {name: status for name, status in table.items() if status == "FAIL"}
    assert not failed, f"{failed}\n{summary}\n{result.stdout[-2000:]}"
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # Nothing but what the device tool can bring back: few files, none in deep folders.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "logs.tar.gz", "results.json", "summary.md"]
    assert not list(tmp_path.glob("device_check.*")), "the work directory is left behind"
