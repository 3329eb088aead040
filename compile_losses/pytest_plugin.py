"""pytest plugin: parity in your own test suite (entry point ``pytest11``, name ``compile_losses``).

    def test_my_loss_exports(parity):
        parity(MyNet(), MyLoss(), x, target)          # as compile_losses.testing.assert_parity

Inactive unless used: it only registers its options; nothing is imported (no torch), written or
printed for a session whose tests never request the ``parity`` fixture.

- ``parity(net, loss, inputs, target, backends=None, **verify_options)``: runs
  :func:`compile_losses.testing.assert_parity` (``AssertionError`` with the failing rows' table)
  and records each report. ``backends`` defaults to ``--compile-losses-backends a,b`` (else every
  backend). ``parity.reports`` holds this test's reports.
- ``--compile-losses-report DIR`` (default ``<rootdir>/.compile_losses``): one JSON file per test
  that used the fixture under ``DIR/reports/`` (the test's outcome and every report, whole), and
  ``DIR/summary.md`` at the end of the session, a markdown table for a CI job summary, also
  appended to ``$GITHUB_STEP_SUMMARY`` when that is set. ``DIR/reports/*.json`` from an earlier
  session are removed when a session starts (only files there, only that folder).
- JUnit XML (``--junitxml``): the failure's message is the table; a failing test also carries it
  as the property ``compile_losses.parity`` (a per-test ``<property>``, which pytest's strict
  ``xunit2`` schema does not list, so it is added without ``record_property``'s warning).
- pytest-xdist: each worker writes its tests' JSON; the controller writes the summary.
"""
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

_RECORDER = pytest.StashKey["_Recorder"]()
_STARTED = pytest.StashKey[float]()
_PROPERTY = "compile_losses.parity"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("compile_losses", "compile_losses parity (the `parity` fixture)")
    group.addoption("--compile-losses-backends", metavar="A,B", default=None,
                    help="default backends of the `parity` fixture, comma-separated (default: every backend)")
    group.addoption("--compile-losses-report", metavar="DIR", default=None,
                    help="folder for one JSON parity report per test and summary.md (default <rootdir>/.compile_losses)")


def report_dir(config: pytest.Config) -> Path:
    """Where the JSON reports and the summary go."""
    given = config.getoption("--compile-losses-report")
    if given:
        return Path(config.invocation_params.dir, given)
    return Path(config.rootpath, ".compile_losses")


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    config.stash[_STARTED] = time.time()
    if _is_worker(config):
        return
    reports = report_dir(config) / "reports"
    if reports.is_dir():  # only a folder this plugin made before: stale reports would mix into the summary
        for old in reports.glob("*.json"):
            old.unlink()


class _Recorder:
    """The ``parity`` fixture: ``assert_parity`` with the session's default backends, recording each report."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.node = request.node
        self.default_backends: Optional[str] = request.config.getoption("--compile-losses-backends")
        self.reports: List[Any] = []
        self.failure: Optional[str] = None

    def __call__(self, net: Any, loss: Any, inputs: Any, target: Any, backends: Any = None,
                 **verify_options: Any) -> Any:
        from .testing import ParityAssertionError, assert_parity

        try:
            report = assert_parity(net, loss, inputs, target, backends=backends or self.default_backends,
                                   **verify_options)
        except ParityAssertionError as exc:
            self.reports.append(exc.report)
            text = str(exc)
            self.failure = text if self.failure is None else self.failure + "\n\n" + text
            self.node.user_properties.append((_PROPERTY, text))
            raise
        self.reports.append(report)
        return report


@pytest.fixture
def parity(request: pytest.FixtureRequest) -> _Recorder:
    """``parity(net, loss, inputs, target, backends=None, **verify_options)``: assert parity
    (``compile_losses.testing.assert_parity``), defaulting ``backends`` to
    ``--compile-losses-backends``; each report is written to the session's report folder."""
    recorder = _Recorder(request)
    request.node.stash[_RECORDER] = recorder
    return recorder


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    recorder = item.stash.get(_RECORDER, None)
    if recorder is None or call.when != "call":
        return
    rep = outcome.get_result()
    _write_json(item.config, item.nodeid, rep.outcome, recorder)


def _safe_name(nodeid: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", nodeid).strip("_")
    return name[:180] or "test"


def _write_json(config: pytest.Config, nodeid: str, outcome: str, recorder: _Recorder) -> None:
    folder = report_dir(config) / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"nodeid": nodeid, "outcome": outcome, "ok": all(r.ok for r in recorder.reports),
             "failure": recorder.failure,
             "reports": [json.loads(r.to_json()) for r in recorder.reports]}
    path = folder / (_safe_name(nodeid) + ".json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entry, indent=1) + "\n")
    tmp.replace(path)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if _is_worker(config):
        return
    folder = report_dir(config)
    entries = _read_reports(folder / "reports")
    if not entries:  # the fixture was not used: nothing to write
        return
    text = summary_markdown(entries)
    (folder / "summary.md").write_text(text)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a") as fh:
            fh.write(text)
    config.stash[_RECORDER_SUMMARY] = (folder, len(entries))


_RECORDER_SUMMARY = pytest.StashKey[Any]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    written = config.stash.get(_RECORDER_SUMMARY, None)
    if written is not None:
        folder, n = written
        terminalreporter.write_line("compile_losses: {} parity report(s) in {}, summary {}".format(
            n, folder / "reports", folder / "summary.md"))


def _read_reports(folder: Path) -> List[Dict[str, Any]]:
    if not folder.is_dir():
        return []
    entries = []
    for path in sorted(folder.glob("*.json")):
        try:
            entries.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:  # a half-written file from a killed worker: say so
            entries.append({"nodeid": path.name, "outcome": "unreadable", "ok": False, "failure": str(exc),
                            "reports": []})
    return entries


def summary_markdown(entries: List[Dict[str, Any]]) -> str:
    """The session's parity as markdown: one table row per test, then each failure's table."""
    failed = [e for e in entries if not e["ok"]]
    lines = ["## compile_losses parity", "",
             "{} test(s) checked parity: {} passed, {} failed.".format(len(entries), len(entries) - len(failed),
                                                                       len(failed)), "",
             "| test | outcome | parity | cases | rows | failing rows | backends |",
             "|---|---|---|---|---|---|---|"]
    for e in entries:
        summaries = [r["summary"] for r in e["reports"]]
        backends = sorted({b for s in summaries for b in s["backends"]})
        lines.append("| `{}` | {} | {} | {} | {} | {} | {} |".format(
            e["nodeid"].replace("|", "\\|"), e["outcome"], "ok" if e["ok"] else "**FAILED**",
            sum(s["cases"] for s in summaries), sum(s["rows"] for s in summaries),
            sum(s["failures"] for s in summaries), ", ".join(backends) or "-"))
    for e in failed:
        lines += ["", "<details><summary><code>{}</code></summary>".format(e["nodeid"]), "", "```text",
                  (e.get("failure") or "").strip(), "```", "</details>"]
    return "\n".join(lines) + "\n"
