"""Adding a backend is one adapter and one ``register`` call: ``list``, ``verify``, the benchmarks
and the generic parity tests all pick it up from BACKENDS and its declared facts, with no edit."""
import json
import os
import subprocess
import sys

import pytest
import torch

from bundle_helpers import ROOT
from compile_losses.backends import BACKENDS, Backend, register, unregister
from compile_losses.cli import main

NAME = "compile-decomp"
PLUGIN = ["-p", "extra_backend"]


@pytest.fixture
def registered():  # type: ignore[no-untyped-def]
    import extra_backend

    assert NAME not in BACKENDS, "only the -p extra_backend plugin or this fixture registers it"
    yield register(extra_backend.adapter())
    unregister(NAME)


def test_register_refuses_what_is_not_an_adapter_or_clashes() -> None:
    with pytest.raises(TypeError, match="backend must be a compile_losses.backends.Backend, got str"):
        register("eager")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a backend named 'eager' is registered already"):
        register(Backend("eager"))
    with pytest.raises(ValueError, match=r"backend.cost must be a number of seconds >= 0, got -1"):
        register(Backend("negative", cost=-1))
    with pytest.raises(TypeError, match=r"unknown backend facts \['speed'\]"):
        Backend("x", speed=1)
    assert "negative" not in BACKENDS


@pytest.mark.compile
def test_a_registered_backend_is_listed_and_verified(registered, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert main(["list"]) == 0
    assert NAME in capsys.readouterr().out
    out = tmp_path / "r.json"
    assert main(["verify", "--backends", "eager," + NAME, "--batch", "3", "--no-audit", "--quiet",
                 "--json", str(out)]) == 0
    rows = [r for r in json.loads(out.read_text())["rows"] if r["backend"] == NAME]
    # loss, loss-and-gradient and the whole train step of SeedNet+MSE, and MSE alone
    assert {"loss", "dpred", "step.loss", "grad:fc1.weight", "new:fc2.bias"} <= {r["output"] for r in rows}
    assert rows and all(r["status"] == "pass" for r in rows), rows


def _pytest(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PLUGIN, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.compile
@pytest.mark.slow
def test_a_registered_backend_joins_the_generic_tests_and_the_benchmarks() -> None:
    # the generic backend and parity tests, selected by the new name only: they run and pass
    proc = _pytest("tests/test_backends.py", "tests/test_parity.py", "-k", "{} and (mse or not matrix)".format(NAME),
                   "--run-slow", "-rs")
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and " passed" in summary, proc.stdout[-3000:] + proc.stderr[-2000:]
    ran = int(summary.split(" passed")[0].split()[-1])
    assert ran >= 4, summary  # prepare at every batch, the train step, MSE in the parity matrix
    # the benchmarks collect it beside the others, in every group
    proc = _pytest("tests/benchmarks", "--collect-only", "-m", "not gpu", timeout=300)
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    mine = [i for i in ids if "-{}".format(NAME) in i or "[{}".format(NAME) in i or NAME + "-" in i]
    assert mine and {i.split("::")[1].split("[")[0] for i in mine} >= {"test_loss_forward_backward",
                                                                        "test_seed_train_step"}, mine[:5]


def test_a_registered_backend_shows_its_facts(registered) -> None:  # type: ignore[no-untyped-def]
    facts = registered.facts()
    assert facts["autograd"] is True and facts["exported"] is False and facts["cost"] == 1.0
    assert facts["markers"] == ["compile"] and not facts["reference"]
    assert registered.available()[0] or registered.available()[1]
    torch.manual_seed(0)
