"""Tabular tasks from disk (``data=tabular``): both layouts, named and seeded splits,
leak-free preprocessing, and every refusal on a real file; a CLI run end to end with its MLflow
record; (slow) the other layout, other learners and a bit-identical rerun."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipeline import PROJECT_ROOT, data
from pipeline.config import TabularDataConfig
from pipeline.data import stream_rng, tabular
from pipeline.data.tabular import read as tabular_read
from pipeline.errors import ConfigError
from pipeline.replay import rerun
from pipeline.run import preflight
from pipeline.run.runner import execute
from pipeline.stages.generate import describe
from pipeline.tracking import keys
from tests.conftest import run_cli, store_overrides

FEATURES = ["a", "b", "c"]
SMALL = ["data.num_test_tasks=6", "data.num_val_tasks=3", "meta_train.iterations=6",
         "meta_train.meta_batch_size=3", "meta_test.scratch.steps=3", "meta_train.log_every=3"]


def frame(rng: np.random.Generator, rows: int = 24, classes: int = 2, shift: float = 0.0,
          ) -> pd.DataFrame:
    f = pd.DataFrame(rng.standard_normal((rows, len(FEATURES))) + shift, columns=FEATURES)
    f["target"] = np.arange(rows) % classes
    return f


def write_per_task(folder: Path, frames: dict[str, pd.DataFrame], suffix: str = ".csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, f in frames.items():
        if suffix == ".csv":
            f.to_csv(folder / f"{name}{suffix}", index=False)
        else:
            f.to_parquet(folder / f"{name}{suffix}", index=False)
    return folder


def tasks(n: int = 10, seed: int = 0, **kw) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    return {f"t{i:02d}": frame(rng, **kw) for i in range(n)}


def cfg_of(root: Path, **kw) -> dict:
    base = {"root": str(root), "layout": "per_task", "num_test_tasks": 6, "num_val_tasks": 3,
            "k_shot": 2, "query_per_class": 4}
    return dataclasses.asdict(TabularDataConfig(**(base | kw)))


def check(cfg: dict, seed: int = 0):
    return tabular.check_sources(cfg, stream_rng(seed, "data"))


def refused(cfg: dict, *fragments: str) -> str:
    with pytest.raises(ConfigError) as e:
        check(cfg)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


# --- refusals, each on a real file --------------------------------------------------------------


def test_refuses_a_file_whose_columns_differ(tmp_path):
    ts = tasks()
    ts["t03"] = ts["t03"].assign(extra=1.0)
    ts["t05"] = ts["t05"].drop(columns=["b"])
    refused(cfg_of(write_per_task(tmp_path / "set", ts)), "t03.csv", "other columns",
            "extra ['extra']")


def test_refuses_a_missing_target_column(tmp_path):
    ts = {n: f.rename(columns={"target": "label"}) for n, f in tasks().items()}
    refused(cfg_of(write_per_task(tmp_path / "set", ts)), "t00.csv", "no column 'target'",
            "data.target")


def test_refuses_a_task_with_one_class(tmp_path):
    ts = tasks()
    ts["t04"]["target"] = 1
    refused(cfg_of(write_per_task(tmp_path / "set", ts)), "Task 't04'", "one class", "at least 2")


def test_refuses_a_task_with_too_few_rows_per_class(tmp_path):
    ts = tasks()
    ts["t07"] = ts["t07"].iloc[:4]  # 2 rows of each class, k_shot + 1 = 3
    refused(cfg_of(write_per_task(tmp_path / "set", ts)), "Task 't07'", "2 rows of class",
            "data.k_shot + 1 = 3")


def test_refuses_a_regression_task_with_too_few_rows(tmp_path):
    ts = {n: f.assign(target=f["a"] * 0.5 + 0.25) for n, f in tasks().items()}
    ts["t02"] = ts["t02"].iloc[:2]
    refused(cfg_of(write_per_task(tmp_path / "set", ts), task_type="regression"),
            "Task 't02'", "has 2 rows", "data.k_shot + 1 = 3")


def test_refuses_a_non_numeric_value_naming_file_row_and_column(tmp_path):
    ts = tasks()
    ts["t06"]["b"] = ts["t06"]["b"].astype(object)
    ts["t06"].loc[4, "b"] = "seven"
    msg = refused(cfg_of(write_per_task(tmp_path / "set", ts)), "t06.csv", "row 5 (line 6)",
                  "column 'b'", "'seven' is not a number", "data.categorical")
    assert msg.startswith("Table ")


def test_refuses_a_non_numeric_value_in_a_parquet_file(tmp_path):
    ts = tasks()
    ts["t01"]["c"] = ts["t01"]["c"].astype(str)
    ts["t01"].loc[2, "c"] = "n.a."
    refused(cfg_of(write_per_task(tmp_path / "set", ts, ".parquet")), "t01.parquet", "row 3",
            "column 'c'", "'n.a.' is not a number")


def test_later_files_read_with_the_first_files_types_give_the_numbers_inference_gives(tmp_path):
    """Files after the first are read with its float columns as float64, without inferring
    types; a column of integers, booleans or nothing there gives the numbers that inference
    gives (one of text is read again with inference: the refusal above names it)."""
    ts = tasks(6)
    ts["t02"]["a"] = np.arange(24)  # integers
    ts["t03"]["b"] = np.arange(24) % 2 == 0  # True / False
    ts["t04"]["c"] = np.nan  # an empty column
    cfg = cfg_of(write_per_task(tmp_path / "set", ts))
    read = {t.name: t.numeric for t in tabular.read_tasks(cfg)}
    _, text = tabular_read.columns_of(cfg)
    for name in ts:
        path = tmp_path / "set" / f"{name}.csv"
        table = tabular_read.read_file(path, text)  # every column's type inferred
        rows = np.arange(1, table.num_rows + 1)
        inferred = np.column_stack([tabular_read.numeric_column(path, table, c, rows)
                                    for c in FEATURES])
        np.testing.assert_array_equal(read[name], inferred)
    assert read["t03"][:, 1].tolist() == [1.0, 0.0] * 12 and np.isnan(read["t04"][:, 2]).all()


def test_refuses_an_empty_folder(tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "notes.txt").write_text("no tables here")
    refused(cfg_of(tmp_path / "set"), "is empty", ".csv or .parquet")


def test_refuses_mixed_task_types(tmp_path):
    ts = tasks()
    ts["t08"]["target"] = ts["t08"]["a"] * 1.5 + 0.1  # real values: a regression task
    refused(cfg_of(write_per_task(tmp_path / "set", ts)), "Mixed task types",
            "real values (regression) in tasks 't08'", "class labels (classification)")


def test_refuses_real_targets_for_classification_and_text_for_regression(tmp_path):
    reg = {n: f.assign(target=f["a"] + 0.5) for n, f in tasks().items()}
    refused(cfg_of(write_per_task(tmp_path / "reg", reg)), "real values",
            "data.task_type=regression")
    text = {n: f.assign(target=np.where(f["target"] == 1, "yes", "no")) for n, f in tasks().items()}
    refused(cfg_of(write_per_task(tmp_path / "text", text), task_type="regression"),
            "t00.csv", "column 'target'", "not a number")


def test_refuses_a_missing_value_naming_file_row_and_column(tmp_path):
    ts = tasks()
    ts["t09"].loc[7, "a"] = np.nan
    refused(cfg_of(write_per_task(tmp_path / "set", ts)), "t09.csv", "row 8 (line 9)",
            "column 'a'", "missing", "data.missing=impute")
    ts["t09"].loc[7, "a"] = 0.0
    ts["t09"]["target"] = ts["t09"]["target"].astype(float)
    ts["t09"].loc[3, "target"] = np.nan
    refused(cfg_of(write_per_task(tmp_path / "set", ts), missing="impute"), "t09.csv",
            "row 4", "target 'target' is missing")


def test_refuses_in_a_long_file_and_through_preflight(tmp_path, make_cfg):
    long = pd.concat([f.assign(task=n) for n, f in tasks().items()], ignore_index=True)
    long["c"] = long["c"].astype(object)
    long.loc[30, "c"] = "x"
    path = tmp_path / "long.csv"
    long.to_csv(path, index=False)
    cfg, _ = make_cfg("data=tabular", f"data.root={path}", "data.k_shot=2")
    with pytest.raises(ConfigError, match=r"long.csv, row 31 \(line 32\), column 'c': 'x'"):
        preflight.check(cfg)
    long.drop(columns=["task"]).to_csv(path, index=False)
    cfg, _ = make_cfg("data=tabular", f"data.root={path}", "data.k_shot=2")
    with pytest.raises(ConfigError, match=r"no column 'task' \(data.task_column\)"):
        preflight.check(cfg)


def test_refuses_tasks_with_different_numbers_of_classes_unless_n_way_is_set(tmp_path):
    ts = tasks()
    ts["t00"] = frame(np.random.default_rng(1), rows=30, classes=3)
    root = write_per_task(tmp_path / "set", ts)
    refused(cfg_of(root), "differ in their number of classes", "data.num_classes")
    check(cfg_of(root, num_classes=2))  # 2-way episodes from every task: fine
    refused(cfg_of(root, num_classes=3), "Task 't01' has 2 classes", "data.num_classes=3")


# --- what is built ------------------------------------------------------------------------------


def test_long_and_per_task_layouts_give_the_same_tasks(tmp_path):
    ts = tasks(12, classes=3, rows=30)
    per_task = write_per_task(tmp_path / "per_task", ts)
    long = pd.concat([f.assign(task=n) for n, f in ts.items()], ignore_index=True)
    long.to_parquet(tmp_path / "long.parquet", index=False)
    a = tabular.generate(cfg_of(per_task), stream_rng(0, "data"))
    b = tabular.generate(cfg_of(tmp_path / "long.parquet", layout="long"), stream_rng(0, "data"))
    for split_a, split_b in ((a.test, b.test), (a.val, b.val)):
        for f in data.FIELDS:
            np.testing.assert_array_equal(getattr(split_a, f), getattr(split_b, f))
    np.testing.assert_array_equal(a.train.rows, b.train.rows)
    assert (a.task_type, a.num_outputs) == (b.task_type, b.num_outputs) == ("classification", 3)
    info = a.info
    assert (info["tasks_train"], info["tasks_val"], info["tasks_test"]) == (7, 2, 3)
    assert (info["n_way"], info["k_shot"], info["query_per_class"]) == (3, 2, 4)
    test = a.test
    assert test.support_x.shape == (6, 6, 3) and test.query_x.shape == (6, 12, 3)
    assert all(np.array_equal(np.bincount(y), [2, 2, 2]) for y in test.support_y)


def test_training_episodes_are_drawn_within_one_task_and_by_the_seed(tmp_path):
    ts = {f"t{i:02d}": pd.DataFrame({"a": np.full(12, float(i)), "b": np.arange(12.0),
                                     "target": np.arange(12) % 2}) for i in range(8)}
    cfg = cfg_of(write_per_task(tmp_path / "set", ts), normalize="none", task_split=[1, 0, 0],
                 num_val_tasks=0)
    with pytest.raises(ConfigError, match=r"data\.task_split"):
        check(cfg)  # no test tasks
    cfg["task_split"] = [0.75, 0, 0.25]
    train = tabular.generate(cfg, stream_rng(0, "data")).train
    batch = train.sample(np.random.default_rng(5), 16)
    again = train.sample(np.random.default_rng(5), 16)
    np.testing.assert_array_equal(batch.support_x, again.support_x)
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y,
                              strict=True):
        assert len(set(sx[:, 0]) | set(qx[:, 0])) == 1  # feature a = the task's number
        rows = np.concatenate([sx[:, 1], qx[:, 1]])
        assert len(set(rows)) == len(rows)  # no row twice in an episode
        labels = np.concatenate([sy, qy])
        np.testing.assert_array_equal(labels, rows.astype(int) % 2)  # labels follow the rows
    fixed = tabular.generate({**cfg, "num_train_tasks": 6}, stream_rng(0, "data")).train
    assert isinstance(fixed, data.TaskSplit)  # one fixed episode per training task
    assert sorted(fixed.support_x[:, 0, 0]) == sorted(set(train.rows[:, 0]))


def test_named_splits_by_column_and_by_folders(tmp_path):
    ts = tasks(6)
    named = {"t00": "train", "t01": "train", "t02": "train", "t03": "val", "t04": "test",
             "t05": "test"}
    long = pd.concat([f.assign(task=n, split=named[n]) for n, f in ts.items()],
                     ignore_index=True)
    long.to_csv(tmp_path / "long.csv", index=False)
    cfg = cfg_of(tmp_path / "long.csv", layout="long", task_split=None, split_column="split")
    got = {s: [t.name for t in v] for s, v in check(cfg).items()}
    assert got == {"train": ["t00", "t01", "t02"], "val": ["t03"], "test": ["t04", "t05"]}
    assert tabular.generate(cfg, stream_rng(0, "data")).info["features_numeric"] == 3  # not split
    for name, split in named.items():
        write_per_task(tmp_path / "folders" / split, {name: ts[name]})
    got = {s: [t.name for t in v] for s, v in
           check(cfg_of(tmp_path / "folders", task_split=None)).items()}
    assert got == {"train": ["t00", "t01", "t02"], "val": ["t03"], "test": ["t04", "t05"]}
    long.loc[0, "split"] = "test"  # t00 in two splits
    long.to_csv(tmp_path / "long.csv", index=False)
    refused(cfg, "Task 't00'", "split column 'split'", "['test', 'train']")


def _test_split(root: Path, cfg: dict) -> set[str]:
    return {t.name for t in check(cfg)["test"]}


def test_normalisation_uses_training_tasks_only(tmp_path):
    cfg = cfg_of(tmp_path / "set", task_split=[0.8, 0, 0.2], num_val_tasks=0)
    ts = tasks(10)
    write_per_task(tmp_path / "set", ts)
    held_out = _test_split(tmp_path / "set", cfg)  # the seed's split depends on names only
    assert len(held_out) == 2
    write_per_task(tmp_path / "set", {n: f + 100.0 * (n in held_out) for n, f in ts.items()})
    made = tabular.generate(cfg, stream_rng(0, "data"))
    train, test = made.train, made.test
    np.testing.assert_allclose(train.rows.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(train.rows.std(axis=0), 1, atol=1e-3)
    assert test.support_x.mean() > 50  # test tasks scaled with the training statistics only
    test = tabular.generate({**cfg, "normalize": "support"}, stream_rng(0, "data")).test
    np.testing.assert_allclose(test.support_x.mean(axis=1), 0, atol=1e-5)  # each support set
    assert abs(test.query_x.mean()) < 5  # the query set scaled by its support set's statistics


def test_one_hot_with_training_categories_and_imputed_medians_are_counted(tmp_path):
    ts = tasks(10)
    cfg = cfg_of(tmp_path / "set", task_split=[0.8, 0, 0.2], num_val_tasks=0,
                 categorical=["colour"], missing="impute", normalize="none")
    for f in ts.values():
        f["colour"] = "red"
    write_per_task(tmp_path / "set", ts)
    held_out = _test_split(tmp_path / "set", cfg)
    first = min(set(ts) - held_out)
    for n, f in ts.items():
        f["colour"] = np.where(np.arange(len(f)) % 2, "red", "green" if n in held_out else "blue")
    ts[first].loc[0, "a"] = np.nan
    ts[first].loc[1, "colour"] = np.nan
    write_per_task(tmp_path / "set", ts)
    refused({**cfg, "missing": "refuse"}, f"{first}.csv", "row 1 (line 2)", "column 'a'")
    made = tabular.generate(cfg, stream_rng(0, "data"))
    train, test, info = made.train, made.test, made.info
    assert info["input_width"] == 5  # a, b, c, blue, red: green is not a training category
    assert info["imputed_cells"] == 2 and info["unseen_categories"] == 24  # 2 tasks x 12 green
    train_a = np.concatenate([f["a"].dropna() for n, f in ts.items() if n not in held_out])
    assert np.isclose(train.rows[:, 0], np.median(train_a)).any()  # the imputed cell
    onehot = np.concatenate([test.support_x, test.query_x], axis=1)[..., 3:]
    assert set(onehot.sum(axis=-1).ravel()) == {0.0, 1.0}  # unseen green: all zeros
    np.testing.assert_array_equal(np.unique(train.rows[:, 3:].sum(axis=1)), [0.0, 1.0])


def test_regression_tasks(tmp_path):
    ts = {n: f.assign(target=f["a"] * 2.5 + 0.3 * i) for i, (n, f) in enumerate(tasks().items())}
    root = write_per_task(tmp_path / "set", ts)
    made = tabular.generate(cfg_of(root, task_type="regression", k_shot=5, query_per_class=100),
                            stream_rng(0, "data"))
    train, test, task_type, outputs, info = (made.train, made.test, made.task_type,
                                             made.num_outputs, made.info)
    assert (task_type, outputs, info["query_per_class"]) == ("regression", 1, 19)
    assert test.support_y.dtype == np.float32 and test.support_x.shape == (6, 5, 3)
    assert test.query_y.shape == (6, 19)
    assert train.sample(np.random.default_rng(0), 4).query_y.shape == (4, 19)


def test_task_file_is_keyed_by_the_sources_sha256(tmp_path):
    root = write_per_task(tmp_path / "set", tasks())
    cfg = cfg_of(root)
    first = data.generate_or_load(cfg, 0, tmp_path / "cache")
    again = data.generate_or_load(cfg, 0, tmp_path / "cache")
    assert again.path == first.path and again.fingerprint == first.fingerprint
    assert again.info == first.info and again.train.num_tasks == first.train.num_tasks
    f = pd.read_csv(root / "t02.csv")
    f.loc[0, "a"] = 42.0
    f.to_csv(root / "t02.csv", index=False)
    edited = data.generate_or_load(cfg, 0, tmp_path / "cache")
    assert edited.path != first.path and edited.fingerprint != first.fingerprint


def test_fake_tabular_script_writes_both_layouts(tmp_path):
    out = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "make_fake_tabular.py"),
                          str(tmp_path), "--tasks", "5", "--samples-per-task", "12",
                          "--features", "4"], capture_output=True, text=True, check=True)
    assert out.returncode == 0
    long = pd.read_csv(tmp_path / "long.csv")
    assert list(long.columns) == ["task", "x00", "x01", "x02", "x03", "target"]
    assert long["task"].nunique() == 5 and len(long) == 60
    per_task = sorted((tmp_path / "per_task").glob("*.csv"))
    assert [p.stem for p in per_task] == [f"task_{i:04d}" for i in range(5)]
    pd.testing.assert_frame_equal(pd.read_csv(per_task[3]),
                                  long[long.task == "task_0003"].drop(columns="task")
                                  .reset_index(drop=True))


# --- end to end ---------------------------------------------------------------------------------


def fake_set(root: Path) -> Path:
    subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "make_fake_tabular.py"),
                    str(root), "--tasks", "20", "--samples-per-task", "30", "--features", "5"],
                   check=True, capture_output=True)
    return root


@pytest.mark.slow  # a CLI run; the fast suite runs the CLI in test_pipeline and tabular in process
def test_cli_run_end_to_end_leaves_a_complete_mlflow_run(tmp_path):
    fake_set(tmp_path / "set")
    proc = run_cli("experiment=tabular_maml", "data.layout=per_task",
                   f"data.root={tmp_path}/set/per_task", *SMALL, *store_overrides(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == keys.FINISHED
    tags, params = run.data.tags, run.data.params
    assert tags[keys.DATA_FAMILY] == "tabular" and len(tags[keys.DATA_FINGERPRINT]) == 64
    assert tags[f"{keys.DATA_PREP_PREFIX}tasks_train"] == "12"
    assert tags[f"{keys.DATA_PREP_PREFIX}normalize"] == "train"
    assert tags[f"{keys.DATA_PREP_PREFIX}unseen_categories"] == "0"
    assert params["data.normalize"] == "train" and params["data.missing"] == "refuse"
    history = client.get_metric_history(run.info.run_id, "task/query_acc_after")
    assert len(history) == 6  # one per test episode
    assert "gain/query_acc" in run.data.metrics
    assert {"config", "data", "plots"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.inputs.dataset_inputs[0].dataset.digest == tags[keys.DATA_FINGERPRINT][:32]
    models = client.search_logged_models([run.info.experiment_id])
    # the meta-learned network and the few-shot predictor that adapts it, both of this run
    assert sorted(m.name for m in models) == ["few_shot", "model"]
    assert {m.source_run_id for m in models} == {run.info.run_id}


@pytest.mark.slow
def test_long_layout_other_learners_and_a_bit_identical_rerun(tmp_path, make_cfg, capsys):
    fake_set(tmp_path / "set")
    root = [f"data.root={tmp_path}/set/long.csv"]
    for algorithm in ("protonet", "anil"):
        cfg, raw = make_cfg("experiment=tabular_maml", f"algorithm={algorithm}", *root, *SMALL)
        assert execute(cfg, raw).gain is not None
    overrides = [*store_overrides(tmp_path)[:2], "experiment=tabular_maml", *root, *SMALL,
                 "tracking.log_model=false", "data.normalize=support"]
    cfg, raw = make_cfg(*overrides[2:])
    first = execute(cfg, raw, overrides)
    assert rerun.main([first.run_id, "--tracking-uri", cfg.tracking.uri]) == 0
    assert "IDENTICAL" in capsys.readouterr().out


# --- provenance of the test episodes, and refusals of the CLI -----------------------------------


def _numbered(n: int = 10) -> dict[str, pd.DataFrame]:
    """Tasks named like real ones whose feature ``a`` holds the task's number."""
    return {f"hospital_{i:02d}": pd.DataFrame({"a": np.full(12, float(i)), "b": np.arange(12.0),
                                               "target": np.arange(12) % 2}) for i in range(n)}


def test_test_episodes_are_traced_to_their_named_source_tasks(tmp_path):
    long = pd.concat([f.assign(task=n) for n, f in _numbered().items()], ignore_index=True)
    long.to_csv(tmp_path / "long.csv", index=False)
    cfg = cfg_of(tmp_path / "long.csv", layout="long", normalize="none")
    got = data.generate_or_load(cfg, 0, tmp_path / "data")
    assert got.ci_unit == "task" and got.unit_names == got.splits["test"]
    assert sorted(n for names in got.splits.values() for n in names) == sorted(_numbered())
    assert (len(got.splits["train"]), len(got.splits["val"]), len(got.unit_names)) == (6, 2, 2)
    for split, names in ((got.test, np.array(got.unit_names)[got.test_source]),
                         (got.val, np.array(got.splits["val"])[got.val_source])):
        assert len(names) == split.num_tasks and len(set(names)) == 2
        numbers = [float(n.rsplit("_", 1)[1]) for n in names]
        np.testing.assert_array_equal(split.support_x[:, :, 0],
                                      np.repeat(np.array(numbers)[:, None], 4, axis=1))
    assert describe(got) == ("train episodes from 6 tasks, 6 test episodes from 2 "
                                      "tasks, 3 validation episodes from 2 tasks")
    loaded = data.load(got.path)
    assert (loaded.ci_unit, loaded.unit_names, loaded.splits) == (got.ci_unit, got.unit_names,
                                                                  got.splits)
    np.testing.assert_array_equal(loaded.test_source, got.test_source)
    np.testing.assert_array_equal(loaded.val_source, got.val_source)


def test_a_task_file_without_the_trace_loads_with_defaults_and_gains_it(tmp_path):
    """A task file written before the trace existed: read as it is, with the defaults; the
    generate stage fills the trace in once, keeping the file's fingerprint."""
    cfg = cfg_of(write_per_task(tmp_path / "set", tasks()))
    got = data.generate_or_load(cfg, 0, tmp_path / "data")
    meta = {"family": "tabular", "seed": 0, "config": cfg, "task_type": got.task_type,
            "num_outputs": got.num_outputs, "info": got.info}
    assert data.save(got.path, got.train, got.test, meta, got.val, False) == got.fingerprint
    old = data.load(got.path)
    assert (old.ci_unit, old.test_source, old.splits, old.unit_names) == ("episode", None, {}, [])
    again = data.generate_or_load(cfg, 0, tmp_path / "data")
    assert again.fingerprint == got.fingerprint and again.path == got.path
    upgraded = data.load(got.path)
    assert upgraded.ci_unit == "task" and upgraded.unit_names == got.unit_names
    np.testing.assert_array_equal(upgraded.test_source, got.test_source)


@pytest.mark.parametrize("bad", ["duplicated_column", "infinite_value"])
def test_cli_refuses_a_duplicated_column_or_an_infinite_value_before_any_run(tmp_path, bad):
    long = pd.concat([f.assign(task=n) for n, f in tasks().items()], ignore_index=True)
    long = long[["task", "a", "b", "c", "target"]]
    if bad == "infinite_value":
        long.loc[30, "b"] = -np.inf
        said = ("long.csv, row 31 (line 32), column 'b'", "-inf is not a finite number")
    else:
        long.columns = ["task", "a", "b", "a", "target"]
        said = ("long.csv, header row (line 1), column 'a'", "given twice (columns 2 and 4)")
    long.to_csv(tmp_path / "long.csv", index=False)
    proc = run_cli("data=tabular", f"data.root={tmp_path}/long.csv", "data.k_shot=2",
                   *store_overrides(tmp_path))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "Cannot start" in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert all(s in lines[0] for s in said), lines[0]
    assert not (tmp_path / "mlruns").exists()  # nothing recorded
