"""Converting a table's items in several processes at once, before any of them is timed.

A deployment backend's converter (litert-torch, ExecuTorch's ``to_edge``) spends about two
seconds of one core in ``torch.export`` decompositions for every unit, so converting the
several hundred units of a search space's table is most of the table's build time, while
timing them is a few hundred milliseconds each. Conversion is independent per unit and
writes into the on-disk cache of :class:`nas.cost.backend_items.BackendItems`, so it runs in
a pool of worker processes; the timing that follows stays in one process, on an otherwise
idle machine (the pool has exited by then).

How many processes: ``$NAS_CONVERT_WORKERS`` when set, else the cores this process may run
on, at most :data:`DEFAULT_MAX_WORKERS` (each worker holds a converter and a whole network's
graph: a gigabyte or two). A pool only starts for :data:`MIN_ITEMS_PER_WORKER` items a worker or more: each worker
first spends seconds importing torch and the converter.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from nas.config import ConfigError

log = logging.getLogger(__name__)

WORKERS_ENV = "NAS_CONVERT_WORKERS"
MIN_ITEMS_PER_WORKER = 4
DEFAULT_MAX_WORKERS = 8

_worker_items: Any = None  # the worker process's BackendItems (set by _start_worker)


def convert_workers() -> int:
    """Processes that convert at once: ``$NAS_CONVERT_WORKERS``, else the usable cores (at
    most :data:`DEFAULT_MAX_WORKERS`)."""
    raw = os.environ.get(WORKERS_ENV)
    if raw is None or raw == "":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return min(cores, DEFAULT_MAX_WORKERS)
    try:
        workers = int(raw)
    except ValueError:
        workers = 0
    if workers < 1:
        raise ConfigError(f"{WORKERS_ENV} must be a whole number of processes, 1 or more; got {raw!r}")
    return workers


def pool_size(items: int, workers: int | None = None) -> int:
    """The worker processes worth starting for ``items`` conversions (1: convert in this
    process)."""
    workers = convert_workers() if workers is None else workers
    return max(1, min(workers, items // MIN_ITEMS_PER_WORKER))


def picklable(*objects: Any) -> bool:
    """Whether ``objects`` (a builder, a factory) can be sent to a worker process."""
    try:
        pickle.dumps(objects)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def _start_worker(make_items: Callable[[], Any]) -> None:
    global _worker_items
    import torch

    torch.set_num_threads(1)  # one core a worker: the pool already uses them all
    _worker_items = make_items()


def _convert(name: str) -> str:
    _worker_items.artifact(name)
    return name


def convert_in_pool(names: Sequence[str], workers: int, make_items: Callable[[], Any], *,
                    done: Callable[[str], None] | None = None) -> None:
    """Convert ``names`` with ``workers`` spawned processes, each calling ``artifact(name)``
    on its own ``make_items()`` (a picklable factory of a
    :class:`nas.cost.backend_items.BackendItems` on the shared cache folder). A converter's
    error (a :class:`nas.cost.backends.ConversionError` naming the unit) is raised here; what
    was converted before it stays cached."""
    log.info("converting %d item(s) in %d processes (%s=%d)", len(names), workers, WORKERS_ENV, workers)
    # spawn, not fork: the parent may hold torch's thread pools and a converter's state.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(make_items,)) as pool:
        try:
            for name in pool.map(_convert, names, chunksize=1):
                if done is not None:
                    done(name)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


__all__ = ["DEFAULT_MAX_WORKERS", "MIN_ITEMS_PER_WORKER", "WORKERS_ENV", "convert_in_pool", "convert_workers", "picklable",
           "pool_size"]
