"""``verify --jobs N``: the registry matrix in N worker processes, merged into one report whose rows,
in order, and numbers are those of a serial ``verify_registry`` run.

The work is cut into units that ``verify_registry`` itself runs with narrowed arguments, so that a
unit computes exactly what the serial run computes for it: one (loss, net or alone, dtype) case
with all its batch sizes, each larger net with its loss in one dtype, and each loss's compile audit.
The units are listed in the serial run's order; the parent puts the workers' reports back in that
order (parity rows first, then the audits and their failing rows, as ``verify_registry`` does).
``tests/test_parity_jobs.py`` checks serial and parallel reports row for row.

Workers are started with ``spawn`` (each imports torch itself: no fork of a process whose torch
has started threads) and keep the parent's torch thread count, so reductions split the same way and
the numbers agree to the bit; with N jobs on N cores pass ``OMP_NUM_THREADS=1`` (or fewer jobs) to
avoid oversubscription. Backends registered at run time in the parent (not by importing
``compile_losses``) are not seen by the workers.
"""
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .progress import Progress
from .report import ParityReport

Unit = Tuple[str, str, Dict[str, Any]]  # (kind "parity" | "audit", label, verify_registry keyword arguments)


def plan_units(losses: Optional[Sequence[str]] = None, net: Optional[str] = "seed", alone: bool = True,
               net_cases: bool = True, batches: Sequence[int] = (1, 7, 64), large: int = 2 ** 20,
               dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
               backends: Optional[Sequence[str]] = None, audit: bool = True, lr: float = 0.01,
               strict_audit: bool = False, autocasts: Sequence[Optional[torch.dtype]] = (None,),
               settings_grid: Sequence[Dict[str, Any]] = ({},), dynamic_dims: bool = False) -> List[Unit]:
    """The serial run of ``verify_registry`` with these arguments, as units in its order."""
    from ..backends import get_backends
    from ..registry import LOSSES, NETS
    from .audit import audited

    names = list(LOSSES) if losses is None else list(losses)
    common = dict(batches=list(batches), large=large, backends=backends, lr=lr, net_cases=False,
                  autocasts=list(autocasts), settings_grid=list(settings_grid), dynamic_dims=dynamic_dims)
    units: List[Unit] = []
    has_net = net not in (None, "none")
    for loss_name in names:
        for case_net in ([net] if has_net else []) + ([None] if alone else []):
            for dtype in dtypes:
                # net given and alone=False: only the net case; net=None and alone=True: only alone
                units.append(("parity", "{} {} {}".format(case_net or "alone", loss_name, str(dtype)[6:]),
                              dict(common, losses=[loss_name], net=case_net, alone=case_net is None, dtypes=[dtype],
                                   audit=False)))
    if net_cases and losses is None:
        for net_spec in NETS.values():
            if net_spec.name != net:
                units += [("parity", "{} {} {}".format(net_spec.name, net_spec.loss, str(dtype)[6:]),
                           dict(common, losses=[net_spec.loss], net=net_spec.name, alone=False, dtypes=[dtype],
                                audit=False)) for dtype in dtypes]
    if audit and audited(get_backends(backends)) is not None:
        units += [("audit", "compile audit {}".format(n), dict(common, losses=[n], net=None, alone=False, audit=True,
                                                                  strict_audit=strict_audit))
                  for n in names if n in LOSSES]
    return units


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_unit(kwargs: Dict[str, Any]) -> ParityReport:
    from .verify import verify_registry

    return verify_registry(progress=None, **kwargs)


def verify_registry_jobs(jobs: int, progress: Any = None, **kwargs: Any) -> ParityReport:
    """``verify_registry(**kwargs)`` in ``jobs`` worker processes (``jobs`` >= 1; 1 still uses one
    worker, which is how the merge is tested against the serial run)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError("jobs must be a positive integer, got {!r}".format(jobs))
    units = plan_units(**kwargs)
    start = time.perf_counter()
    results: Dict[int, ParityReport] = {}
    bar = Progress(len(units), None if progress is True else progress) if progress else None
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, max(len(units), 1)), mp_context=ctx, initializer=_init_worker,
                             initargs=(torch.get_num_threads(),)) as pool:
        futures = {pool.submit(_run_unit, unit[2]): i for i, unit in enumerate(units)}
        try:
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                if bar:
                    bar.step(units[i][1])
        except BaseException:  # Ctrl-C or a crashed worker: do not wait for the queue to drain
            for future in futures:
                future.cancel()
            raise
        finally:
            if bar:
                bar.close()
    report = ParityReport()
    audit_rows = []
    for i, (kind, _, _) in enumerate(units):
        part = results[i]
        if kind == "audit":
            report.audits += part.audits
            audit_rows += part.rows
        else:
            report.rows += part.rows
            report.cases += part.cases
    report.rows += audit_rows
    report.seconds = time.perf_counter() - start
    return report


def default_jobs() -> int:
    """What ``--jobs 0`` means: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
