"""The one place onnxruntime sessions are made (providers, threads, optimization level), for the
onnx backends, the training graphs and the benchmarks alike, so that parity and benchmark figures
of every kind of graph are taken under the same settings. Imports only onnxruntime.

One intra-op thread (and one inter-op thread) by default: a parity result must not depend on how
many cores the machine has, nor compete for a shared machine's cores. ``threads=0`` is
onnxruntime's own default (all cores).
"""
from typing import Any, Dict, Optional, Tuple, Union

__all__ = ["INTRA_OP_THREADS", "OPT_LEVELS", "DEFAULT_OPT_LEVEL", "session_options", "ort_session", "check_ort_settings",
           "cuda_provider_options"]

INTRA_OP_THREADS = 1
OPT_LEVELS = ("disabled", "basic", "extended", "all")
DEFAULT_OPT_LEVEL = "all"  # onnxruntime's own default, what an unset opt_level means


def check_ort_settings(opt_level: Optional[str], threads: int) -> None:
    """Refuse an unknown optimization level or a bad thread count before any session is made."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ValueError("threads must be an integer >= 0 (0: all cores), got {!r}".format(threads))
    if opt_level is not None and opt_level not in OPT_LEVELS:
        raise ValueError("opt_level must be one of {}, got {!r}".format(list(OPT_LEVELS), opt_level))


def session_options(threads: int = INTRA_OP_THREADS, opt_level: Optional[str] = None, log_level: int = 3) -> Any:
    """``onnxruntime.SessionOptions`` with the project's settings; ``opt_level`` one of
    :data:`OPT_LEVELS` (default: onnxruntime's, ``all``); ``log_level`` onnxruntime's severity
    (3 errors, 4 fatal only)."""
    import onnxruntime as ort

    check_ort_settings(opt_level, threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = log_level
    if opt_level is not None:
        levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        options.graph_optimization_level = levels[opt_level]
    return options


def ort_session(model: bytes, provider: Union[str, Tuple[str, Dict[str, str]]] = "CPUExecutionProvider",
                threads: int = INTRA_OP_THREADS, opt_level: Optional[str] = None) -> Any:
    """An ``onnxruntime.InferenceSession`` over serialized ``model`` bytes with :func:`session_options`;
    ``provider`` a provider name, or ``(name, provider options)`` as onnxruntime takes them."""
    import onnxruntime as ort

    name = provider if isinstance(provider, str) else provider[0]
    available = ort.get_available_providers()
    if name not in available:
        raise ValueError("provider must be one of the onnxruntime providers available here {}, got {!r}".format(
            available, name))
    return ort.InferenceSession(model, session_options(threads, opt_level), providers=[provider])


def cuda_provider_options(tf32: bool) -> Dict[str, str]:
    """The CUDA provider's options for the project's settings: ``use_tf32`` (onnxruntime's default
    is on; the CUDA adapters default to off, as their float32 reference)."""
    if not isinstance(tf32, bool):
        raise ValueError("tf32 must be True or False, got {!r}".format(tf32))
    return {"use_tf32": "1" if tf32 else "0"}
