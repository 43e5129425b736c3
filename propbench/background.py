"""Finish a sweep job's folder in a forked child while the sweep goes on.

Drawing a run's figure costs ~0.2 s of single-threaded matplotlib, as much as Hydra's
composition and a tiny network's probe together. In a sweep run by Hydra's basic launcher
(one process, one job after another) the job's last steps -- the figure, then
``summary.json``, which marks the folder complete -- can run in a child forked after the
statistics are written, on another core, while the parent starts the next job. The child
shares the parent's memory copy-on-write (matplotlib already imported, nothing to pickle)
and leaves with ``os._exit`` so that none of the parent's exit handlers run twice. A child
that fails writes the job's ``error.json`` instead, so the folder never looks complete
without being so. At most ``MAX_CHILDREN`` run at once; :func:`wait_all` (called before a
sweep is aggregated, and at exit) waits for the rest.

Only on Linux (``os.fork`` after torch's thread pools exist is safe there as long as the
child does not call torch, which this one does not); elsewhere :func:`submit` runs the
work in place.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import traceback
import warnings
from typing import Callable

MAX_CHILDREN = max(1, min(2, (os.cpu_count() or 2) - 1))
_pending: list[int] = []
_warm = False  # has a work run in this process (and left its caches behind)?


def available() -> bool:
    return sys.platform == "linux" and hasattr(os, "fork")


def pending() -> int:
    """Children still finishing a job."""
    _reap(block=False)
    return len(_pending)


def _reap(block: bool) -> None:
    for pid in list(_pending):
        done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
        if done:
            _pending.remove(pid)


def submit(work: Callable[[], None], on_error: Callable[[BaseException, str], None]) -> None:
    """Run ``work()`` in a forked child; if it raises, ``on_error(err, traceback_text)``
    runs in that child. The first work of a process runs in place (as does all of it where
    fork is unavailable): what it loads -- fonts, glyph and mathtext caches, ~0.5 s -- is
    then inherited by every child instead of being loaded again in each."""
    global _warm
    if not (available() and _warm):
        work()
        _warm = True
        if available():  # what exists now lives as long as the process: keep the collector
            gc.collect()  # of the parent, too, off the pages it will share with children
            gc.freeze()
        return
    while pending() >= MAX_CHILDREN:
        os.waitpid(_pending.pop(0), 0)
    sys.stdout.flush()
    sys.stderr.flush()
    with warnings.catch_warnings():  # Python >= 3.12 warns of forking with threads alive
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid:
        _pending.append(pid)
        return
    gc.disable()  # a collection would touch, and so copy, every page shared with the parent
    status = 0
    try:
        work()
    except BaseException as err:  # noqa: BLE001 -- the child reports, then leaves
        status = 1
        try:
            on_error(err, traceback.format_exc())
        except BaseException:  # noqa: BLE001
            status = 2
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def wait_all() -> None:
    """Wait for every child to finish its job's folder."""
    _reap(block=True)


atexit.register(wait_all)
