"""Meta-training checkpoints: enough state to continue a run bit for bit.

A checkpoint holds every variable the algorithm updates (meta-parameters, the meta-optimizer's
slots and step counter, batch-norm statistics, algorithm counters), the task-sampling RNG state,
the number of meta-iterations done, what the meta-train stage had not logged yet (the open
window of its curves) and, with model selection, the validation history and the best weights.
It is taken at a chunk boundary: signals are held back while a compiled chunk runs and its
metrics (and validation) are recorded, so the variables, the recorded iteration and the logged
curves always agree. One is also written when meta-training ends, so a run stopped
during meta-test resumes straight at meta-test.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

STATE_FILE, META_FILE = "state.npz", "checkpoint.json"
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class CheckpointError(PipelineError, ValueError):
    """A checkpoint does not fit the run it should continue."""


@dataclass
class Progress:
    """Where meta-training stands: iterations done and the sampling RNG's state after them."""

    iteration: int
    rng_state: dict[str, Any]


@dataclass
class Checkpoint:
    progress: Progress
    values: list[np.ndarray]
    names: list[str]
    #: The meta-train stage's own state (JSON): values of the curves' open window, the
    #: validation history and which iteration scored best.
    extra: dict[str, Any] = field(default_factory=dict)
    #: The best-scoring weights so far (model selection), in ``Algorithm.model_state`` order.
    best: list[np.ndarray] = field(default_factory=list)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM back until the block ends, then act on them (main thread only).

    A thread mask would not do: TensorFlow's own threads can take the signal, and Python then
    runs the handler at the main thread's next bytecode, inside the block. So the handlers are
    swapped for one that only records the signal, and the real ones run after the block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if received:
            handler = old[received[0]]
            if callable(handler):
                handler(received[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(received[0])


def capture(variables: list, progress: Progress, extra: dict[str, Any] | None = None,
            best: list[np.ndarray] | None = None) -> Checkpoint:
    return Checkpoint(progress, [np.array(v.numpy()) for v in variables],
                      [getattr(v, "path", getattr(v, "name", "?")) for v in variables],
                      dict(extra or {}), list(best or []))


def save(ckpt: Checkpoint, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / STATE_FILE, *ckpt.values,
             **{f"best_{i}": a for i, a in enumerate(ckpt.best)})
    meta = {"iteration": ckpt.progress.iteration, "rng_state": ckpt.progress.rng_state,
            "names": ckpt.names, "extra": ckpt.extra}
    (directory / META_FILE).write_text(json.dumps(meta, indent=1))
    return directory


def load(directory: Path) -> Checkpoint:
    try:
        meta = json.loads((Path(directory) / META_FILE).read_text())
        with np.load(Path(directory) / STATE_FILE) as f:
            count = lambda prefix: sum(k.startswith(prefix) for k in f.files)  # noqa: E731
            values = [f[f"arr_{i}"] for i in range(count("arr_"))]
            best = [f[f"best_{i}"] for i in range(count("best_"))]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"Checkpoint in {directory} is missing or unreadable ({e}).") from e
    return Checkpoint(Progress(int(meta["iteration"]), meta["rng_state"]), values, meta["names"],
                      meta.get("extra", {}), best)


def restore(ckpt: Checkpoint, variables: list, rng: np.random.Generator) -> int:
    """Put the saved values back; return the iteration to continue from."""
    shapes = [tuple(v.shape) for v in variables]
    if shapes != [tuple(a.shape) for a in ckpt.values]:
        raise CheckpointError(
            f"Checkpoint does not fit this model and algorithm: it holds {len(ckpt.values)} "
            f"variables {ckpt.names[:4]}..., the run has {len(variables)}. It was written by "
            f"another config or code version.")
    for v, a in zip(variables, ckpt.values, strict=True):
        v.assign(a)
    rng.bit_generator.state = ckpt.progress.rng_state
    return ckpt.progress.iteration
