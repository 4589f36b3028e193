"""The sinusoid regression benchmark of MAML (Finn et al. 2017), exactly.

Each task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5.0]`` and phase
``phi ~ U[0, pi]``; inputs ``x ~ U[-5, 5]``. A training task has ``k_shot`` support points and
``num_query`` query points, all drawn at random. A test task has ``k_shot`` random support points
and, as its query set, an evenly spaced grid of ``test_grid_points`` over [-5, 5], so the query
MSE measures the whole curve. The test tasks are a fixed set (600 by default) drawn from the data
seed, so every algorithm and seed of a study is scored on the same tasks.

Arrays: ``x`` is [tasks, points, 1] and ``y`` is [tasks, points] (float32).
"""

from __future__ import annotations

import numpy as np

from pipeline.config.data import SinusoidDataConfig
from pipeline.data import REGRESSION, TaskSplit
from pipeline.data.family import FamilyBase, GeneratedTasks


def _tasks(cfg: dict, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    amplitude = rng.uniform(cfg["amplitude_min"], cfg["amplitude_max"], size=(n, 1))
    phase = rng.uniform(cfg["phase_min"], cfg["phase_max"], size=(n, 1))
    return amplitude, phase


def _points(cfg: dict, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.uniform(cfg["x_min"], cfg["x_max"], size=shape)


def _split(sx: np.ndarray, qx: np.ndarray, amplitude: np.ndarray, phase: np.ndarray) -> TaskSplit:
    f = lambda x: (amplitude * np.sin(x - phase)).astype(np.float32)  # noqa: E731
    return TaskSplit(sx[..., None].astype(np.float32), f(sx), qx[..., None].astype(np.float32),
                     f(qx))


class Sinusoid(FamilyBase[SinusoidDataConfig]):
    """``data=sinusoid``: every test task is a fresh sinusoid, its own unit."""

    def generate(self, rng: np.random.Generator) -> GeneratedTasks:
        return generate(self.settings, rng)


def generate(cfg: dict, rng: np.random.Generator) -> GeneratedTasks:
    """Train and test tasks, then (``num_val_tasks`` > 0) validation tasks drawn like the test
    ones from the rest of the stream: train and test do not depend on whether there are any."""
    k, n_train, n_test = cfg["k_shot"], cfg["num_train_tasks"], cfg["num_test_tasks"]
    a, p = _tasks(cfg, rng, n_train)
    train = _split(_points(cfg, rng, (n_train, k)), _points(cfg, rng, (n_train, cfg["num_query"])),
                   a, p)
    a, p = _tasks(cfg, rng, n_test)
    grid = np.linspace(cfg["x_min"], cfg["x_max"], cfg["test_grid_points"])
    test = _split(_points(cfg, rng, (n_test, k)), np.broadcast_to(grid, (n_test, grid.size)), a, p)
    val = None
    if n_val := cfg.get("num_val_tasks", 0):
        a, p = _tasks(cfg, rng, n_val)
        val = _split(_points(cfg, rng, (n_val, k)), np.broadcast_to(grid, (n_val, grid.size)),
                     a, p)
    return GeneratedTasks(train, test, REGRESSION, 1, val)
