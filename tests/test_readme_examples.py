"""Every command in the README runs as written.

The ``compile-losses`` commands of README.md's ``bash`` blocks are extracted and run in-process
(``compile_losses.cli.main``). By default each is parsed by the CLI and its net, loss and specs
are built and run once in eager (cheap); run as written they are ``slow`` (CI), exports into a
temporary ``--out`` and without the AOTInductor build (the README's Bundles section says it costs
20-40 s), benchmarks ``exhaustive`` (minutes each). The ``python`` blocks run too, each as its
kind allows (a test file through pytest with the plugin), or are listed below with the reason
they cannot run alone."""
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from compile_losses.backends import BACKENDS
from compile_losses.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(lang: str) -> List[str]:
    return [body for kind, body in _BLOCK.findall(README) if kind == lang]


def readme_commands() -> List[List[str]]:
    """Each ``compile-losses`` command of the bash blocks, as argv (continuations joined, comments dropped)."""
    commands = []
    for body in _blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "compile-losses":
                commands.append(words[1:])
    return commands


COMMANDS = readme_commands()
# python blocks that are fragments of a session, not programs: the first line, and why
FRAGMENTS = {"import compile_losses as cl": "the API tour: x, target, x_np, pred_np are the reader's data"}


def _id(argv: List[str]) -> str:
    return " ".join(argv)[:60]


def test_the_readme_has_commands_to_check() -> None:
    verbs = {argv[0] for argv in COMMANDS}
    assert {"export", "verify", "bench"} <= verbs, COMMANDS


@pytest.mark.parametrize("argv", COMMANDS, ids=_id)
def test_a_readme_command_parses_and_its_case_builds(argv: List[str]) -> None:
    """The CLI takes the command's flags, and for verify and export its net, loss, init arguments
    and specs make a case that eager runs."""
    args = build_parser(argv[0]).parse_args(argv)
    if argv[0] not in ("verify", "export"):
        return
    from compile_losses.cli._args import init_kwargs
    from compile_losses.resolve import make_case

    loss = args.loss
    if loss is None or "," in loss:
        return  # the registry's own cases
    case = make_case(None if args.net == "none" else args.net, loss, batch=3, input_specs=args.input or None,
                     target_specs=args.target or None, net_kwargs=init_kwargs(args, "net") or {},
                     loss_kwargs=init_kwargs(args, "loss") or {})
    pred = case.inputs[0] if case.net is None else case.net(*case.inputs)
    value = case.loss(pred, *case.targets)  # a scalar, or an unreduced loss (reduction "none")
    assert bool(value.isfinite().all())


def _as_run(argv: List[str], tmp_path: Path) -> List[str]:
    """The command as run here."""
    argv = list(argv)
    if argv[0] == "export":
        if "--out" in argv:
            argv[argv.index("--out") + 1] = str(tmp_path)
        else:
            argv += ["--out", str(tmp_path)]
        argv += ["--no-aoti", "--quiet"]
    elif argv[0] == "verify":
        argv += ["--quiet", "--json", str(tmp_path / "parity.json")]
    return argv


def _marks(argv: List[str]) -> List[object]:
    if argv[0] == "bench":
        return [pytest.mark.exhaustive]
    return [pytest.mark.slow]


@pytest.mark.parametrize("argv", [pytest.param(a, marks=_marks(a), id=_id(a)) for a in COMMANDS])
def test_a_readme_command_runs_as_written(argv: List[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # anything a command writes by default lands here
    run = _as_run(argv, tmp_path)
    assert main(run) == 0, run


def _python_params() -> List[object]:
    params = []
    for body in _blocks("python"):
        first = body.splitlines()[0]
        user_tests = bool(re.search(r"^def test_", body, re.M))  # a test file: pytest with the plugin
        marks = [pytest.mark.slow]  # a fresh process that imports torch: 3-6 s
        if first in FRAGMENTS:
            marks = [pytest.mark.skip(reason="fragment: {}".format(FRAGMENTS[first]))]
        params.append(pytest.param(body, user_tests, marks=marks, id=first[:50]))
    return params


@pytest.mark.parametrize("body, user_tests", _python_params())
def test_a_readme_python_block_runs(body: str, user_tests: bool, tmp_path: Path) -> None:
    if user_tests:
        (tmp_path / "test_readme_block.py").write_text(body)
        cheap = ",".join(n for n, b in BACKENDS.items() if b.device == "cpu" and (b.reference or b.cost <= 0.5))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "compile_losses.pytest_plugin",
               "--compile-losses-backends", cheap, "--rootdir", str(tmp_path), "test_readme_block.py"]
    else:
        cmd = [sys.executable, "-c", body]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_env())
    assert run.returncode == 0, run.stdout + run.stderr


def _env() -> dict:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("GITHUB_STEP_SUMMARY", None)
    return dict(env, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
