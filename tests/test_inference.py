"""Inference over what varies independently: test CIs over the family's declared unit (source
tasks for tables), every test episode traceable to its task, and paired comparisons of seed
groups decided at seed level (per-seed mean differences, rliable's probability of improvement,
a two-level bootstrap). Statistics are recomputed here with SciPy and rliable from what the real
tracking store holds."""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from scipy import stats as sps

from pipeline import PROJECT_ROOT
from pipeline.analysis import compare, episodes, groups, paired
from pipeline.analysis.stats import (
    Units,
    class_bootstrap_ci,
    summarize_units,
    two_level_bootstrap_ci,
)
from pipeline.run.runner import execute
from pipeline.stages.report import aggregate_metrics
from pipeline.tracking import keys, store
from tests.conftest import empty_store_schema, store_overrides

ACC = "task/query_acc_after"


def t_half(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(sps.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))


# --- the unit of a CI ---------------------------------------------------------------------------


def test_ci_over_source_tasks_is_the_t_interval_over_per_task_means():
    rng = np.random.default_rng(0)
    source = np.repeat(np.arange(4), 15)
    values = rng.normal(0.6, 0.02, 60) + np.array([0.0, 0.1, -0.1, 0.05])[source]
    values[3] = np.nan  # a diverged episode is left out of its task's mean
    s = summarize_units(values, Units(keys.UNIT_TASK, source))
    per_task = [np.nanmean(values[source == u]) for u in range(4)]
    assert s.mean == pytest.approx(np.mean(per_task), abs=1e-12)
    assert s.ci95 == pytest.approx(t_half(per_task), abs=1e-12)
    assert (s.n, s.episodes, s.over()) == (4, 59, "4 tasks, 59 episodes")
    # the same values as if every episode were a task: a far narrower, wrong interval
    assert summarize_units(values).ci95 < s.ci95 / 3
    # one source task: its mean, no interval, and no made-up std or ci95 metric
    one = summarize_units(values[source == 1], Units(keys.UNIT_TASK, source[source == 1]))
    assert one.n == 1 and math.isnan(one.ci95) and "no CI: 1 task, 15 episodes" in str(one)
    assert aggregate_metrics({"test/query_acc_after": one}) == {
        "test/query_acc_after_mean": one.mean}


def test_class_bootstrap_widens_when_the_classes_drive_the_score():
    """Omniglot-like: 600 5-way episodes over 20 test classes whose difficulty sets the score;
    resampling classes gives a wider interval than the episode t-interval, reproducibly."""
    rng = np.random.default_rng(1)
    effect = rng.normal(0, 0.1, 20)
    classes = np.array([rng.choice(20, 5, replace=False) for _ in range(600)])
    values = 0.7 + effect[classes].mean(axis=1) + rng.normal(0, 0.01, 600)
    s = summarize_units(values, Units(keys.UNIT_EPISODE, classes=classes))
    low, high = s.class_ci
    assert low < s.mean < high and (high - low) / 2 > 3 * s.ci95
    assert class_bootstrap_ci(values, classes) == (low, high)
    assert {"test/x_class_ci_low", "test/x_class_ci_high"} <= set(aggregate_metrics({"test/x": s}))
    # 5-way episodes of 5 test classes: every episode drew every class, nothing to resample
    every = np.array([rng.permutation(5) for _ in range(50)])
    assert summarize_units(values[:50], Units(keys.UNIT_EPISODE, classes=every)).class_ci is None


def test_two_level_bootstrap_resamples_seeds_then_units():
    rng = np.random.default_rng(2)
    spread = [rng.normal(m, 0.001, 50) for m in (-1.0, 0.0, 1.0)]
    low, high = two_level_bootstrap_ci(spread)  # all three seeds drawn alike: the interval
    assert low < -0.9 and high > 0.9            # reaches the extremes, not a pooled +-0.0003
    same = [rng.normal(0.0, 1.0, 400) for _ in range(3)]
    low, high = two_level_bootstrap_ci(same)  # seeds agree: at least the units' spread (a
    assert 0.9 * 2 * 1.96 / np.sqrt(1200) < high - low < 0.25  # pooled interval), and the seeds'
    assert (low, high) == two_level_bootstrap_ci(same)  # the same every time: a fixed seed


# --- paired comparisons of seed groups, on a real store -------------------------------------------


def fresh_store(tmp_path: Path) -> tuple[str, str]:
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True)
    shutil.copyfile(empty_store_schema(), db)
    uri = f"sqlite:///{db}"
    exp = MlflowClient(uri).create_experiment("inference",
                                              artifact_location=str(tmp_path / "artifacts"))
    return uri, exp


def job(uri: str, exp: str, name: str, seed: str, values: np.ndarray, tags: dict | None = None,
        source: list[str] | None = None, tmp: Path | None = None) -> str:
    """A FINISHED run holding what a meta-test logs: per-episode accuracies, their mean and,
    for a tabular run, its unit tag and episodes table."""
    run = store.create_run(uri, exp, name, {keys.SEED: seed, keys.DATA_FINGERPRINT:
                                            f"data-of-seed-{seed}", **(tags or {})})
    store.log_series(uri, run, ACC, list(values))
    store.log_values(uri, run, metrics={"test/query_acc_after_mean": float(np.mean(values))})
    if source is not None:
        names = sorted(set(source))
        units = Units(keys.UNIT_TASK, np.array([names.index(s) for s in source]), names)
        csv = tmp / run / "test_episodes.csv"
        csv.parent.mkdir(parents=True)
        episodes.table(units, {ACC: values}).to_csv(csv, index=False)
        store.set_tags(uri, run, {keys.CI_UNIT: keys.UNIT_TASK})
        store.log_files(uri, run, {"results": csv})
    store.end_run(uri, run, keys.FINISHED)
    return run


def seed_group(uri: str, exp: str, name: str, per_seed: list[np.ndarray]) -> str:
    group = store.create_run(uri, exp, name, {keys.SWEEP_ROLE: keys.ROLE_GROUP,
                                              keys.GROUP_JOBS: json.dumps(list(range(
                                                  len(per_seed))))})
    for n, values in enumerate(per_seed):
        job(uri, exp, f"{name} seed={n}", str(n), values, {keys.PARENT_RUN: group,
                                                            keys.SWEEP_JOB: str(n)})
    return group


def two_groups(uri: str, exp: str, deltas: list[float], seed: int = 0) -> tuple[str, str, list,
                                                                                list]:
    """Groups A and B over len(deltas) seeds, 100 episodes each; A = B + delta of the seed."""
    rng = np.random.default_rng(seed)
    b = [rng.uniform(0.4, 0.8, 100) for _ in deltas]
    a = [v + d + rng.normal(0, 0.02, 100) for v, d in zip(b, deltas, strict=True)]
    return seed_group(uri, exp, f"A {deltas}", a), seed_group(uri, exp, f"B {deltas}", b), a, b


def test_a_seed_that_reverses_the_sign_keeps_the_verdict_from_better(tmp_path, capsys):
    from rliable.metrics import probability_of_improvement

    uri, exp = fresh_store(tmp_path)
    ga, gb, a, b = two_groups(uri, exp, [0.06, 0.05, -0.04])
    r = paired.compare(uri, ga, gb)
    assert r.t_pvalue < 1e-10  # pooled over 300 pairs: "significant" within these runs
    sa, sb = np.array([v.mean() for v in a]), np.array([v.mean() for v in b])
    sl = r.seed_level
    assert sl.seeds == 3 and sl.mean == pytest.approx((sa - sb).mean(), abs=1e-12)
    assert sl.ci95 == pytest.approx(t_half(sa - sb), abs=1e-12) and sl.ci95 > abs(sl.mean)
    assert sl.t_pvalue == pytest.approx(sps.ttest_rel(sa, sb).pvalue, rel=1e-9)
    assert sl.prob_improvement == pytest.approx(
        probability_of_improvement(sa[:, None], sb[:, None]), abs=1e-12)
    assert sl.boot_low < 0 < sl.boot_high
    assert "better" not in r.verdict and r.verdict.startswith("no significant difference")

    assert compare.main(["--tracking-uri", uri, "--paired", ga, gb, "--log"]) == 0
    out = capsys.readouterr().out
    assert "pooled within these seeds' training runs: pairs: 300 (seed, episode)" in out
    assert "across 3 seeds" in out and "verdict: no significant difference" in out
    [logged] = MlflowClient(uri).search_runs([exp], "tags.sweep_role = 'paired_comparison'")
    m = logged.data.metrics
    assert m[keys.PAIRED_SEEDS] == 3 and m[keys.PAIRED_SEED_T_PVALUE] == sl.t_pvalue
    assert m[keys.PAIRED_SEED_DIFF_MEAN] == sl.mean and m[keys.PAIRED_SEED_DIFF_CI95] == sl.ci95
    assert (m[keys.PAIRED_BOOT_LOW], m[keys.PAIRED_BOOT_HIGH]) == (sl.boot_low, sl.boot_high)
    assert m[keys.PAIRED_PROB_IMPROVEMENT] == sl.prob_improvement

    # the same gain on every seed: the seed-level interval excludes 0 and A is better
    ga, gb, a, b = two_groups(uri, exp, [0.05, 0.06, 0.055], seed=1)
    r = paired.compare(uri, ga, gb)
    assert r.seed_level.excludes_zero and r.verdict.startswith("A is better (95% CI over 3 seeds")
    assert r.seed_level.prob_improvement == 1.0
    # two seeds: inconclusive whatever the pooled test says
    ga, gb, _, _ = two_groups(uri, exp, [0.05, 0.06], seed=2)
    r = paired.compare(uri, ga, gb)
    assert r.t_pvalue < 1e-10 and r.verdict.startswith("inconclusive: 2 seeds")


def test_seed_groups_get_a_two_level_bootstrap_beside_the_t_interval(tmp_path):
    uri, exp = fresh_store(tmp_path)
    ga, _gb, a, _b = two_groups(uri, exp, [0.06, 0.05, -0.04])
    assert groups.write_if_complete(uri, ga, final=True)
    m = store.get_run(uri, ga).metrics
    mean = keys.seeds("test/query_acc_after_mean", "mean")
    assert m[mean] == pytest.approx(np.mean([v.mean() for v in a]), abs=1e-12)
    low = m[keys.seeds("test/query_acc_after_mean", keys.BOOT_LOW)]
    high = m[keys.seeds("test/query_acc_after_mean", keys.BOOT_HIGH)]
    assert low < m[mean] < high
    assert (low, high) == two_level_bootstrap_ci(a)


def test_two_single_tabular_runs_pair_per_source_task_for_this_run_only(tmp_path, capsys):
    uri, exp = fresh_store(tmp_path)
    rng = np.random.default_rng(3)
    source = [f"hospital_{i % 4:02d}" for i in range(60)]
    b = rng.uniform(0.5, 0.7, 60)
    a = b + 0.03 + rng.normal(0, 0.01, 60)
    ra = job(uri, exp, "A", "0", a, source=source, tmp=tmp_path)
    rb = job(uri, exp, "B", "0", b, source=source, tmp=tmp_path)
    r = paired.compare(uri, ra, rb)
    per_task = pd.DataFrame({"t": source, "d": a - b}).groupby("t")["d"].mean()
    assert r.unit == keys.UNIT_TASK and len(r.units) == 4
    assert r.mean == pytest.approx(per_task.mean(), abs=1e-12)
    assert r.ci95 == pytest.approx(t_half(per_task.to_numpy()), abs=1e-12)
    assert r.verdict.startswith("A is better on this training run only")
    assert compare.main(["--tracking-uri", uri, "--paired", ra, rb, "--by-task"]) == 0
    out = capsys.readouterr().out
    assert "pairs: 4 (seed, task) from 60 episodes" in out
    for name, d in per_task.items():
        assert any(line.split()[:2] == [name, "15"] and f"{d:.4f}" in line
                   for line in out.splitlines()), name


# --- a tabular run end to end ---------------------------------------------------------------------


def fake_long_csv(root: Path, tasks: int) -> Path:
    subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "make_fake_tabular.py"),
                    str(root), "--tasks", str(tasks), "--samples-per-task", "24", "--features",
                    "4", "--layouts", "long"], check=True, capture_output=True)
    return root / "long.csv"


TINY = ["experiment=tabular_maml", "data.num_val_tasks=0", "meta_train.iterations=1",
        "meta_train.meta_batch_size=2", "meta_test.scratch.steps=1", "meta_train.log_every=1",
        "tracking.log_model=false", "data.k_shot=2", "data.query_per_class=4"]


def test_tabular_ci_is_over_test_tasks_and_every_episode_names_its_task(tmp_path, make_cfg,
                                                                         capsys):
    """30 tasks, 6 of them in the test split, 60 test episodes: the CI is over the 6 tasks,
    recomputed here from the run's own results/test_episodes.csv."""
    csv = fake_long_csv(tmp_path / "set", 30)
    store_overrides(tmp_path, schema=True)
    cfg, raw = make_cfg(*TINY, f"data.root={csv}", "data.num_test_tasks=60",
                        "data.task_split=[0.6,0.2,0.2]")
    result = execute(cfg, raw)
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    m = run.data.metrics
    assert run.data.tags[keys.CI_UNIT] == keys.UNIT_TASK
    assert m[keys.CI_UNITS] == 6 and m[keys.TEST_EPISODES] == 60
    table = pd.read_csv(client.download_artifacts(run.info.run_id, keys.EPISODES_TABLE,
                                                  str(tmp_path)), dtype={"task": str})
    splits = json.loads(Path(client.download_artifacts(run.info.run_id, keys.SPLITS_FILE,
                                                       str(tmp_path))).read_text())
    assert list(table["episode"]) == list(range(60))
    assert set(table["task"]) == set(splits["test"]) and len(splits["test"]) == 6
    assert set(table["task"]) <= set(pd.read_csv(csv)["task"])
    assert not set(splits["test"]) & set(splits["train"])
    logged = [x.value for x in sorted(client.get_metric_history(run.info.run_id, ACC),
                                      key=lambda x: x.step)]
    np.testing.assert_array_equal(table[ACC], logged)
    per_task = table.groupby("task")[ACC].mean()
    assert m["test/query_acc_after_mean"] == pytest.approx(per_task.mean(), abs=1e-9)
    assert m["test/query_acc_after_ci95"] == pytest.approx(t_half(per_task), abs=1e-9)
    gain = (table[ACC] - table["scratch_task/query_acc_after"]).groupby(table["task"]).mean()
    assert m["gain/query_acc_ci95"] == pytest.approx(t_half(gain), abs=1e-9)
    assert {"task/query_acc_before", "scratch_task/query_loss_after"} <= set(table.columns)

    assert compare.main(["--tracking-uri", cfg.tracking.uri, "--run", result.run_id,
                         "--by-task"]) == 0
    out = capsys.readouterr().out
    assert "60 test episodes from 6 tasks" in out
    for name, n in table["task"].value_counts().items():
        assert any(line.split()[:2] == [name, str(n)] for line in out.splitlines()), name


@pytest.mark.slow  # a second tabular run
def test_one_test_task_gives_a_mean_one_warning_and_no_interval(tmp_path, make_cfg, caplog):
    csv = fake_long_csv(tmp_path / "set", 10)
    store_overrides(tmp_path, schema=True)
    cfg, raw = make_cfg(*TINY, f"data.root={csv}", "data.num_test_tasks=20",
                        "data.task_split=[0.9,0.0,0.1]")
    with caplog.at_level(logging.WARNING):
        result = execute(cfg, raw)
    m = MlflowClient(cfg.tracking.uri).get_run(result.run_id).data.metrics
    assert m[keys.CI_UNITS] == 1 and "test/query_acc_after_mean" in m
    assert not [k for k in m if k.endswith(("_ci95", "_std"))]
    warned = [r.message for r in caplog.records if "no confidence interval" in r.message]
    assert len(warned) == 1 and "one task (20 episodes)" in warned[0]
