"""Parity in a user's own tests: a throwaway project that depends on compile_losses writes tests
with ``assert_parity`` and the ``parity`` fixture, one passing and one with a non-deterministic
loss; pytest runs it in a subprocess with --junitxml, and the outcomes, the JSON reports, the
markdown summary and the JUnit text are read back. Also: the plugin stays silent and writes
nothing for a project that does not use it, and it is registered as a ``pytest11`` entry point."""
import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from compile_losses.backends import BACKENDS

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "compile_losses.pytest_plugin"
# the reference and the cheap CPU backends (TorchScript): chosen from the adapters' facts
CHEAP = [n for n, b in BACKENDS.items() if b.device == "cpu" and (b.reference or b.cost <= 0.5)]

USER_TESTS = '''
import torch
from torch import nn

from compile_losses.losses import MSELoss
from compile_losses.nets import SeedNet
from compile_losses.testing import assert_parity


class NoisyLoss(nn.Module):
    """MSE plus a random term: two eager runs never agree."""

    def forward(self, input, target):
        return ((input - target) ** 2).mean() + 1e-3 * torch.rand(())


def _case(batch=6):
    torch.manual_seed(0)
    return SeedNet(), torch.randn(batch, 32), torch.randn(batch, 1)


def test_seed_mse_has_parity():
    net, x, y = _case()
    report = assert_parity(net, MSELoss(), x, y, backends="{backends}")
    assert report.ok


def test_fixture_passes(parity):
    net, x, y = _case(3)
    parity(net, MSELoss(), x, y)
    assert len(parity.reports) == 1 and parity.reports[0].ok


def test_noisy_loss_fails(parity):
    net, x, y = _case()
    parity(net, NoisyLoss(), x, y)
'''


REFERENCE = [n for n, b in BACKENDS.items() if b.device == "cpu" and b.reference]


def test_assert_parity_returns_the_report_or_raises_with_the_failing_rows_only() -> None:
    import torch
    from torch import nn

    from compile_losses.losses import MSELoss
    from compile_losses.nets import SeedNet
    from compile_losses.testing import assert_parity

    class NoisyLoss(nn.Module):
        def forward(self, input, target):  # type: ignore[no-untyped-def]
            return ((input - target) ** 2).mean() + 1e-3 * torch.rand(())

    torch.manual_seed(0)
    net, x, y = SeedNet(), torch.randn(4, 32), torch.randn(4, 1)
    report = assert_parity(net, MSELoss(), x, y, backends=REFERENCE)
    assert report.ok and report.rows
    with pytest.raises(AssertionError) as info:
        assert_parity(net, NoisyLoss(), x, y, backends=REFERENCE, label="noisy case")
    message = str(info.value)
    failing = info.value.report.failures
    assert failing and {r.status for r in failing} == {"nondeterministic"}
    table_rows = [l for l in message.splitlines() if l.startswith("noisy case")]
    assert len(table_rows) == len(failing)  # the failing rows, every one, and no passing row
    assert " pass " not in message
    assert message.splitlines()[-1].startswith("FAILED ({} failing rows)".format(len(failing)))


def _env(tmp_path: Path, **extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("GITHUB_STEP_SUMMARY", None)
    env.pop("PYTEST_ADDOPTS", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def _project(tmp_path: Path, tests: str) -> Path:
    project = tmp_path / "userproject"
    (project / "tests").mkdir(parents=True)
    (project / "pyproject.toml").write_text(textwrap.dedent('''
        [project]
        name = "userproject"
        version = "0"
        dependencies = ["compile_losses"]

        [tool.pytest.ini_options]
        testpaths = ["tests"]
        '''))
    (project / "tests" / "test_user.py").write_text(tests)
    return project


def _pytest(project: Path, args: List[str], env: Dict[str, str], plugin: bool = True) -> Tuple[int, str]:
    # entry-point plugins off (this suite's own and whatever the venv holds), ours named: the run
    # does not depend on whether the package was re-installed since the entry point was added
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"] + (["-p", PLUGIN] if plugin else []) + args
    run = subprocess.run(cmd, cwd=project, env=dict(env, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"), capture_output=True,
                         text=True, timeout=300)
    return run.returncode, run.stdout + run.stderr


@pytest.mark.slow  # about 10 s: two pytest sessions that import torch
def test_a_user_project_runs_parity_in_its_own_tests(tmp_path: Path) -> None:
    project = _project(tmp_path, USER_TESTS.replace("{backends}", ",".join(CHEAP)))
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    code, out = _pytest(project, ["--junitxml", "junit.xml", "--compile-losses-backends", ",".join(CHEAP)],
                        _env(tmp_path, GITHUB_STEP_SUMMARY=str(summary)))
    assert code == 1, out  # one test fails
    assert "2 passed" in out and "1 failed" in out, out

    # the failure is readable: the failing rows' table, what each says, the verdict
    assert "nondeterministic" in out and "eager run twice differs (bitwise)" in out, out
    assert "FAILED (" in out and "failing rows" in out, out

    # one JSON per fixture-using test, with the outcome and the whole report
    reports = project / ".compile_losses" / "reports"
    files = sorted(p.name for p in reports.glob("*.json"))
    assert len(files) == 2, files  # the plain assert_parity test does not use the fixture
    entries = {e["nodeid"].rsplit("::", 1)[-1]: e for e in (json.loads((reports / f).read_text()) for f in files)}
    ok, bad = entries["test_fixture_passes"], entries["test_noisy_loss_fails"]
    assert ok["outcome"] == "passed" and ok["ok"] and ok["failure"] is None
    assert bad["outcome"] == "failed" and not bad["ok"]
    for entry in (ok, bad):
        (rep,) = entry["reports"]
        assert sorted(rep["summary"]["backends"]) == sorted(CHEAP), rep["summary"]  # the option's default
    statuses = {r["status"] for r in bad["reports"][0]["rows"]}
    assert "nondeterministic" in statuses
    assert {r["status"] for r in ok["reports"][0]["rows"]} == {"pass"}
    assert "eager run twice differs" in bad["failure"]

    # the markdown summary, in the folder and appended to the job summary
    md = (project / ".compile_losses" / "summary.md").read_text()
    assert md.startswith("## compile_losses parity")
    assert "2 test(s) checked parity: 1 passed, 1 failed." in md
    assert "| `tests/test_user.py::test_noisy_loss_fails` | failed | **FAILED** |" in md, md
    assert "<details>" in md and "nondeterministic" in md
    assert summary.read_text() == "earlier step\n" + md

    # JUnit: the failure element carries the table, and the test has it as a property
    tree = ET.parse(project / "junit.xml")
    cases = {c.get("name"): c for c in tree.iter("testcase")}
    assert set(cases) == {"test_seed_mse_has_parity", "test_fixture_passes", "test_noisy_loss_fails"}
    failure = cases["test_noisy_loss_fails"].find("failure")
    assert failure is not None and "nondeterministic" in (failure.get("message", "") + (failure.text or ""))
    assert "eager run twice differs (bitwise)" in failure.text
    props = {p.get("name"): p.get("value") for p in cases["test_noisy_loss_fails"].iter("property")}
    assert "nondeterministic" in props["compile_losses.parity"] and "FAILED (" in props["compile_losses.parity"]
    assert cases["test_fixture_passes"].find("failure") is None

    # a second session replaces the first's reports (no stale JSON in the summary)
    code, out = _pytest(project, ["-k", "fixture_passes", "--compile-losses-report", "out",
                                   "--compile-losses-backends", ",".join(CHEAP)], _env(tmp_path))
    assert code == 0, out
    assert len(list((project / "out" / "reports").glob("*.json"))) == 1
    assert "1 test(s) checked parity: 1 passed, 0 failed." in (project / "out" / "summary.md").read_text()


def test_the_plugin_is_silent_and_writes_nothing_unless_used(tmp_path: Path) -> None:
    project = _project(tmp_path, "def test_plain():\n    assert 1 + 1 == 2\n")
    code, out = _pytest(project, [], _env(tmp_path))
    assert code == 0, out
    assert "compile_losses" not in out, out
    assert not (project / ".compile_losses").exists()
    # and loading it imports no torch
    probe = "import sys, {0}; print('torch' in sys.modules)".format(PLUGIN)
    run = subprocess.run([sys.executable, "-c", probe], env=_env(tmp_path), capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert run.stdout.strip() == "False", run.stdout + run.stderr


def test_the_plugin_is_a_pytest11_entry_point() -> None:
    """Declared in pyproject.toml; once the package is installed (``pip install -e .``) pytest
    loads it in every project by that entry point."""
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"]
    assert declared == {"compile_losses": PLUGIN}
    installed = [ep for ep in metadata.entry_points(group="pytest11") if ep.value == PLUGIN]
    if not installed:
        pytest.skip("the installed compile_losses predates the entry point: re-install with pip install -e .")
    assert installed[0].name == "compile_losses"
    assert installed[0].load().__name__ == PLUGIN


def test_an_installed_entry_point_loads_without_p(tmp_path: Path) -> None:
    if not [ep for ep in metadata.entry_points(group="pytest11") if ep.value == PLUGIN]:
        pytest.skip("the installed compile_losses predates the entry point: re-install with pip install -e .")
    project = _project(tmp_path, "def test_plain():\n    assert True\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--help"], cwd=project,
                         env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "--compile-losses-backends" in run.stdout and "--compile-losses-report" in run.stdout


@pytest.mark.slow
def test_under_xdist_workers_write_the_json_and_the_controller_the_summary(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    project = _project(tmp_path, USER_TESTS.replace("{backends}", ",".join(CHEAP)))
    code, out = _pytest(project, ["-p", "xdist.plugin", "-n", "2", "--compile-losses-backends", ",".join(CHEAP)],
                        _env(tmp_path))
    assert code == 1 and "2 passed" in out and "1 failed" in out, out
    assert len(list((project / ".compile_losses" / "reports").glob("*.json"))) == 2
    md = (project / ".compile_losses" / "summary.md").read_text()
    assert "2 test(s) checked parity: 1 passed, 1 failed." in md, md
