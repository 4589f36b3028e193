"""Task generators: shapes, support/query splits, determinism, fingerprints, tampering."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from pipeline import data
from pipeline.config import ConfigError


def _cfg(make_cfg, *overrides):
    # Data only: no meta-training, so a meta-batch larger than a few tasks is not refused.
    cfg, _ = make_cfg("meta_train.iterations=0", *overrides)
    d = dataclasses.asdict(cfg.data)
    d.pop("cache")
    return cfg, d


def _generate(make_cfg, tmp_path, *overrides, cache=True):
    cfg, d = _cfg(make_cfg, *overrides)
    return data.generate_or_load(d, cfg.seed, tmp_path / "data", cache), cfg


def test_notebook_data_shapes_and_labels(make_cfg, tmp_path):
    ts, cfg = _generate(make_cfg, tmp_path, "experiment=notebook")
    k, c = cfg.data.k_shot, 2
    for split in (ts.train, ts.test):
        assert split.support_x.shape == (100, k * c, 20)
        assert split.query_x.shape == (100, 100 - k * c, 20)
        assert split.support_x.dtype == np.float32 and split.support_y.dtype == np.int32
        for t in range(split.num_tasks):  # exactly k_shot per class in every support set
            assert np.bincount(split.support_y[t], minlength=c).tolist() == [k] * c
    everything = np.concatenate([ts.train.support_x.ravel(), ts.train.query_x.ravel()])
    assert abs(everything.mean()) < 0.01 and abs(everything.std() - 1) < 0.01
    labels = np.concatenate([ts.train.query_y.ravel(), ts.test.query_y.ravel()])
    assert set(np.unique(labels)) == {0, 1} and abs(labels.mean() - 0.5) < 0.02


def test_synthetic_shapes_balance_and_split(make_cfg, tmp_path):
    ts, _ = _generate(make_cfg, tmp_path, "data.num_train_tasks=30", "data.num_test_tasks=10",
                        "data.num_classes=4", "data.samples_per_task=40", "data.k_shot=3")
    assert ts.task_type == data.CLASSIFICATION and ts.num_outputs == 4
    assert ts.train.support_x.shape == (30, 12, 20) and ts.test.query_x.shape == (10, 28, 20)
    for split in (ts.train, ts.test):
        for t in range(split.num_tasks):
            assert np.bincount(split.support_y[t], minlength=4).tolist() == [3] * 4
            assert np.bincount(split.query_y[t], minlength=4).tolist() == [7] * 4
            # support and query are disjoint samples of the task
            rows = {r.tobytes() for r in split.support_x[t]}
            assert not rows & {r.tobytes() for r in split.query_x[t]}


@pytest.mark.parametrize("num_features", [1, 20])
@pytest.mark.parametrize("num_classes", [2, 5, 10])
def test_synthetic_always_generates_balanced_tasks(num_features, num_classes):
    """Every (features, classes, shots, latent size, diversity) at the other defaults generates,
    with exactly balanced classes (the 5-way README example used to be refused)."""
    from pipeline.data import synthetic

    for k_shot, latent_dim, diversity in itertools.product([1, 5], [1, 8], [0.0, 1.0, 3.0]):
        cfg = {"samples_per_task": 60, "num_features": num_features, "num_classes": num_classes,
               "k_shot": k_shot, "latent_dim": latent_dim, "task_diversity": diversity,
               "map_scale": 1.5, "label_noise": 0.0, "num_train_tasks": 12, "num_test_tasks": 6}
        tasks = synthetic.generate(cfg, np.random.default_rng(k_shot))
        for split in (tasks.train, tasks.test):
            labels = np.concatenate([split.support_y, split.query_y], axis=1)
            counts = np.stack([np.bincount(row, minlength=num_classes) for row in labels])
            assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all(), counts
            assert (np.stack([np.bincount(r, minlength=num_classes) for r in split.support_y])
                    == k_shot).all()


def test_synthetic_tasks_differ_but_share_structure(make_cfg, tmp_path):
    ts, _ = _generate(make_cfg, tmp_path, "data.num_train_tasks=5", "data.num_test_tasks=5")
    # Same inputs get different labels in different tasks (diverse rules) ...
    assert not all(np.array_equal(ts.train.query_y[0], ts.train.query_y[i]) for i in range(1, 5))
    # ... and with task_diversity=0 every task shares one rule: a nearest-neighbour classifier
    # fitted on one task's points labels another task's points consistently.
    same, _ = _generate(make_cfg, tmp_path / "same", "data.num_train_tasks=2",
                        "data.num_test_tasks=2", "data.task_diversity=0",
                        "data.samples_per_task=300", "data.k_shot=5")
    a_x, a_y = same.train.query_x[0], same.train.query_y[0]
    b_x, b_y = same.train.query_x[1], same.train.query_y[1]
    nearest = np.argmin(((b_x[:, None] - a_x[None]) ** 2).sum(-1), axis=1)
    assert (a_y[nearest] == b_y).mean() > 0.55  # well above chance (1/3)


def test_same_config_and_seed_same_fingerprint(make_cfg, tmp_path):
    small = ("data.num_train_tasks=50", "data.num_test_tasks=20")
    a, _ = _generate(make_cfg, tmp_path / "a", *small, cache=False)
    b, _ = _generate(make_cfg, tmp_path / "b", *small, cache=False)
    c, _ = _generate(make_cfg, tmp_path / "c", *small, "seed=1", cache=False)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert np.array_equal(a.train.support_x, b.train.support_x)
    assert len(a.fingerprint) == 64
    reloaded = data.load(a.path)
    assert reloaded.fingerprint == a.fingerprint and reloaded.num_outputs == a.num_outputs


def test_cache_reuses_file(make_cfg, tmp_path):
    a, _ = _generate(make_cfg, tmp_path, "data.num_train_tasks=10")
    mtime = a.path.stat().st_mtime_ns
    b, _ = _generate(make_cfg, tmp_path, "data.num_train_tasks=10")
    assert b.path == a.path and b.path.stat().st_mtime_ns == mtime
    assert b.fingerprint == a.fingerprint


def test_a_valid_file_of_another_config_is_refused_not_used(make_cfg, tmp_path):
    """The issue's recipe: a 2-class file copied over the 3-class one is a one-line refusal
    naming what differs, and the file is left as it was."""
    small = ("data.num_train_tasks=50", "data.num_test_tasks=20")
    two, _ = _generate(make_cfg, tmp_path, *small, "data.num_classes=2", "data.k_shot=1")
    three, _ = _generate(make_cfg, tmp_path, *small)
    three.path.write_bytes(two.path.read_bytes())
    with pytest.raises(data.DataError) as e:
        _generate(make_cfg, tmp_path, *small)
    message = str(e.value)
    assert "data.num_classes=2 (this run: 3)" in message
    assert "data.k_shot=1 (this run: 5)" in message
    assert "\n" not in message and str(three.path) in message
    assert three.path.read_bytes() == two.path.read_bytes()


def test_tampered_or_truncated_file_is_detected(make_cfg, tmp_path):
    ts, _ = _generate(make_cfg, tmp_path, "data.num_train_tasks=10")
    arrays = dict(np.load(ts.path))
    arrays["train_query_y"] = arrays["train_query_y"].copy()
    arrays["train_query_y"][0, 0] ^= 1
    np.savez_compressed(ts.path, **arrays)
    with pytest.raises(ValueError, match="does not match"):
        data.load(ts.path)
    ts.path.write_bytes(ts.path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="unreadable or corrupt"):
        data.load(ts.path)


def test_load_checks_expected_fingerprint(make_cfg, tmp_path):
    ts, _ = _generate(make_cfg, tmp_path, "data.num_train_tasks=10")
    with pytest.raises(ValueError, match="expected fingerprint"):
        data.load(ts.path, expected_fingerprint="0" * 64)


def test_k_shot_larger_than_a_class_is_refused():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 10, 3)).astype(np.float32)
    y = np.zeros((2, 10), dtype=np.int32)
    y[:, :2] = 1
    with pytest.raises(ConfigError, match=r"data\.k_shot=3"):
        data.split_support_query(x, y, 3, 2, rng)
