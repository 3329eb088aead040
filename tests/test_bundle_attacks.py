"""Fault classes whose outcome rests on what onnxruntime is handed (external data by kind, the
in-memory address tag, sparse tensors, Loops that never end, files swapped after verification,
weights swapped and re-signed), run in a process of their own under the newest onnxruntime here and,
marked ``ort_floor``, under the lowest version pyproject.toml allows.

The floor run needs a venv holding only numpy and that onnxruntime; it is skipped cleanly without:
    python3 -m venv /tmp/ort-floor && /tmp/ort-floor/bin/pip install numpy onnxruntime==1.27.0
(or point COMPILE_LOSSES_ORT_FLOOR_PYTHON at its python).
"""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from attack_bundles import ATTACKS, build_cases
from bundle_helpers import PYTHON, ROOT, default_bundle

pytestmark = pytest.mark.onnx
PROBE = ROOT / "tests" / "runtime_probe.py"
# scripts/setup.sh builds .venv-ort-floor under CI; elsewhere /tmp/ort-floor or the variable
FLOOR_PYTHON = os.environ.get("COMPILE_LOSSES_ORT_FLOOR_PYTHON") or next(
    (str(p) for p in (ROOT / ".venv-ort-floor" / "bin" / "python",) if p.exists()),
    "/tmp/ort-floor/bin/python")


def _floor_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'"onnxruntime>=([0-9.]+)"', text).group(1)


def probe(python: str, src: Path, root: Path) -> dict:
    """Build every attack afresh and run them all in one subprocess of ``python``."""
    cases = build_cases(src, root)
    (root / "cases.json").write_text(json.dumps(cases))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([python, str(PROBE), str(root / "cases.json")], capture_output=True, text=True,
                          timeout=120, cwd=str(root), env=env)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            results[r["name"]] = r
    assert "DONE" in proc.stdout, ("the probe crashed or hung (exit {}) after {}".format(
        proc.returncode, sorted(results)), proc.stderr[-3000:])
    return results


def _judge(results: dict) -> None:
    problems = []
    for attack in ATTACKS:
        r = results[attack.name]
        if r["result"] != attack.result:
            problems.append((attack.name, r))
            continue
        lines = ["{}: {}".format(f, why) for f, why in r.get("faults", [])]
        if attack.pattern and not any(re.search(attack.pattern, line) for line in lines):
            problems.append((attack.name, "no fault matches " + attack.pattern, lines))
        if "failed" in attack.extra and r.get("failed") != attack.extra["failed"]:
            problems.append((attack.name, r))
    assert not problems, problems


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return default_bundle(tmp_path_factory)


def test_attacks_under_the_newest_onnxruntime(src, tmp_path):
    results = probe(PYTHON, src, tmp_path)
    _judge(results)


@pytest.mark.ort_floor
def test_attacks_under_the_onnxruntime_floor(src, tmp_path):
    if not os.path.exists(FLOOR_PYTHON):
        pytest.skip("no onnxruntime floor venv at {} (see this module's docstring)".format(FLOOR_PYTHON))
    version = subprocess.run([FLOOR_PYTHON, "-c", "import onnxruntime; print(onnxruntime.__version__)"],
                             capture_output=True, text=True, timeout=60).stdout.strip()
    assert version == _floor_version(), "the floor venv holds onnxruntime {}, pyproject.toml's floor is {}".format(
        version, _floor_version())
    results = probe(FLOOR_PYTHON, src, tmp_path)
    assert {r["onnxruntime"] for r in results.values()} == {version}
    _judge(results)
