"""Honest summaries over test tasks: mean, standard deviation, 95% confidence interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    #: Half-width of the two-sided 95% Student-t confidence interval of the mean.
    ci95: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.ci95:.4f}"


def summarize(values: np.ndarray) -> Summary:
    """Summary of per-task values (one value per test task)."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 tasks, got {n}")
    std = float(v.std(ddof=1))
    from scipy import stats  # here: SciPy's import costs every CLI start (and refusal) a second

    half = float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))
    return Summary(float(v.mean()), std, half, n)


def paired_gain(a: np.ndarray, b: np.ndarray) -> Summary:
    """Summary of ``a - b`` task by task: the gain of method a over method b on the same tasks."""
    return summarize(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
