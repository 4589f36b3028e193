"""Warm workers: a per-process cache of built algorithms, so that a sweep worker's later jobs
reuse the compiled (traced) steps of an earlier job with the same graph.

Tracing a meta-training step, the meta-test adaptation and the scratch baseline costs a job
seconds, more than a short job's training. Everything that shapes those graphs is in the
cache key (:func:`key`): the algorithm's config less its :attr:`fed_values
<pipeline.config.AlgorithmConfig.fed_values>` (step sizes the steps read from variables), the
model, the optimizer less a constant learning rate (a Keras variable), the iteration count
(schedules and annealing bake it in), the loss, the data's input shape and outputs, XLA.
A hit hands back the cached algorithm after :meth:`Algorithm.adopt
<pipeline.algorithms.base.Algorithm.adopt>` has given it the new job's freshly built state,
so the job computes exactly what a cold run computes (tests/test_launcher.py holds that,
bit for bit). One algorithm object serves one use per job (a job that builds two of the same
key gets two).

Off by default: only the project's launcher turns it on in its workers (:func:`enable`), which
also call :func:`new_job` before each job. Single runs, tests and the basic launcher build
every algorithm afresh, as before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import OrderedDict
from typing import Any

from pipeline.algorithms import Algorithm

log = logging.getLogger(__name__)

#: Most algorithms kept per process (least recently used dropped first): a large image model
#: with its optimizer slots is hundreds of MB.
MAX_ENTRIES = 4

_enabled = False
_cache: OrderedDict[str, list[Algorithm]] = OrderedDict()
_in_use: set[int] = set()
#: What the current job got: reused compiled steps (True) or built anew (False), per
#: algorithm name.
reused: dict[str, bool] = {}
#: When the current job was handed to this worker (``time.time()``; None outside a worker).
assigned_at: float | None = None


def enable(on: bool = True) -> None:
    """Keep built algorithms for later jobs of this process (a warm worker)."""
    global _enabled
    _enabled = on
    if not on:
        _cache.clear()
        _in_use.clear()


def enabled() -> bool:
    return _enabled


def new_job(assigned: float | None = None) -> None:
    """A new job starts in this process (handed to it at ``assigned``): every cached algorithm
    is free for it again."""
    global assigned_at
    _in_use.clear()
    reused.clear()
    assigned_at = assigned


def key(*parts: Any) -> str:
    """A cache key of config dataclasses and plain values (dataclasses by their fields)."""
    def plain(p: Any) -> Any:
        return dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p
    return json.dumps([plain(p) for p in parts], sort_keys=True, default=repr)


def reuse(cache_key: str, fresh: Algorithm) -> Algorithm:
    """The algorithm this job uses: a cached one of the same key, given ``fresh``'s state, or
    (a miss, or the cache off) ``fresh`` itself, kept for later jobs."""
    if not _enabled:
        return fresh
    entries = _cache.setdefault(cache_key, [])
    _cache.move_to_end(cache_key)
    for algo in entries:
        if id(algo) not in _in_use and algo.adopt(fresh):
            _in_use.add(id(algo))
            reused[fresh.name] = True
            log.info("warm worker: %s reuses the compiled steps of an earlier job", fresh.name)
            return algo
    entries.append(fresh)
    _in_use.add(id(fresh))
    reused[fresh.name] = False
    while sum(len(v) for v in _cache.values()) > MAX_ENTRIES:
        oldest = next(iter(_cache))
        dropped = [a for a in _cache[oldest] if id(a) not in _in_use]
        if not dropped:
            break
        _cache[oldest].remove(dropped[0])
        if not _cache[oldest]:
            del _cache[oldest]
    return fresh
