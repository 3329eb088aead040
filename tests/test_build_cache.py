"""The build cache (compile_losses.build_cache): keys that change with whatever the build depends
on (a changed weight, buffer, constant, op or shape must miss), hits for an unchanged program,
files that appear only whole, the off switch, and the CPU-ISA probe replayed without probing."""
import os
from typing import Dict

import pytest
import torch
from torch import nn

from compile_losses import build_cache
from compile_losses.losses import HuberLoss
from compile_losses.nets import SeedNet


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(build_cache.ENV_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(build_cache.ENV_OFF, raising=False)
    return tmp_path / "cache"


def _key(module: nn.Module, *example: torch.Tensor) -> str:
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, example, dynamic_shapes=tuple({0: batch} for _ in example))
    return build_cache.program_key(program, ("test",))


class Scaled(nn.Module):
    """A net with a buffer and a Python-float constant in its forward."""

    def __init__(self, scale: float = 2.0) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("shift", torch.zeros(3))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale + self.shift


def _scaled(seed: int = 0, scale: float = 2.0) -> Scaled:
    torch.manual_seed(seed)
    return Scaled(scale).eval()


def test_program_key_is_the_same_for_the_same_program_built_twice(cache):
    x = torch.randn(5, 4)
    assert _key(_scaled(), x) == _key(_scaled(), x)
    assert _key(_scaled(), x) == _key(_scaled(), torch.randn(9, 4))  # the batch is dynamic: one build serves all


@pytest.mark.parametrize("change", ["weight", "buffer", "python constant", "op", "feature dim", "dtype", "settings"])
def test_program_key_misses_on_any_change_the_build_depends_on(cache, change):
    x = torch.randn(5, 4)
    base = _key(_scaled(), x)
    if change == "weight":
        net = _scaled()
        with torch.no_grad():
            net.lin.weight[0, 0] += 1e-6  # one element, one ulp-scale change: still a different build
        assert _key(net, x) != base
    elif change == "buffer":
        net = _scaled()
        net.shift[1] = 0.5
        assert _key(net, x) != base
    elif change == "python constant":
        assert _key(_scaled(scale=2.5), x) != base
    elif change == "op":
        class Tanh(Scaled):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.tanh(self.lin(x)) * self.scale + self.shift

        torch.manual_seed(0)
        assert _key(Tanh().eval(), x) != base
    elif change == "feature dim":
        torch.manual_seed(0)
        net = Scaled().eval()
        net.lin = nn.Linear(6, 3)
        assert _key(net, torch.randn(5, 6)) != base
    elif change == "dtype":
        assert _key(_scaled().double(), x.double()) != base
    else:
        batch = torch.export.Dim("batch")
        program = torch.export.export(_scaled(), (x,), dynamic_shapes=({0: batch},))
        assert build_cache.program_key(program, ("other",)) != build_cache.program_key(program, ("test",))


def test_program_key_sees_a_loss_setting_baked_into_the_graph(cache):
    pred, target = torch.randn(6, 1), torch.randn(6, 1)
    assert _key(HuberLoss(delta=1.0), pred, target) == _key(HuberLoss(delta=1.0), pred, target)
    assert _key(HuberLoss(delta=1.0), pred, target) != _key(HuberLoss(delta=0.5), pred, target)


def test_program_key_changes_with_the_inductor_config(cache):
    import torch._inductor.config as config

    x = torch.randn(5, 4)
    base = _key(_scaled(), x)
    with config.patch(emulate_precision_casts=not config.emulate_precision_casts):
        assert _key(_scaled(), x) != base


def test_build_file_builds_once_then_copies(cache, tmp_path):
    calls = []

    def build(dest: str) -> None:
        calls.append(dest)
        with open(dest, "wb") as f:
            f.write(b"package " + str(len(calls)).encode())

    first, second = tmp_path / "a" / "x.pt2", tmp_path / "b" / "x.pt2"
    first.parent.mkdir()
    second.parent.mkdir()
    assert build_cache.build_file("kind", "k" * 64, str(first), build) is False
    assert build_cache.build_file("kind", "k" * 64, str(second), build) is True
    assert len(calls) == 1 and second.read_bytes() == first.read_bytes() == b"package 1"
    other = tmp_path / "b" / "y.pt2"
    assert build_cache.build_file("kind", "j" * 64, str(other), build) is False  # another key: built
    assert other.read_bytes() == b"package 2"
    stored = list((cache / "kind").rglob("*.pt2"))
    assert sorted(p.name for p in stored) == ["j" * 64 + ".pt2", "k" * 64 + ".pt2"]
    assert not [p for p in (cache / "kind").rglob("*") if p.is_file() and p.name.startswith(".")]  # no temp left


def test_a_failed_build_stores_nothing(cache, tmp_path):
    def build(dest: str) -> None:
        with open(dest, "wb") as f:
            f.write(b"half")
        raise RuntimeError("compiler died")

    with pytest.raises(RuntimeError, match="compiler died"):
        build_cache.build_file("kind", "f" * 64, str(tmp_path / "x.pt2"), build)
    assert not (cache / "kind").exists() or not list((cache / "kind").rglob("*.pt2"))


def test_the_off_switch_builds_every_time_and_writes_no_cache(cache, tmp_path, monkeypatch):
    monkeypatch.setenv(build_cache.ENV_OFF, "1")
    assert build_cache.cache_dir() is None
    calls = []

    def build(dest: str) -> None:
        calls.append(dest)
        open(dest, "wb").close()

    for _ in range(2):
        assert build_cache.build_file("kind", "k" * 64, str(tmp_path / "x.pt2"), build) is False
    assert len(calls) == 2 and not cache.exists()


def test_the_default_folder_is_under_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(build_cache.ENV_DIR, raising=False)
    monkeypatch.delenv(build_cache.ENV_OFF, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build_cache.cache_dir() == tmp_path / "compile_losses"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert build_cache.cache_dir() == __import__("pathlib").Path(os.path.expanduser("~")) / ".cache" / "compile_losses"


@pytest.fixture
def fresh_isa_state(monkeypatch):
    """Forget what this process's inductor knows of the CPU's ISAs, before and after the test (so
    no answer made up here outlives it: the next inductor build probes afresh)."""
    from torch._inductor import cpu_vec_isa

    _forget_isas(cpu_vec_isa)
    monkeypatch.setattr(build_cache, "_PRIMED", False)
    yield cpu_vec_isa
    _forget_isas(cpu_vec_isa)


def _forget_isas(cpu_vec_isa) -> None:
    """What a fresh process starts from: torch's functools caches empty, and no ISA carrying
    what an earlier probe found (the bf16 / fp16 support flags its build flags read)."""
    cpu_vec_isa.valid_vec_isa_list.cache_clear()
    for cls in {type(i) for i in cpu_vec_isa.supported_vec_isa_list} | {cpu_vec_isa.VecISA}:
        for attr in vars(cls).values():
            if hasattr(attr, "cache_clear"):
                attr.cache_clear()
    for isa in cpu_vec_isa.supported_vec_isa_list:
        for flag in [k for k in vars(isa) if k.startswith("_is_") and k.endswith("_supported")]:
            del isa.__dict__[flag]


def test_the_isa_probe_is_answered_from_the_cache_in_a_later_process(cache, fresh_isa_state, monkeypatch):
    cpu_vec_isa = fresh_isa_state
    probes = []

    def probe(self, code: str) -> bool:  # stands in for compile + dlopen: answers by ISA name
        probes.append((str(self), self.build_arch_flags()))
        return "amx" not in str(self)

    monkeypatch.setattr(cpu_vec_isa.VecISA, "check_build", probe)
    build_cache.prime_cpu_isa()
    cold = [str(i) for i in cpu_vec_isa.valid_vec_isa_list()]
    cold_probes = len(probes)
    if platform_has_no_isa(cpu_vec_isa):
        pytest.skip("this CPU has no vector ISA inductor probes")
    assert cold_probes > 0 and build_cache.STATS["cpu-isa"]["miss"] >= 1
    assert list((cache / "cpu-isa").rglob("*.json"))

    # a later process: torch's caches empty, ours on disk
    _forget_isas(cpu_vec_isa)
    monkeypatch.setattr(build_cache, "_PRIMED", False)
    build_cache.prime_cpu_isa()
    assert probes[cold_probes:] == [], probes  # not one probe more
    assert [str(i) for i in cpu_vec_isa.valid_vec_isa_list()] == cold
    assert cpu_vec_isa.VecISA.check_build is probe  # the probe is torch's own again after priming


def platform_has_no_isa(cpu_vec_isa) -> bool:
    return not cpu_vec_isa.valid_vec_isa_list() and not cpu_vec_isa.x86_isa_checker()


@pytest.mark.slow
@pytest.mark.aoti
def test_an_unchanged_package_is_copied_and_a_changed_weight_is_rebuilt(cache, tmp_path):
    from compile_losses.backends import BACKENDS
    from compile_losses.backends.aoti import export_aoti

    ok, reason = BACKENDS["aoti"].available()
    if not ok:
        pytest.skip("aoti unavailable: " + reason)
    torch.manual_seed(0)
    net, x = SeedNet().eval(), torch.randn(8, 32)
    before = dict(build_cache.STATS.get("aoti-package", {"hit": 0, "miss": 0}))
    runs = []
    for i, change in enumerate([False, False, True]):
        if change:
            with torch.no_grad():
                net.fc2.bias += 1.0  # a changed weight: the old package would give the old output
        runner = export_aoti(net, (x,), package_path=str(tmp_path / "p{}.pt2".format(i)))
        out = runner(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        with torch.no_grad():
            torch.testing.assert_close(out, net(x))
        runs.append(dict(build_cache.STATS["aoti-package"]))
    assert [r["miss"] - before["miss"] for r in runs] == [1, 1, 2]
    assert [r["hit"] - before["hit"] for r in runs] == [0, 1, 1]
    assert (tmp_path / "p0.pt2").read_bytes() == (tmp_path / "p1.pt2").read_bytes()


@pytest.mark.compile
def test_the_compile_choice_is_timed_once_then_read_back(cache, monkeypatch):
    from compile_losses.backends import BACKENDS, clear_cache
    from compile_losses.backends import tuned
    from compile_losses.losses import MSELoss

    backend = BACKENDS["compile"]
    ok, reason = backend.available()
    if not ok:
        pytest.skip("compile unavailable: " + reason)
    timed = []
    real = tuned.pick_fastest
    monkeypatch.setattr(tuned, "pick_fastest", lambda *a, **k: timed.append(1) or real(*a, **k))
    torch.manual_seed(0)
    net, args = SeedNet(), (torch.randn(10, 32), torch.randn(10, 1))
    clear_cache()
    first = backend.prepare_train_step(net, MSELoss(), args, 0.01)
    clear_cache()  # a later process: nothing prepared in memory, the record on disk
    second = backend.prepare_train_step(net, MSELoss(), args, 0.01)
    assert timed == [1]
    assert second.choice == first.choice and second.timings == pytest.approx(first.timings, rel=1e-9)
    assert "earlier process" in second.note and "earlier process" not in first.note
    torch.testing.assert_close(second(*args).loss, first(*args).loss)

    # a recorded "eager" builds no compiled graph at all; another weight is another case (timed again)
    key_files = list((cache / "compile-choice").rglob("*.json"))
    assert len(key_files) == 1
    key_files[0].write_text('{"choice": "eager", "timings": {"eager": 1e-5, "compile": 2e-5}, "settings": "x"}')
    compiled_step = tuned.CompiledTrainStep
    monkeypatch.setattr(tuned, "CompiledTrainStep", lambda *a, **k: pytest.fail("compiled although eager was recorded"))
    clear_cache()
    third = backend.prepare_train_step(net, MSELoss(), args, 0.01)
    assert third.choice == "eager" and timed == [1]
    monkeypatch.setattr(tuned, "CompiledTrainStep", compiled_step)
    with torch.no_grad():
        net.fc1.weight[0, 0] += 1.0
    clear_cache()
    backend.prepare_train_step(net, MSELoss(), args, 0.01)
    assert timed == [1, 1]


def _stat(kind: str) -> Dict[str, int]:
    return dict(build_cache.STATS.get(kind, {"hit": 0, "miss": 0}))


@pytest.mark.onnx
def test_onnx_exports_hit_for_the_same_program_and_miss_for_a_changed_weight(cache, tmp_path):
    import numpy as np
    import onnxruntime as ort

    from compile_losses.backends.onnx import export_onnx

    x = torch.randn(5, 4)
    before = _stat("onnx-graph")
    first = export_onnx(_scaled(), (x,)).SerializeToString()
    second = export_onnx(_scaled(), (x,)).SerializeToString()
    after = _stat("onnx-graph")
    assert (after["miss"] - before["miss"], after["hit"] - before["hit"]) == (1, 1)
    assert first == second
    changed = _scaled()
    with torch.no_grad():
        changed.lin.bias += 1.0
    model = export_onnx(changed, (x,))
    assert _stat("onnx-graph")["miss"] - before["miss"] == 2
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, changed(x).numpy(), rtol=1e-6, atol=1e-6)  # never the old graph's output


@pytest.mark.onnx
def test_training_graph_exports_hit_for_the_same_graph_and_miss_for_a_changed_constant(cache, tmp_path):
    from compile_losses.training import export_loss_and_grad_onnx

    pred, target = torch.randn(6, 1), torch.randn(6, 1)
    before = _stat("onnx-graph")
    a = export_loss_and_grad_onnx(HuberLoss(delta=1.0), (pred, target), str(tmp_path / "a.onnx"))
    b = export_loss_and_grad_onnx(HuberLoss(delta=1.0), (pred, target), str(tmp_path / "b.onnx"))
    c = export_loss_and_grad_onnx(HuberLoss(delta=0.5), (pred, target), str(tmp_path / "c.onnx"))
    after = _stat("onnx-graph")
    assert (after["miss"] - before["miss"], after["hit"] - before["hit"]) == (2, 1)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert (tmp_path / "a.onnx").read_bytes() != (tmp_path / "c.onnx").read_bytes()
    assert a["inputs"] == b["inputs"] == c["inputs"]


# ---------------------------------------------------------------------------------------------
# graphs built ahead of time (compile_losses.fast.precompiled)
# ---------------------------------------------------------------------------------------------
def _graph_key(fn, *args: torch.Tensor) -> str:
    from torch.fx.experimental.proxy_tensor import make_fx

    return build_cache.graph_key(make_fx(fn)(*args), args)


@pytest.mark.parametrize("change", ["python constant", "closed-over tensor", "op", "shape", "dtype", "stride",
                                    "inductor config", "threads"])
def test_graph_key_misses_on_any_change_the_build_depends_on(cache, change):
    w, x = torch.randn(3, 4), torch.randn(5, 4)
    shift = torch.zeros(3)

    def make(scale: float = 2.0, c: torch.Tensor = shift):
        return lambda w, x: (x @ w.t()) * scale + c

    f = make()
    base = _graph_key(f, w, x)
    assert _graph_key(f, w, x) == base
    assert _graph_key(f, torch.randn(3, 4), torch.randn(5, 4)) == base  # other values of the inputs: same build
    if change == "python constant":
        assert _graph_key(make(scale=2.0000002), w, x) != base
    elif change == "closed-over tensor":
        other = shift.clone()
        other[1] = 1e-30
        assert _graph_key(make(c=other), w, x) != base
    elif change == "op":
        assert _graph_key(lambda w, x: torch.tanh(x @ w.t()) * 2.0 + shift, w, x) != base
    elif change == "shape":
        assert _graph_key(f, w, torch.randn(6, 4)) != base
    elif change == "dtype":
        assert _graph_key(f, w.double(), x.double()) != base
    elif change == "stride":
        assert _graph_key(f, w, torch.randn(4, 5).t()) != base
    elif change == "inductor config":
        import torch._inductor.config as config

        with config.patch(emulate_precision_casts=not config.emulate_precision_casts):
            assert _graph_key(f, w, x) != base
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(threads + 1)
        try:
            assert _graph_key(f, w, x) != base
        finally:
            torch.set_num_threads(threads)


_PRECOMPILED_CHILD = r"""
import json, sys
import torch
from compile_losses import build_cache
from compile_losses.backends import BACKENDS
from compile_losses.losses import HuberLoss
from compile_losses.nets import SeedNet
torch.manual_seed(0)
net, args = SeedNet(), (torch.randn(10, 32), torch.randn(10, 1))
step = BACKENDS["compile"].prepare_train_step(net, HuberLoss(delta=float(sys.argv[1])), args, 0.01)
out = step(*args)
torch.save({"loss": out.loss, "grads": out.grads, "new_params": out.new_params}, sys.argv[2])
from compile_losses.fast.precompiled import REFUSED
print(json.dumps({"stats": build_cache.STATS.get("precompiled", {}), "choice": step.choice, "refused": REFUSED,
                  "compiler_imported": "torch._inductor.compile_fx" in sys.modules}))
"""


@pytest.mark.compile
@pytest.mark.aoti
def test_a_precompiled_train_step_loads_in_a_later_process_without_inductors_compiler(cache, tmp_path):
    """A process asked to precompile builds the package; a later one runs it without importing
    inductor's compiler and gets bitwise the first one's step; a changed loss constant misses."""
    import json
    import subprocess
    import sys

    from compile_losses.backends import BACKENDS
    from compile_losses.fast import precompiled
    from compile_losses.losses import HuberLoss
    from compile_losses.training import train_step

    for name in ("compile", "aoti"):
        ok, reason = BACKENDS[name].available()
        if not ok:
            pytest.skip("{} unavailable: {}".format(name, reason))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def child(delta: str, out: str, precompile: bool) -> dict:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
                   PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop(precompiled.ENV, None)
        if precompile:
            env[precompiled.ENV] = "1"
        proc = subprocess.run([sys.executable, "-c", _PRECOMPILED_CHILD, delta, str(tmp_path / out)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first = child("1.0", "first.pt", precompile=True)
    assert first["choice"] == "compile" or pytest.skip("eager measured faster here: no compiled graph to precompile")
    assert first["stats"] == {"hit": 0, "miss": 1} and first["compiler_imported"] and not first["refused"], first
    assert len(list((cache / precompiled.KIND).rglob("*.pt2"))) == 1
    second = child("1.0", "second.pt", precompile=False)
    assert second["stats"] == {"hit": 1, "miss": 0} and not second["compiler_imported"]
    a, b = torch.load(str(tmp_path / "first.pt")), torch.load(str(tmp_path / "second.pt"))
    torch.testing.assert_close(b, a, rtol=0, atol=0)  # the same kernels: bitwise the same step

    third = child("0.5", "third.pt", precompile=False)  # another delta is another graph: never the old build
    assert third["stats"] == {"hit": 0, "miss": 1} and third["compiler_imported"]
    torch.manual_seed(0)
    from compile_losses.nets import SeedNet

    net, x, y = SeedNet(), torch.randn(10, 32), torch.randn(10, 1)
    want = train_step(net, HuberLoss(delta=0.5), 0.01)(dict(net.named_parameters()), x, y)
    got = torch.load(str(tmp_path / "third.pt"))
    torch.testing.assert_close(got["loss"], want.loss.detach())
    assert not torch.equal(got["loss"], a["loss"])


@pytest.mark.aoti
def test_a_package_is_stored_only_if_it_gives_inductors_outputs_bitwise(cache):
    from torch.fx.experimental.proxy_tensor import make_fx

    from compile_losses.backends import BACKENDS
    from compile_losses.fast import precompiled

    ok, reason = BACKENDS["aoti"].available()
    if not ok:
        pytest.skip("aoti unavailable: " + reason)
    x = torch.randn(4, 3)
    gm = make_fx(lambda x: x * 2.0 + 1.0)(x)
    key, form = build_cache.graph_key(gm, (x,)), precompiled.output_form(gm)
    assert form is torch.Tensor
    before = len(precompiled.REFUSED)
    off_by_one_ulp = lambda x: torch.nextafter(x * 2.0 + 1.0, torch.tensor(float("inf")))  # noqa: E731
    assert not precompiled.build(key, gm, (x,), off_by_one_ulp, form)
    assert "output 0 differs from inductor's build" in precompiled.REFUSED[before]
    assert not list(cache.rglob("*.pt2")) and precompiled.load(key, form) is None

    assert precompiled.build(key, gm, (x,), torch._inductor.compile(gm, [x]), form)
    loaded = precompiled.load(key, form)
    y = torch.randn(4, 3)
    torch.testing.assert_close(loaded(y), y * 2.0 + 1.0, rtol=0, atol=0)  # one tensor, as the graph returns
