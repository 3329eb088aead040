"""Interrupted, failing and concurrent exports: afterwards the destination holds the old
complete bundle or a new complete one, never a mix, and no staging folder is left behind."""
import hashlib
import os
import subprocess

import numpy as np
import pytest
import torch

from bundle_helpers import PYTHON, ROOT, leftovers
from compile_losses import export as ex
from compile_losses.export import compose, install
from compile_losses.runtime import load_bundle

pytestmark = pytest.mark.onnx

# Cheap exports (no training graphs, AOTI or parity): the install logic is what is under test.
_SCRIPT = r"""
import os, sys
import torch
from compile_losses import export as ex
from compile_losses.export import install
from compile_losses.losses import MSELoss
from compile_losses.nets import SeedNet
out, name, seed, kill = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
count = [0]
def hook(label):
    print("STEP", count[0], label, flush=True)
    if kill in (str(count[0]), label):
        os._exit(86)  # no cleanup, no finally: like a kill -9 or a power cut
    count[0] += 1
install._STEP_HOOK = hook
torch.manual_seed(seed)
gen = torch.Generator().manual_seed(seed)
x, y = torch.randn(8, 32, generator=gen), torch.randn(8, 1, generator=gen)
ex.export_bundle(SeedNet(), MSELoss(), x, y, out, name=name, aoti=False, training=False, parity=False)
print("EXPORTED", flush=True)
"""


def _export(out, seed, kill="never", env=None):
    return subprocess.run([PYTHON, "-c", _SCRIPT, str(out), "b", str(seed), kill], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


def _export_here(out, seed, **kw):
    from compile_losses.losses import MSELoss
    from compile_losses.nets import SeedNet

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 32, generator=gen), torch.randn(8, 1, generator=gen)
    kw = dict(dict(aoti=False, training=False, parity=False, torchscript=False), **kw)
    return ex.export_bundle(SeedNet(), MSELoss(), x, y, out, name="b", **kw)


def _which_seed(bundle_dir, seeds):
    """The seed whose net the bundle holds: its forward must equal that net's eager output."""
    from compile_losses.nets import SeedNet

    bundle = load_bundle(bundle_dir)
    assert bundle.check().ok  # complete and self-consistent: not a mix of two exports
    hits = []
    for s in seeds:
        torch.manual_seed(s)
        net = SeedNet().eval()
        gen = torch.Generator().manual_seed(s)
        x = torch.randn(8, 32, generator=gen)
        with torch.no_grad():
            if np.allclose(bundle.forward(x.numpy()), net(x).numpy(), rtol=1e-5, atol=1e-6):
                hits.append(s)
    assert len(hits) == 1, hits
    return hits[0]


def _digest(bundle_dir):
    return hashlib.sha256((bundle_dir / "manifest.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def old_bundle(tmp_path_factory):
    """An installed bundle (seed 1) that every test tries to replace (built as the script does)."""
    return _export_here(tmp_path_factory.mktemp("old"), 1, torchscript=True)


@pytest.fixture
def out(old_bundle, tmp_path):
    import shutil

    dst = tmp_path / "models"
    dst.mkdir()
    shutil.copytree(old_bundle, dst / "b")
    return dst


@pytest.fixture(scope="module")
def step_labels(old_bundle, tmp_path_factory):
    """Every step an export over an existing bundle passes through (the script's configuration)."""
    import shutil

    out = tmp_path_factory.mktemp("labels")
    shutil.copytree(old_bundle, out / "b")
    labels = []
    install._STEP_HOOK = labels.append
    try:
        _export_here(out, 2, torchscript=True)
    finally:
        install._STEP_HOOK = None
    return labels


def _killed_then_recovered(out, kill, env=None):
    before = _digest(out / "b")
    proc = _export(out, 2, kill=kill, env=env)
    assert proc.returncode == 86, (kill, proc.stdout[-500:], proc.stderr[-2000:])
    dest = out / "b"
    if dest.exists():
        seed = _which_seed(dest, [1, 2])
    else:  # only in the two-rename fallback, between "old aside" and "new in"
        assert env is not None and kill == "old-aside"
        seed = None
    ex.recover(out)
    assert leftovers(out) == []
    seed_after = _which_seed(dest, [1, 2])
    assert seed in (None, seed_after)
    if seed_after == 1:
        assert _digest(dest) == before  # the old bundle, byte for byte
    return seed_after


def test_step_labels_cover_at_least_20_kill_points(step_labels):
    assert len(step_labels) >= 20, step_labels
    assert step_labels.index("manifest") < step_labels.index("validated") < step_labels.index("exchanged")


@pytest.mark.slow
@pytest.mark.parametrize("kill, expected", [("fixtures", 1), ("exchanged", 2)])
def test_kill_keeps_old_or_new(out, kill, expected):
    assert _killed_then_recovered(out, kill) == expected


def test_kill_between_two_renames_is_recovered(out):
    """Where RENAME_EXCHANGE is not available, a crash between 'old aside' and 'new in' leaves no
    bundle at the destination for a moment; recovery (run by every export) puts the old one back."""
    env = dict(os.environ, COMPILE_LOSSES_NO_RENAME_EXCHANGE="1")
    assert _killed_then_recovered(out, "old-aside", env=env) == 1


@pytest.mark.slow
def test_kill_at_every_step(out, step_labels):
    seen = {}
    for k, label in enumerate(step_labels[:-1]):  # the last step ("done") comes after install
        seen[label] = _killed_then_recovered(out, str(k))
    switch = step_labels.index("exchanged")
    assert all(seen[l] == 1 for l in step_labels[:switch]), seen
    assert all(seen[l] == 2 for l in step_labels[switch:-1]), seen


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["locked", "old-aside", "new-in", "old-removed"])
def test_kill_in_two_rename_fallback(out, kill):
    env = dict(os.environ, COMPILE_LOSSES_NO_RENAME_EXCHANGE="1")
    assert _killed_then_recovered(out, kill, env=env) == (1 if kill in ("locked", "old-aside") else 2)


def test_failed_write_midway_leaves_old_and_no_temp(out, monkeypatch):
    before = _digest(out / "b")

    def half_then_disk_full(arrays, path, kind):
        with open(path, "wb") as fh:
            fh.write(b"PK\x03\x04" + b"\0" * 100)
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(compose, "write_npz", half_then_disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        _export_here(out, 3)
    assert _digest(out / "b") == before and leftovers(out) == []
    assert _which_seed(out / "b", [1, 3]) == 1


def test_bundle_failing_its_own_check_is_not_installed(out, monkeypatch):
    before = _digest(out / "b")
    real = compose._fixtures

    def off_by_a_lot(*args, **kw):
        fixtures = real(*args, **kw)
        fixtures["forward/eager/pred"] = fixtures["forward/eager/pred"] + 1.0
        fixtures["forward/ref64/pred"] = fixtures["forward/ref64/pred"] + 1.0
        return fixtures

    monkeypatch.setattr(compose, "_fixtures", off_by_a_lot)
    with pytest.raises(ex.ExportError, match=r"fails its own fixtures(.|\n)*forward +pred"):
        _export_here(out, 3)
    assert _digest(out / "b") == before and leftovers(out) == []


def test_failed_install_leaves_old(out, monkeypatch):
    before = _digest(out / "b")

    def broken(a, b):
        raise OSError(5, "Input/output error", str(b))

    monkeypatch.setattr(install, "_exchange", broken)
    with pytest.raises(OSError, match="Input/output error"):
        _export_here(out, 3)
    assert _digest(out / "b") == before and leftovers(out) == []


def test_refuses_to_replace_a_folder_that_is_not_a_bundle(tmp_path):
    from compile_losses.errors import UsageError

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "precious.txt").write_text("user data")
    with pytest.raises(UsageError, match=r"exists and is not a bundle folder \(no manifest.json\); refusing"):
        _export_here(tmp_path, 3)
    assert (tmp_path / "b" / "precious.txt").read_text() == "user data" and leftovers(tmp_path) == []


def test_replace_and_fresh_install(out, tmp_path):
    assert _which_seed(_export_here(out, 4), [1, 4]) == 4
    assert leftovers(out) == []
    fresh = tmp_path / "fresh"
    assert _which_seed(_export_here(fresh, 5), [5]) == 5 and leftovers(fresh) == []


def test_recover_leaves_live_exports_alone(out):
    live = out / ".b.tmp-{}-abcd1234".format(os.getpid())
    live.mkdir()
    dead = out / ".b.tmp-999999999-abcd1234"
    dead.mkdir()
    assert ex.recover(out) == ["removed " + dead.name]
    assert live.exists()
    live.rmdir()


def _concurrent(out, seeds):
    procs = [subprocess.Popen([PYTHON, "-c", _SCRIPT, str(out), "b", str(s), "never"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT) for s in seeds]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0 and "EXPORTED" in stdout, stderr[-2000:]
    assert leftovers(out) == []
    assert _which_seed(out / "b", [1] + list(seeds)) in seeds


def test_two_concurrent_exports(out):
    _concurrent(out, [20, 21])


@pytest.mark.slow
def test_four_concurrent_exports(out):
    _concurrent(out, [30, 31, 32, 33])


class _WrongForward:
    """A planted backend whose forward is off by 1 %: parity fails for it."""

    @staticmethod
    def make():  # type: ignore[no-untyped-def]
        from compile_losses.backends.eager import EagerBackend

        class Wrong(EagerBackend):
            def prepare(self, module, example_inputs):  # type: ignore[no-untyped-def]
                inner = super().prepare(module, example_inputs)
                return lambda *a: inner(*a) * 1.01

        return Wrong("wrong-forward")


def test_a_bundle_that_fails_parity_never_replaces_a_good_one(out, monkeypatch, capsys):
    from compile_losses.backends import BACKENDS
    from compile_losses.cli import main

    before = _digest(out / "b")
    monkeypatch.setitem(BACKENDS, "wrong-forward", _WrongForward.make())
    path = _export_here(out, 3, parity=["wrong-forward"])
    assert not path.ok and path.failures and path.name == "b" + ex.FAILED_SUFFIX
    assert path.report is not None and not path.report.ok
    # the good bundle is untouched and still the seed-1 net; the failing one is complete, beside it
    assert _digest(out / "b") == before and _which_seed(out / "b", [1, 3]) == 1
    assert _which_seed(path, [1, 3]) == 3 and leftovers(out) == []
    # the CLI exits 1 and says where the failing bundle went
    argv = ["export", "--out", str(out), "--name", "b", "--skip", "aoti,torchscript,training", "--quiet",
            "--backends", "wrong-forward"]
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "was NOT installed at {}".format(out / "b") in text and _digest(out / "b") == before
    # installing it all the same takes an explicit flag
    assert main(argv + ["--install-failing"]) == 1
    assert _digest(out / "b") != before and load_bundle(out / "b").check().ok  # complete; only its parity failed
