"""Honest summaries over the independent test unit: mean, standard deviation, 95% CI.

A family declares its unit (:class:`Units`): ``episode`` when every test episode is a fresh task
(synthetic, sinusoid, notebook; and image families by the field's convention), ``task`` when
test episodes are drawn in turn from a few source tasks (tables). Over ``task`` units the CI is a
Student-t interval over the per-task means (the mean over tasks of each task's mean over its
episodes): episodes of one task are repeated measures of it, not independent draws. Image
families also get a cluster bootstrap over their test classes (:func:`class_bootstrap_ci`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Bootstrap resamples, and the fixed seed that makes every bootstrap interval reproducible.
N_BOOT, BOOT_SEED = 2000, 0
#: Resamples per vectorised chunk (memory: chunk x episodes x ways integers).
_CHUNK = 250


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    #: Half-width of the two-sided 95% Student-t confidence interval of the mean over ``n``
    #: units; NaN with one unit (there is no interval to give).
    ci95: float
    #: Number of independent units the interval is over.
    n: int
    #: What ``n`` counts (``task``, ``episode``) and how many episodes those units hold.
    unit: str = "task"
    episodes: int | None = None
    #: 95% percentile interval of a cluster bootstrap over the test classes (image families).
    class_ci: tuple[float, float] | None = None

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.ci95)

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def over(self) -> str:
        """What the interval is over: ``9 tasks, 600 episodes`` or ``600 episodes``."""
        units = f"{self.n} {self.unit}{'s' if self.n != 1 else ''}"
        if self.episodes is None or self.unit == "episode":
            return units
        return f"{units}, {self.episodes} episodes"

    def __str__(self) -> str:
        if not self.has_ci:
            return f"{self.mean:.4f} (no CI: {self.over()})"
        return f"{self.mean:.4f} ± {self.ci95:.4f}"


@dataclass(frozen=True)
class Units:
    """A test split's independent unit: per episode the index of its source unit (None: every
    episode is its own unit) and, for image families, the class ids each episode drew."""

    kind: str = "episode"
    source: np.ndarray | None = None
    names: list[str] | None = None
    classes: np.ndarray | None = None
    #: What ``classes`` index (the test split's class names), if known.
    class_names: list[str] | None = None

    def name(self, unit: int) -> str:
        return self.names[unit] if self.names else str(unit)

    def class_name(self, c: int) -> str:
        return self.class_names[c] if self.class_names else str(c)


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


def unit_means(values: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """Per source unit with a finite value: its id, the mean of its finite episode values and
    how many those are (units sorted by id)."""
    v = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(v)
    ids, inverse, counts = np.unique(np.asarray(source)[keep], return_inverse=True,
                                     return_counts=True)
    sums = np.bincount(inverse, weights=v[keep], minlength=ids.size)
    return ids, sums / counts, counts


def summarize_units(values: np.ndarray, units: Units | None = None) -> Summary | None:
    """Summary of per-episode values over their independent unit: the t-interval over the
    per-unit means (per-episode values as they are for ``episode`` units), beside a class
    bootstrap where ``units.classes`` is known. Non-finite values are left out; None if none
    is left; one unit gives its mean and no interval (NaN)."""
    units = units or Units()
    v = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(v)
    if not keep.any():
        return None
    per_unit = v[keep] if units.source is None else unit_means(v, units.source)[1]
    if per_unit.size == 1:
        s = Summary(float(per_unit[0]), math.nan, math.nan, 1)
    else:
        s = summarize(per_unit)
    class_ci = None
    classes = None if units.classes is None else np.asarray(units.classes)[keep]
    # Resampling classes says something only if episodes differ in the classes they drew: where
    # every episode drew every test class, each resample weighs all episodes alike (no interval).
    if classes is not None and keep.sum() >= 2 and np.unique(classes).size > classes.shape[1]:
        class_ci = class_bootstrap_ci(v[keep], classes)
    return Summary(s.mean, s.std, s.ci95, s.n, units.kind, int(keep.sum()), class_ci)


def paired_unit_gain(a: np.ndarray, b: np.ndarray, units: Units | None = None) -> Summary | None:
    """The gain of a over b on the same episodes, over their unit: per unit the mean of the
    episode differences where both are finite, then the t-interval over units."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    units = units or Units()
    return summarize_units(d, Units(units.kind, units.source))  # no class bootstrap of a gain


def class_bootstrap_ci(values: np.ndarray, classes: np.ndarray, n_boot: int = N_BOOT,
                       seed: int = BOOT_SEED) -> tuple[float, float]:
    """95% percentile interval of the mean episode value when the test classes are resampled:
    a cluster bootstrap over classes for episodes that each draw several classes. Each resample
    draws the classes with replacement; an episode weighs the product of its classes'
    multiplicities (Owen's pigeonhole bootstrap for crossed units), so it counts only when every
    class it drew was drawn. SciPy's ``bootstrap`` resamples one level of independent values
    and rliable's resamples runs within tasks; neither weighs episodes by their classes."""
    v = np.asarray(values, dtype=np.float64)
    ids, codes = np.unique(np.asarray(classes), return_inverse=True)
    codes = codes.reshape(np.shape(classes))
    rng = np.random.default_rng(seed)
    means = []
    for lo in range(0, n_boot, _CHUNK):
        draws = rng.multinomial(ids.size, np.full(ids.size, 1.0 / ids.size),
                                size=min(_CHUNK, n_boot - lo)).astype(np.float64)
        w = draws[:, codes].prod(axis=-1)  # [resamples, episodes]
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means.append(np.where(total > 0, w @ v / total, np.nan))
    m = np.concatenate(means)
    low, high = np.nanpercentile(m, [2.5, 97.5])
    return float(low), float(high)


def two_level_bootstrap_ci(groups: list[np.ndarray], n_boot: int = N_BOOT,
                           seed: int = BOOT_SEED) -> tuple[float, float]:
    """95% percentile interval of the mean over seeds of each seed's mean over its units, when
    seeds are resampled and then, within each seed drawn, its units (a stratified, two-level
    bootstrap: training randomness and the test units both vary). ``groups``: per seed, its
    per-unit values. Hand-written because SciPy's ``bootstrap`` resamples one level and
    rliable's stratified bootstrap needs the arch package, whose import fails with this
    project's pandas."""
    rng = np.random.default_rng(seed)
    groups = [np.asarray(g, dtype=np.float64) for g in groups]
    s = len(groups)
    out = []
    for lo in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - lo)
        chosen = rng.integers(0, s, size=(b, s))  # which seed sits at each position
        seed_means = np.empty((b, s))
        for g, values in enumerate(groups):
            where = chosen == g
            k = int(where.sum())
            if k:
                idx = rng.integers(0, values.size, size=(k, values.size))
                seed_means[where] = values[idx].mean(axis=1)
        out.append(seed_means.mean(axis=1))
    low, high = np.percentile(np.concatenate(out), [2.5, 97.5])
    return float(low), float(high)
