"""The logged few-shot model (``few_shot/``): a new task's support set in, predictions out, the
same as the run's meta-test on the same task; bad input refused in one line (HTTP 400 when
served); registered with an alias; files in, predictions out (``python -m pipeline.predict``);
served by ``mlflow models serve`` in a process that cannot import the project (slow)."""

from __future__ import annotations

import ast
import base64
import io
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import PROJECT_ROOT
from pipeline.analysis import compare
from pipeline.config import validate
from pipeline.data import TaskSet, images, omniglot, stream_rng, tabular
from pipeline.data.tabular import preprocess
from pipeline.errors import DataError
from pipeline.run.runner import RunResult, execute
from pipeline.serving import cli
from pipeline.serving import few_shot_predictor as fsp
from pipeline.serving.server import ModelServer
from pipeline.tracking import few_shot, store
from tests import image_sets
from tests.conftest import OMNIGLOT_ROOT, TINY, compose_raw, store_overrides

ACC = "task/query_acc_after"


def _run(root: Path, *overrides: str) -> tuple[str, RunResult]:
    """A tiny run under ``root``; (tracking URI, its result)."""
    root.mkdir(parents=True, exist_ok=True)
    raw = compose_raw(*store_overrides(root, schema=True)[:3], *TINY, *overrides)
    cfg = validate(raw)
    hydra_dir = root / "out" / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "config.yaml").write_text("seed: 0\n")
    return cfg.tracking.uri, execute(cfg, raw, [], hydra_dir)


def _request(tasks: TaskSet, i: int) -> dict[str, np.ndarray]:
    task = tasks.test.take(slice(i, i + 1))
    return {fsp.SUPPORT_X: task.support_x[0], fsp.SUPPORT_Y: task.support_y[0],
            fsp.QUERY_X: task.query_x[0]}


def _truth(tasks: TaskSet, i: int) -> np.ndarray:
    return tasks.test.take(slice(i, i + 1)).query_y[0]


def _accuracy(predicted, truth) -> np.float32:
    """As meta-test computes it: a float32 mean of hits (exact count over exact size)."""
    hits = np.asarray(predicted) == np.asarray(truth)
    return np.float32(hits.sum()) / np.float32(hits.size)


def _logged(uri: str, run_id: str) -> dict[int, np.float32]:
    return {k: np.float32(v) for k, v in store.metric_history(uri, run_id, ACC).items()}


@pytest.fixture(scope="module")
def maml_run(tmp_path_factory):
    """A tiny synthetic MAML run (3-way, 20 features) and its loaded few-shot model."""
    uri, result = _run(tmp_path_factory.mktemp("maml"))
    mlflow.set_tracking_uri(uri)
    return uri, result, few_shot.load(result.run_id, uri)


def test_predictions_are_meta_tests_on_the_same_tasks(maml_run):
    uri, result, model = maml_run
    logged = _logged(uri, result.run_id)
    tasks = result.tasks
    for i in range(tasks.test.num_tasks):
        out = few_shot.predict(model, _request(tasks, i))
        assert _accuracy(out[fsp.PREDICTION], _truth(tasks, i)) == logged[i], i
    out = few_shot.predict(model, _request(tasks, 0))
    labels = [str(c) for c in range(tasks.num_outputs)]
    assert list(out.columns) == [fsp.TASK, fsp.PREDICTION, *labels]
    np.testing.assert_allclose(out[labels].sum(axis=1), 1.0, rtol=1e-6)
    # the task's own labels (text), a batch of tasks on a leading axis, more inner steps
    names = np.array(["cat", "dog", "emu"])
    renamed = {**_request(tasks, 0), fsp.SUPPORT_Y: names[tasks.test.take([0]).support_y[0]]}
    text = few_shot.predict(model, renamed)
    assert (text[fsp.PREDICTION].to_numpy() == names[out[fsp.PREDICTION].to_numpy()]).all()
    np.testing.assert_array_equal(text[list(names)].to_numpy(), out[labels].to_numpy())
    batch = tasks.test.take(slice(0, 2))
    both = few_shot.predict(model, {fsp.SUPPORT_X: batch.support_x, fsp.SUPPORT_Y:
                                    batch.support_y, fsp.QUERY_X: batch.query_x})
    assert (both[both[fsp.TASK] == 0][fsp.PREDICTION].to_numpy()
            == out[fsp.PREDICTION].to_numpy()).all()
    assert set(both[fsp.TASK]) == {0, 1}
    longer = few_shot.predict(model, {**_request(tasks, 0), fsp.STEPS: 3})
    assert not np.allclose(longer[labels].to_numpy(), out[labels].to_numpy())


def _bad_inputs(tasks: TaskSet) -> list[tuple[str, dict, str]]:
    req = _request(tasks, 0)
    sx, sy = req[fsp.SUPPORT_X], req[fsp.SUPPORT_Y]
    nan = sx.copy()
    nan[2, 3] = np.nan
    return [("one class", {**req, fsp.SUPPORT_Y: np.zeros_like(sy)}, "has one class ('0')"),
            ("feature count", {**req, fsp.SUPPORT_X: sx[:, :-1]}, "Wrong feature count"),
            ("more classes", {**req, fsp.SUPPORT_Y: np.arange(len(sy)) % 4},
             "has 4 classes, more than this run's 3-way"),
            ("query labels", {**req, "query_y": sy}, "query_y was sent"),
            ("nan", {**req, fsp.SUPPORT_X: nan}, "support_x holds nan at index [2, 3]"),
            ("files to a table", {**req, fsp.QUERY_X: ["aGVsbG8="]},
             "query_x holds text or bytes, but this model takes numbers only")]


def test_bad_input_is_refused_with_its_reason(maml_run):
    _uri, result, model = maml_run
    for what, request, message in _bad_inputs(result.tasks):
        with pytest.raises(DataError) as e:
            few_shot.predict(model, request)
        assert message in str(e.value) and "\n" not in str(e.value), what


def test_the_predictor_needs_no_project_code():
    """The logged code imports TensorFlow, Keras, NumPy, pandas (and MLflow, its entry), never
    the project: checked on the source, and by loading it where ``pipeline`` cannot import
    (the slow tests serve it so)."""
    allowed = {"tensorflow", "keras", "numpy", "pandas", "PIL", "mlflow", "few_shot_predictor",
               "__future__", *sys.stdlib_module_names}
    for path in (Path(fsp.__file__), few_shot.ENTRY_FILE):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        tops = {n.split(".")[0] for n in names}
        assert tops <= allowed, (path, tops - allowed)
        assert "mlflow" not in tops or path == few_shot.ENTRY_FILE


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(pixels: np.ndarray) -> bytes:
    """An RGB image's PNG file."""
    out = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_image_files_are_decoded_as_training_decodes_them(tmp_path):
    """PNG/JPEG files, base64, give the arrays the image and Omniglot families decode from the
    same files (Lanczos-resized, RGB / inverted greyscale), and the same predictions as those
    arrays; a text that is not base64, or bytes that are no image, are refused by index."""
    root = image_sets.write(tmp_path / "images", "folders", classes=(0, 0, 5), per_class=3)
    files = sorted((root / "test").glob("*/*.png"))
    with Image.open(files[0]) as im:  # a JPEG, a greyscale JPEG, a 16-bit greyscale PNG
        im.save(tmp_path / "rgb.jpg")
        im.convert("L").save(tmp_path / "grey.jpg")
        Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257).save(
            tmp_path / "wide.png")
    rgb = fsp.ImageFiles(mode="RGB", invert=False, resize=True)
    others = [tmp_path / n for n in ("rgb.jpg", "grey.jpg", "wide.png")]
    for path in [*files, *others]:  # 16x16 files to the run's 12x12
        np.testing.assert_array_equal(
            fsp.decode_image(_b64(path.read_bytes()), rgb, (12, 12, 3), "x"),
            images._decode_file(path, 12))
    # Omniglot: a zip of one character's 20 real drawings (105x105), decoded at 28x28
    source = OMNIGLOT_ROOT / "extras" / "images_background_small1.zip"
    if source.is_file():
        with zipfile.ZipFile(source) as z:
            members = sorted(m for m in z.namelist() if m.endswith(".png"))[:20]
            drawings = [z.read(m) for m in members]
        one = tmp_path / "images_background.zip"
        with zipfile.ZipFile(one, "w") as z:
            for i, data in enumerate(drawings):
                z.writestr(f"images_background/Alpha/character01/{i:04d}_{i:02d}.png", data)
        decoded, _ = omniglot._decode_zip(one, 28)
        ink = fsp.ImageFiles(mode="L", invert=True, resize=True)
        np.testing.assert_array_equal(
            np.stack([fsp.decode_image(d, ink, (28, 28, 1), "x") for d in drawings]),
            decoded[0][..., None])
    # the same predictions from files as from the decoded arrays (prototypes of a small conv)
    net = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Rescaling(1 / 255),
                            keras.layers.Conv2D(4, 3), keras.layers.Flatten()])
    spec = fsp.Spec(algorithm="protonet", adaptation=fsp.PROTOTYPES, loss=fsp.SOFTMAX,
                    task_type="classification", num_outputs=5, input_shape=(12, 12, 3),
                    image=rgb)
    predictor = fsp.FewShotPredictor(net, spec)
    labels = [p.parent.name for p in files]
    support, query = files[::3], [p for i, p in enumerate(files) if i % 3]
    sy = [p.parent.name for p in support]
    as_files = predictor.predict({fsp.SUPPORT_X: [_b64(p.read_bytes()) for p in support],
                                  fsp.SUPPORT_Y: sy,
                                  fsp.QUERY_X: np.array([_b64(p.read_bytes()) for p in query])})
    as_arrays = predictor.predict({
        fsp.SUPPORT_X: np.stack([images._decode_file(p, 12) for p in support]),
        fsp.SUPPORT_Y: sy, fsp.QUERY_X: np.stack([images._decode_file(p, 12) for p in query])})
    pd.testing.assert_frame_equal(as_files, as_arrays)
    assert set(as_files[fsp.PREDICTION]) <= set(labels)
    good = [_b64(p.read_bytes()) for p in support]
    for bad, message in [("not base64!", "support_x[2] is not base64"),
                         (_b64(b"no image"), "support_x[2] is not an image file Pillow can read")]:
        with pytest.raises(fsp.InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
            predictor.predict({fsp.SUPPORT_X: [*good[:2], bad, *good[3:]], fsp.SUPPORT_Y: sy,
                               fsp.QUERY_X: good})


def test_register_with_an_alias_and_predict_files(maml_run, tmp_path, capsys):
    uri, result, _model = maml_run
    assert compare.main(["--tracking-uri", uri, "--register", "fast-learner", "--run",
                         result.run_id]) == 0
    client = store.client(uri)
    version = client.get_model_version_by_alias("fast-learner", few_shot.ALIAS)
    assert str(version.version) == "1" and version.run_id == result.run_id
    req = _request(result.tasks, 1)
    cols = [f"f{j}" for j in range(req[fsp.SUPPORT_X].shape[1])]
    pd.DataFrame(req[fsp.SUPPORT_X], columns=cols).assign(label=req[fsp.SUPPORT_Y]).to_csv(
        tmp_path / "support.csv", index=False)
    pd.DataFrame(req[fsp.QUERY_X], columns=cols).to_csv(tmp_path / "query.csv", index=False)
    out = tmp_path / "predictions.csv"
    args = ["models:/fast-learner@champion", "--support", str(tmp_path / "support.csv"),
            "--query", str(tmp_path / "query.csv"), "--out", str(out), "--tracking-uri", uri]
    assert cli.main(args) == 0
    written = pd.read_csv(out)
    assert _accuracy(written[fsp.PREDICTION], _truth(result.tasks, 1)) == \
        _logged(uri, result.run_id)[1]
    pd.DataFrame(req[fsp.QUERY_X], columns=cols).assign(label=0).to_csv(
        tmp_path / "query.csv", index=False)
    assert cli.main(args) == 2
    assert "has the label column 'label'" in capsys.readouterr().err


# --- tabular: raw rows --------------------------------------------------------------------------


def _fake_table(root: Path) -> Path:
    subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "make_fake_tabular.py"),
                    str(root), "--tasks", "40", "--samples-per-task", "40", "--layouts", "long"],
                   check=True, capture_output=True)
    return root / "long.csv"


def raw_rows(result: RunResult, i: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Test episode ``i`` of a tabular run as the file's raw rows (``role`` added, query
    targets emptied) and its query targets: each episode row is found among the test tasks'
    rows as the family preprocesses them."""
    with np.load(result.tasks.path) as f:
        meta = json.loads(str(f["meta"]))
    cfg = meta["config"]
    splits = tabular.check_sources(cfg, stream_rng(meta["seed"], "data"))
    prep = preprocess.fit(cfg, splits["train"])
    where = {}
    for t in splits["test"]:
        x = preprocess.transform(prep, t)[0]
        where |= {row.tobytes(): int(r) for row, r in zip(x, t.rows, strict=True)}
    table = pd.read_csv(cfg["root"])
    episode = result.tasks.test.take(slice(i, i + 1))
    support = [where[r.tobytes()] - 1 for r in episode.support_x[0]]
    query = [where[r.tobytes()] - 1 for r in episode.query_x[0]]
    frame = table.iloc[support + query].drop(columns="task").astype({"target": object})
    truth = frame["target"].iloc[len(support):].to_numpy().copy()
    frame.iloc[len(support):, frame.columns.get_loc("target")] = None
    frame[fsp.ROLE] = [fsp.SUPPORT] * len(support) + [fsp.QUERY] * len(query)
    return frame, truth


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabular")
    csv = _fake_table(root / "tables")
    uri, result = _run(root, "experiment=tabular_maml", f"data.root={csv}",
                       "meta_test.compare_to_scratch=false")
    mlflow.set_tracking_uri(uri)
    return uri, result, few_shot.load(result.run_id, uri)


def _bad_rows(frame: pd.DataFrame) -> list[tuple[pd.DataFrame, str]]:
    text = frame.astype({"x03": object})
    text.iloc[-1, text.columns.get_loc("x03")] = "high"
    unlabelled = frame.copy()
    unlabelled.iloc[1, unlabelled.columns.get_loc("target")] = None
    return [(frame.drop(columns="x05"), "Column 'x05' is missing"),
            (text, "Column 'x03' is numeric in training, but row"),
            (unlabelled, "has no label: every support row needs its target 'target'")]


def test_tabular_raw_rows_predict_like_meta_test(tabular_run):
    uri, result, model = tabular_run
    logged = _logged(uri, result.run_id)
    for i in range(3):
        frame, truth = raw_rows(result, i)
        out = few_shot.predict(model, frame)
        assert list(out.index) == list(frame.index[frame[fsp.ROLE] == fsp.QUERY])
        assert _accuracy(out[fsp.PREDICTION], truth.astype(int)) == logged[i], i
    for bad, message in _bad_rows(frame):
        with pytest.raises(DataError) as e:
            few_shot.predict(model, bad)
        assert message in str(e.value) and "\n" not in str(e.value), message


# --- served: mlflow models serve in a process without the project (slow) ------------------------


def _served(server: ModelServer, request: dict) -> list:
    """The predicted labels a served model answers for a task."""
    status, answer = server.post({"inputs": {k: np.asarray(v).tolist()
                                             for k, v in request.items()}})
    assert status == 200, answer
    return [row[fsp.PREDICTION] for row in answer["predictions"]]


def _assert_no_project(server: ModelServer) -> None:
    """The server could not have imported the project: its import is blocked there."""
    probe = subprocess.run(
        [str(Path(sys.executable)), "-c", "import pipeline"], cwd=server.workdir,
        env={"PYTHONPATH": str(server.workdir / "no_project"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True)
    assert probe.returncode != 0 and "not importable in this server" in probe.stderr


@pytest.mark.slow
def test_served_maml_predicts_like_meta_test_and_answers_400(maml_run):
    uri, result, _model = maml_run
    with ModelServer(f"runs:/{result.run_id}/{few_shot.NAME}", uri) as server:
        _assert_no_project(server)
        logged = _logged(uri, result.run_id)
        for i in range(4):
            predicted = _served(server, _request(result.tasks, i))
            assert _accuracy(predicted, _truth(result.tasks, i)) == logged[i], i
        for what, request, message in _bad_inputs(result.tasks):
            # NaN goes as JSON's NaN literal, which the server's parser reads
            payload = {k: np.asarray(v).tolist() for k, v in request.items()}
            status, answer = server.post({"inputs": payload})
            assert status == 400 and message in answer["message"], (what, answer)


@pytest.mark.slow
def test_served_protonet_on_images_predicts_like_meta_test(tmp_path):
    images = image_sets.write(tmp_path / "images", "folders")
    uri, result = _run(tmp_path / "run", "data=images", "model=conv4", "algorithm=protonet",
                       *image_sets.overrides(images), *image_sets.TINY_IMAGES)
    logged = _logged(uri, result.run_id)
    with ModelServer(f"runs:/{result.run_id}/{few_shot.NAME}", uri) as server:
        _assert_no_project(server)
        for i in range(result.tasks.test.num_tasks):
            predicted = _served(server, _request(result.tasks, i))
            assert _accuracy(predicted, _truth(result.tasks, i)) == logged[i], i
        status, answer = server.post({"inputs": {**{k: np.asarray(v).tolist() for k, v in
                                                    _request(result.tasks, 0).items()},
                                                 "steps": 5}})
        assert status == 400 and "has no inner steps" in answer["message"]
        # the same task as PNG files, base64, in MLflow's row form ({"instances": [task]})
        files = {k: [_b64(_png(im)) for im in v] if k != fsp.SUPPORT_Y else v.tolist()
                 for k, v in _request(result.tasks, 0).items()}
        status, answer = server.post({"instances": [files]})
        assert status == 200, answer
        assert [row[fsp.PREDICTION] for row in answer["predictions"]] == \
            _served(server, _request(result.tasks, 0))
        status, answer = server.post({"inputs": {**files, fsp.QUERY_X: ["%%%"]}})
        assert status == 400 and "query_x[0] is not base64" in answer["message"], answer


@pytest.mark.slow
def test_served_tabular_raw_rows_predict_like_meta_test(tabular_run):
    uri, result, _model = tabular_run
    logged = _logged(uri, result.run_id)
    with ModelServer(f"runs:/{result.run_id}/{few_shot.NAME}", uri) as server:
        _assert_no_project(server)
        for i in range(3):
            frame, truth = raw_rows(result, i)
            split = frame.reset_index(drop=True).to_dict(orient="split")
            status, answer = server.post({"dataframe_split": {
                "columns": split["columns"], "data": [[None if isinstance(v, float) and
                                                      math.isnan(v) else v for v in row]
                                                     for row in split["data"]]}})
            assert status == 200, answer
            predicted = [p["prediction"] for p in answer["predictions"]]
            assert _accuracy(predicted, truth.astype(int)) == logged[i], i
        for bad, message in _bad_rows(frame):
            split = bad.reset_index(drop=True).to_dict(orient="split")
            status, answer = server.post({"dataframe_split": {
                "columns": split["columns"], "data": [[None if isinstance(v, float) and
                                                      math.isnan(v) else v for v in row]
                                                     for row in split["data"]]}})
            assert status == 400 and message in answer["message"], answer


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["fomaml", "anil", "metasgd", "reptile"])
def test_other_learners_predict_like_meta_test(tmp_path, algorithm):
    uri, result = _run(tmp_path, f"algorithm={algorithm}", "meta_test.compare_to_scratch=false")
    model = few_shot.load(result.run_id, uri)
    logged = _logged(uri, result.run_id)
    for i in range(result.tasks.test.num_tasks):
        out = few_shot.predict(model, _request(result.tasks, i))
        assert _accuracy(out[fsp.PREDICTION], _truth(result.tasks, i)) == logged[i], i
