"""Why a user's module cannot be exported, in one line: the op, the module's class and the user's
source line, instead of the exporters' pages of advice and graph dumps.

Shared by every exporter path (the forward and loss graphs, the training graphs, AOTInductor):

    raise unsupported(exc, module, "forward graph", example)   # -> ExportUnsupportedError

The op comes from the exporter's own message (``No ONNX function found for <OpOverload(op=...)>``);
the source line from the first frame of the exception's text that lies outside torch, the exporters,
the standard library and this package (torch.export prints the user's frame for data-dependent
control flow), else from the innermost such frame of the exception's traceback (the tracers run the
user's code as Python), else from the ``stack_trace`` that ``torch.export`` records on the graph
node using that op.
"""
import contextlib
import os
import re
import sys
import sysconfig
import tempfile
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from .errors import ExportUnsupportedError

__all__ = ["unsupported", "script_unsupported", "script_miscompiled", "traceback_frame", "user_frame", "module_label", "quiet_failure"]

_NO_ONNX = re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)', overload='(\w+)'\)>")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in ([\w<>.]+)\n[ \t]*([^\n]*)')
_DATA_DEPENDENT = ("data-dependent", "GuardOnDataDependentSymNode", "_local_scalar_dense", "item()")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def module_label(module: Any) -> str:
    """``package.module.Class``; a (net, loss) pair as ``net + loss``."""
    net, loss = getattr(module, "net", None), getattr(module, "loss", None)
    if net is not None and loss is not None and type(module).__name__.startswith("NetWithLoss"):
        return "{} + {}".format(module_label(net), module_label(loss))
    cls = type(module)
    return "{}.{}".format(cls.__module__, cls.__qualname__)


def _not_user_dirs() -> Tuple[str, ...]:
    dirs = [os.path.dirname(os.path.abspath(__file__)), sysconfig.get_paths()["stdlib"]]
    for name in ("torch", "onnxscript", "onnx", "onnx_ir", "functorch", "sympy"):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        dirs.append(os.path.dirname(os.path.abspath(mod.__file__)))
    return tuple(d + os.sep for d in dirs)


def user_frame(text: str) -> Optional[str]:
    """``path:line: code`` of the last frame in ``text`` that is the user's (outside torch, the
    exporters, the standard library and compile_losses), or None."""
    skip = _not_user_dirs()
    frames = [m for m in _FRAME.finditer(text)
              if not os.path.abspath(m.group(1)).startswith(skip) and not m.group(1).startswith("<")]
    if not frames:
        return None
    m = frames[-1]
    return "{}:{}: {}".format(m.group(1), m.group(2), m.group(4).strip())


def traceback_frame(exc: BaseException, limit: int = 10) -> Optional[str]:
    """``path:line: code`` of the innermost frame of the user's in the tracebacks of ``exc`` and
    the exceptions it was raised from, or None: where the user's code was running when a tracer
    (``make_fx``, ``torch.export``'s non-strict mode, which run it as Python) failed, when the
    message itself names no frame."""
    import traceback

    skip = _not_user_dirs()
    seen: Optional[BaseException] = exc
    depth = 0
    while seen is not None and depth < limit:
        frames = [f for f in traceback.extract_tb(seen.__traceback__)
                  if not f.filename.startswith("<") and not os.path.abspath(f.filename).startswith(skip)]
        if frames:
            f = frames[-1]
            return "{}:{}: {}".format(f.filename, f.lineno, (f.line or "").strip())
        seen = seen.__cause__ or seen.__context__
        depth += 1
    return None


def _chain(exc: BaseException, limit: int = 10) -> str:
    parts: List[str] = []
    seen: Optional[BaseException] = exc
    while seen is not None and len(parts) < limit:
        parts.append(_ANSI.sub("", str(seen)))
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def _op_source(module: Any, example: Sequence[Any], op: str) -> Optional[str]:
    """The user's line that calls ``op``, from the stack trace torch.export records on its node."""
    try:
        import torch

        program = torch.export.export(module, tuple(example), strict=False)
    except Exception:  # the op's line is a courtesy; an export that fails here tells nothing more
        return None
    for node in program.graph.nodes:
        if node.op == "call_function" and str(node.target) == op:
            trace = node.meta.get("stack_trace") or ""
            found = user_frame(trace)
            if found:
                return found
    return None


def _summary(text: str) -> str:
    # The exporter's message is a page of advice; its "Exception summary" names the real cause.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1:]
    return lines[0][:300] if lines else ""


def unsupported(exc: BaseException, module: Any, what: str, example: Optional[Sequence[Any]] = None,
                opset: Optional[int] = None) -> ExportUnsupportedError:
    """One line that says which op (or which construct), in which class, at which line of the
    user's code, keeps ``module`` (the loss, or the net) from being exported as ``what``."""
    import torch

    text = _chain(exc)
    label = module_label(module)
    match = _NO_ONNX.search(text)
    op = "{}.{}".format(match.group(1), match.group(2)) if match else None
    where = user_frame(text) or traceback_frame(exc)
    if op and where is None and example is not None:
        where = _op_source(module, example, op)
    at = " at {}".format(where) if where else ""
    if op:
        message = "{} cannot be exported ({}): it uses {}{}, which has no ONNX form in torch {}{}".format(
            label, what, op, at, torch.__version__, " (opset {})".format(opset) if opset else "")
    elif any(k in text for k in _DATA_DEPENDENT):
        message = ("{} cannot be exported ({}): Python control flow or a shape that depends on a tensor's "
                   "values{} (write it with torch.where or masks)".format(label, what, at))
    else:
        detail = _summary(text) or type(exc).__name__
        if "Constraints violated" in text or "specializ" in text:
            detail = "the graph does not allow a dynamic batch dimension: " + detail
        message = "{} cannot be exported ({}){}: {}: {}".format(label, what, at, type(exc).__name__, detail)
    return ExportUnsupportedError(message, op=op, loss=label, source=where)


_SCRIPT_FRAME = re.compile(r'File "([^"]+)", line (\d+)\n(.*?)<--- HERE', re.S)


def script_frame(text: str) -> Optional[str]:
    """``path:line: code`` of the first frame TorchScript's compiler points at (the line above its
    ``~~~ <--- HERE`` marker), or None."""
    match = _SCRIPT_FRAME.search(text)
    if not match:
        return None
    code = [line.strip() for line in match.group(3).splitlines() if line.strip()]
    code = [line for line in code if not set(line) <= set("~^ ")]
    path, line = match.group(1), int(match.group(2))
    # the marked line is the last code line before the marker; ``line`` is its number
    return "{}:{}: {}".format(path, line, code[-1] if code else "")


def script_unsupported(exc: BaseException, module: Any) -> ExportUnsupportedError:
    """One line that says why ``torch.jit.script`` cannot compile ``module``: TorchScript's own
    message (its first line) and the user's source line it points at."""
    text = _ANSI.sub("", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0].rstrip(":") if lines else type(exc).__name__
    where = script_frame(text)
    label = module_label(module)
    message = "{} cannot be compiled by TorchScript{}: {}".format(label, " at {}".format(where) if where else "",
                                                                  reason[:300])
    return ExportUnsupportedError(message, loss=label, source=where)


# TorchScript folds ``str(member)`` (and formats) of an Enum member to the constant
# "Enum<Class.MEMBER>", where Python gives "Class.MEMBER" or, for a str-valued Enum, its value: a
# comparison with it then silently takes another branch than eager (monai's GeneralizedDiceLoss
# compares ``self.w_type == str(Weight.SQUARE)`` and weighs every class by ones when scripted).
_ENUM_STR = re.compile(r"Enum<[A-Za-z_][\w.]*>")
_GRAPH_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _string_constants(block: Any) -> Iterator[Any]:
    for node in block.nodes():
        if node.kind() == "prim::Constant" and node.hasAttribute("value") and node.kindOf("value") == "s":
            yield node
        for inner in node.blocks():
            yield from _string_constants(inner)


def script_miscompiled(scripted: Any, module: Any) -> Optional[ExportUnsupportedError]:
    """The error to raise when the scripted ``module`` holds a construct TorchScript compiles to
    other values than Python (today: ``str()`` of an Enum member, read off the graph that
    ``forward`` runs, callees inlined), naming the user's line; None when it holds none."""
    import linecache

    try:
        graph = scripted.forward.inlined_graph
    except (AttributeError, RuntimeError):  # nothing to read: nothing found
        return None
    for node in _string_constants(graph):
        value = node.s("value")
        if not _ENUM_STR.fullmatch(value):
            continue
        where = None
        for use in node.output().uses():  # the constant has no source range; its users do
            match = _GRAPH_FRAME.search(use.user.sourceRange())
            if match:
                path, line = match.group(1), int(match.group(2))
                where = "{}:{}: {}".format(path, line, linecache.getline(path, line).strip())
                break
        label = module_label(module)
        message = ("{} is miscompiled by TorchScript{}: str() of an Enum member becomes the constant {!r}, not what "
                   "Python gives, so the scripted code takes another branch than eager").format(
            label, " at {}".format(where) if where else "", value)
        return ExportUnsupportedError(message, loss=label, source=where)
    return None


@contextlib.contextmanager
def quiet_failure() -> Iterator[None]:
    """Hold what the block writes to stderr, at the file-descriptor level and through
    ``sys.stderr`` (torch prints graph dumps there when an export fails); replay it if the block
    succeeds, drop it if it raises (the raised error says what went wrong in one line)."""
    import io

    try:
        sys.stderr.flush()
        saved: Optional[int] = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded): hold the Python stream only
        saved = None
    stream, buffer = sys.stderr, io.StringIO()
    with tempfile.TemporaryFile() as held:
        if saved is not None:
            os.dup2(held.fileno(), 2)
        sys.stderr = buffer
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr = stream
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            if not failed:
                held.seek(0)
                text = held.read()
                if text:
                    os.write(2, text)
                if buffer.getvalue():
                    stream.write(buffer.getvalue())
