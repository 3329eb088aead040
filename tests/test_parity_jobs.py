"""verify --jobs N (compile_losses/parity/jobs.py): worker processes give the serial run's report,
row for row, in the same order, with the same numbers."""
import json
from dataclasses import asdict

import pytest
import torch

from compile_losses.backends import BACKENDS
from compile_losses.cli import main
from compile_losses.parity import verify_registry
from compile_losses.parity.jobs import plan_units, verify_registry_jobs

CHEAP = ["eager", "script"]  # the reference and TorchScript: no compiler builds, seconds each
ARGS = dict(losses=["mse", "huber"], net="seed", batches=(1, 7), large=64, dtypes=(torch.float32,),
            backends=CHEAP, audit=False)


def _rows(report):
    return [asdict(r) for r in report.rows]


@pytest.mark.slow  # two spawned workers each import torch: about 8 s on 2 shared cores
def test_two_jobs_give_the_serial_rows_in_order():
    serial = verify_registry(**ARGS)
    parallel = verify_registry_jobs(2, **ARGS)
    assert len(serial.rows) > 0
    assert _rows(parallel) == _rows(serial)  # statuses, clauses and every error figure, in order
    assert parallel.cases == serial.cases
    assert parallel.ok == serial.ok


def test_units_follow_the_serial_order_with_audits_last():
    units = plan_units(losses=["mse", "huber"], net="seed", dtypes=(torch.float32, torch.float64),
                       backends=CHEAP, audit=False)
    assert [u[1] for u in units] == ["seed mse float32", "seed mse float64", "alone mse float32", "alone mse float64",
                                     "seed huber float32", "seed huber float64", "alone huber float32",
                                     "alone huber float64"]
    assert {u[0] for u in units} == {"parity"}
    audit_units = plan_units(losses=["mse", "huber"], net="seed", dtypes=(torch.float32,), backends=None, audit=True)
    kinds = [u[0] for u in audit_units]
    assert any(b.audited for b in BACKENDS.values())  # all backends include the audited compiler
    # one audit per loss, after every parity case
    assert kinds == ["parity"] * 4 + ["audit"] * 2
    assert [u[1] for u in audit_units[-2:]] == ["compile audit mse", "compile audit huber"]


def test_bad_job_counts_are_refused(capsys):
    with pytest.raises(ValueError, match=r"jobs must be a positive integer, got 0"):
        verify_registry_jobs(0, **ARGS)
    assert main(["verify", "--loss", "mse,huber", "--jobs", "-1", "--quiet"]) == 2
    assert "--jobs must be >= 0 (0: one per core), got -1" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_jobs_json_matches_the_serial_json(tmp_path):
    common = ["verify", "--loss", "mse,log_cosh,huber", "--backends", ",".join(CHEAP), "--batch", "1,7",
              "--large", "256", "--no-audit", "--quiet"]
    assert main(common + ["--json", str(tmp_path / "s.json")]) == 0
    assert main(common + ["--jobs", "2", "--json", str(tmp_path / "p.json")]) == 0
    serial, parallel = (json.loads((tmp_path / n).read_text()) for n in ("s.json", "p.json"))
    assert parallel["rows"] == serial["rows"] and parallel["cases"] == serial["cases"]
    assert parallel["summary"]["backends"] == serial["summary"]["backends"]
