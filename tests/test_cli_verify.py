"""``compile-losses verify`` in-process: exit 0 when every row passes, 1 on a failing row, 2 on bad usage."""
import json
import re
from pathlib import Path

import pytest

from compile_losses.backends import BACKENDS
from compile_losses.backends.eager import EagerBackend
from compile_losses.cli import main

QUICK = ["--backends", "eager,script", "--dtype", "float32", "--batch", "1,7", "--large", "0", "--no-audit", "--quiet"]


def test_verify_passes_and_writes_json(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "parity.json"
    assert main(["verify", "--loss", "huber", "--loss-arg", "delta=0.5", "--json", str(out)] + QUICK) == 0
    text = capsys.readouterr().out
    assert "seed+huber float32 batch=7" in text and "OK: 4 cases" in text
    data = json.loads(out.read_text())
    assert data["summary"]["ok"] is True
    assert data["summary"]["backends"]["script"]["pass_clause1"] + data["summary"]["backends"]["script"][
        "pass_clause2"] == sum(1 for r in data["rows"] if r["backend"] == "script")


def test_verify_a_user_net_and_loss_by_import_path(capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["verify", "--net", "compile_losses.nets:SeedNet", "--net-arg", "out_features=3", "--input", "float32[N,32]",
            "--loss", "torch.nn:CrossEntropyLoss", "--target", "int64[N]{0..2}"] + QUICK
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "compile_losses.nets:SeedNet+torch.nn:CrossEntropyLoss float32 batch=7" in out and "OK: 2 cases" in out


class _Off(EagerBackend):
    def prepare(self, module, example_inputs):  # type: ignore[no-untyped-def]
        inner = super().prepare(module, example_inputs)
        return lambda *a: inner(*a) * 1.01


def test_a_failing_row_exits_1(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(BACKENDS, "off", _Off("off"))
    args = ["verify", "--loss", "mse", "--backends", "eager,off", "--dtype", "float32", "--batch", "7", "--large", "0",
            "--no-audit", "--quiet"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "off loss" in out


@pytest.mark.parametrize("args, match", [
    (["--backends", "eager,tensorrt"], "unknown backend 'tensorrt'"),
    (["--loss", "nope"], "loss must be one of mse, "),
    (["--batch", "0"], "--batch must be comma-separated positive integers"),
    (["--dtype", "float8"], "--dtype must be comma-separated from"),
    (["--all", "--loss", "mse"], "not allowed with argument"),
    (["--all", "--loss-arg", "delta=1"], "--all and a list of losses run the registry's own settings"),
    (["--net", "x.y:Z"], "net 'x.y:Z': cannot import 'x.y'"),
    (["--input", "float32(N)", "--net", "none"], "tensor spec must look like"),
])
def test_bad_usage_exits_2(args, match, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["verify"] + args + ["--quiet", "--no-audit"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compile-losses: error: ") and match in err and len(err.strip().splitlines()) == 1


def test_list_shows_every_backend_with_availability(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[out.splitlines().index("backends ({}):".format(
        len(BACKENDS))) + 1:]}
    assert set(lines) == set(BACKENDS)
    for name, backend in BACKENDS.items():
        ok, reason = backend.available()
        assert lines[name].endswith("available" if ok else "unavailable: " + reason), lines[name]
        assert ("exported" in lines[name]) == backend.exported and ("reference" in lines[name]) == backend.reference


_LOSS_ARGS = ["--loss", "userpkg.models:ConfiguredLoss", "--loss-arg", "sigmoid=true", "--loss-arg", "scale=2",
              "--loss-arg", "name=wide", "--loss-arg", "cap=None", "--loss-arg", "offsets=[1, 2.5]",
              "--loss-args", '{"extra": {"a": [1, {"b": null}]}}']
_NET_ARGS = ["--net", "userpkg.models:TinyClassifier", "--net-arg", "classes=3", "--input", "float32[N,6]",
             "--target", "float32[N,3]"]


@pytest.mark.parametrize("verb", ["verify", "export"])
def test_init_arguments_parse_the_same_on_every_verb(verb, tmp_path, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    import compile_losses.resolve as resolve

    built = []
    real = resolve.coerce_init_args

    def spy(factory, kwargs, what, name):  # type: ignore[no-untyped-def]
        out = real(factory, kwargs, what, name)
        built.append(out)
        return out

    monkeypatch.setattr(resolve, "coerce_init_args", spy)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    argv = [verb] + _NET_ARGS + _LOSS_ARGS + (
        ["--backends", "eager", "--no-audit", "--batch", "3"] if verb == "verify" else
        ["--out", str(tmp_path / "m"), "--skip", "aoti,torchscript,training,parity"])
    assert main(argv + ["--quiet"]) == 0, capsys.readouterr().err
    loss_args = next(b for b in built if "sigmoid" in b)
    assert loss_args == {"sigmoid": True, "scale": 2.0, "name": "wide", "cap": None, "offsets": [1, 2.5],
                         "extra": {"a": [1, {"b": None}]}}
    assert isinstance(loss_args["scale"], float)


@pytest.mark.parametrize("args, message", [
    (["--loss-arg", "sigmoid=1"], r"loss 'userpkg.models:ConfiguredLoss': sigmoid must be bool, got 1 \(int\)"),
    (["--loss-arg", "scale=big"], r"scale must be float, got 'big' \(str\)"),
    (["--loss-arg", "sclae=2"], r"takes no argument 'sclae' \(it takes: sigmoid, scale, name, offsets, extra, cap\)"),
    (["--loss-args", '{"scale": 2}', "--loss-arg", "scale=3"], r"--loss-args and --loss-arg both give 'scale'"),
    (["--loss-arg", "scale=2", "--loss-arg", "scale=3"], r"--loss-arg gives 'scale' twice"),
])
@pytest.mark.parametrize("verb", ["verify", "export"])
def test_bad_init_arguments_are_named(verb, args, message, tmp_path, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    argv = [verb, "--net", "userpkg.models:TinyClassifier", "--input", "float32[N,6]", "--target", "float32[N,3]",
            "--loss", "userpkg.models:ConfiguredLoss", "--quiet"] + args
    if verb == "export":
        argv += ["--out", str(tmp_path / "m")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
