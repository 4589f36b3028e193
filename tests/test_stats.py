"""Summaries: mean, std and the Student-t 95% interval."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis.stats import paired_gain, summarize


def test_summary_matches_textbook_values():
    s = summarize(np.array([1.0, 2.0, 3.0, 4.0]))
    assert s.mean == 2.5 and s.n == 4
    assert s.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert s.ci95 == pytest.approx(3.182446305284263 * s.std / 2)  # t(0.975, 3)
    assert s.contains(2.5) and not s.contains(10)


def test_interval_covers_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    hits = sum(summarize(rng.normal(0.3, 1.0, 20)).contains(0.3) for _ in range(2000))
    assert 0.93 < hits / 2000 < 0.97


def test_paired_gain_and_too_few_tasks():
    assert paired_gain(np.array([2.0, 3.0, 4.0]), np.array([1.0, 1.0, 1.0])).mean == 2.0
    with pytest.raises(ValueError):
        summarize(np.array([1.0]))
