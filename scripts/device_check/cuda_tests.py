"""Section ``cuda_tests``: the tests ``-k cuda`` selects (a ``cuda`` marker, a ``[cuda]``
parameter, or ``cuda`` in a name), run by ``pytest.main`` in the driver's own process, so that
nothing is imported twice. Only the test files that use the ``cuda`` marker are collected (a test
that ``-k cuda`` selects is in one of them), not all of them. A plugin records each test's
outcome as it ends, hands the driver the rows so far, and stops the session before the
section's deadline. In the CPU dry run: ``-m cuda`` (the marked tests, all skipped there), the
same code path without the GPU."""

import os
import time

import pytest
from common import FAIL, PASS, ROOT, SKIP, TIMEOUT, Context, table

MARGIN = 5.0  # seconds kept back for pytest's own end, before the driver's alarm


class Outcomes:
    """A pytest plugin: outcomes by test, and a stop once the deadline is near."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.session = None
        self.counts = {"passed": 0, "failed": 0, "skipped": 0}
        self.failures: list[list[str]] = []
        self.stopped = ""

    def pytest_sessionstart(self, session):
        self.session = session

    def pytest_collectreport(self, report):
        if report.failed:  # a test file that does not import: its tests never run
            self.counts["errors"] = self.counts.get("errors", 0) + 1
            message = str(report.longrepr).strip().splitlines()
            self.failures.append([f"`{report.nodeid}` (collection)",
                                  (message[-1] if message else "")[:200]])

    def pytest_runtest_logreport(self, report):
        if report.failed and "SectionTimeout" in str(report.longrepr):
            # the driver's alarm rang inside a test: the budget is spent, not a test failure
            self.stopped = f"the section's deadline passed in `{report.nodeid}`"
            if self.session is not None:
                self.session.shouldstop = "device_check: the section's budget is spent"
            return
        if report.when == "call" or (report.when == "setup" and not report.passed) or (
                report.when == "teardown" and report.failed):
            outcome = report.outcome
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
            if report.failed:
                message = str(report.longrepr).strip().splitlines()
                self.failures.append([f"`{report.nodeid}`", (message[-1] if message else "")[:200]])
            self.ctx.partial(self.text(), self.figures())
        if report.when == "teardown" and self.ctx.left() < MARGIN and self.session is not None:
            self.stopped = f"stopped with {self.ctx.left():.0f} s of the budget left"
            self.session.shouldstop = "device_check: the section's budget is spent"

    def figures(self) -> dict:
        return {**self.counts, "failures": self.failures, "stopped": self.stopped}

    def text(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in self.counts.items())
        lines = [f"{counts}" + (f"; {self.stopped}" if self.stopped else "")]
        if self.failures:
            lines += ["", table(["failed test", "last line"], self.failures)]
        return "\n".join(lines)


def cuda_files() -> list[str]:
    return sorted(str(p) for p in (ROOT / "tests").glob("test_*.py")
                  if "mark.cuda" in p.read_text(errors="replace"))


def cuda_tests(ctx: Context):
    files = cuda_files()
    selection = ["-k", "cuda"] if ctx.cuda else ["-m", "cuda"]
    # A file that fails to import (a missing optional extra) costs its own tests, not the rest.
    args = ["-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
            "--rootdir", str(ROOT), *selection, *files]
    plugin = Outcomes(ctx)
    started = time.monotonic()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        code = pytest.main(args, plugins=[plugin])
    finally:
        os.chdir(cwd)
    shown = " ".join(["pytest", *selection, f"<{len(files)} files naming cuda>"])
    text = f"`{shown}` in this process, {time.monotonic() - started:.0f} s: {plugin.text()}"
    figures = {**plugin.figures(), "exit": int(code), "files": [os.path.basename(f) for f in files]}
    ran = plugin.counts["passed"] + plugin.counts["failed"]
    if plugin.counts["failed"] or plugin.counts.get("errors"):
        return FAIL, text, figures
    if plugin.stopped:
        return TIMEOUT, text, figures
    if int(code) not in (0, 5):  # 5: nothing selected
        return FAIL, text, figures
    if not ctx.cuda:
        return SKIP, f"no CUDA: the marked tests were collected and skipped\n\n{text}", figures
    if ran == 0:
        return SKIP, f"no test selected by `-k cuda` ran\n\n{text}", figures
    return PASS, text, figures
