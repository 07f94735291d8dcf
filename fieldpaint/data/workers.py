"""Run a function over many inputs here or in spawned worker processes, one torch thread each.

Used by the Kolmogorov generator: MKL's FFTs round differently with more threads, and two
intra-op threads measured 1.3-1.6x faster than one on an idle 2-core machine but 4x slower when
other jobs share it (OpenMP barriers spin), where separate processes degrade gracefully. Workers
report progress through a queue, and exit when their parent dies (a killed parent cannot shut
its pool down).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

import torch

from fieldpaint.runtime import torch_threads

_worker_queue = None


def map_in_workers(fn: Callable, calls: Sequence[tuple], workers: int, report: Callable[[int], object]) -> list:
    """[fn(*args, report) for args in calls], here (workers == 1) or in `workers` spawned processes;
    `fn` must be a module-level function (it is pickled), `report(n)` is called in this process."""
    if workers == 1:
        with torch_threads(1):
            return [fn(*args, report) for args in calls]
    context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has threads
    queue = context.Queue()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(queue, os.getpid())) as pool:
        futures = [pool.submit(_call_in_worker, fn, args) for args in calls]
        pending = set(futures)
        try:
            while pending:
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                while not queue.empty():
                    report(queue.get())
                failed = [f for f in futures if f.done() and f.exception() is not None]
                if failed:
                    raise failed[0].exception()  # a worker's ConfigError, e.g. a blow-up
            return [f.result() for f in futures]
        finally:
            pool.shutdown(cancel_futures=True)


def _init_worker(queue, parent: int) -> None:
    global _worker_queue
    _worker_queue = queue
    torch.set_num_threads(1)
    # the parent's pid from the parent itself: it may have died while this worker was starting
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """A worker whose parent was killed (SIGTERM, SIGKILL: no chance to shut the pool down) is
    re-parented; it then exits instead of working on, unseen, for minutes."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _call_in_worker(fn: Callable, args: tuple):
    return fn(*args, _worker_queue.put)
