"""Omniglot: loader, protocol, episodes, errors, ProtoNets and conv4 batch norm.

Uses the small official zips (``extras/images_background_small{1,2}.zip``: 136 + 156
characters) from the shared data folder; skipped where that folder is absent.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline import data
from pipeline.config import ConfigError, validate
from pipeline.data import omniglot
from pipeline.data.episodes import sample_episodes
from pipeline.run import preflight
from tests.conftest import OMNIGLOT_ROOT, compose_raw, store_overrides

SHARED = OMNIGLOT_ROOT
SMALL1, SMALL2 = "extras/images_background_small1.zip", "extras/images_background_small2.zip"
SMALL = [f"data.root={SHARED}", f"data.background_zip={SMALL1}",
         f"data.evaluation_zip={SMALL2}", "data.num_train_characters=200",
         "data.num_test_tasks=20"]
OMNIGLOT = ["data=omniglot", "model=conv4", *SMALL]

pytestmark = pytest.mark.skipif(not (SHARED / SMALL1).is_file(),
                                reason=f"Omniglot zips not in {SHARED}")


def _data_cfg(make_cfg, *overrides) -> tuple:
    cfg, _ = make_cfg(*OMNIGLOT, *overrides)
    d = dataclasses.asdict(cfg.data)
    d.pop("cache")
    return cfg, d


@pytest.fixture(scope="module")
def first_decode(tmp_path_factory) -> tuple[dict, list]:
    """The zips decoded once for the whole module (seconds): the data config whose empty cache
    folder received the decoded file, and what that first load returned."""
    root = tmp_path_factory.mktemp("omniglot")
    d = dataclasses.asdict(validate(compose_raw(*store_overrides(root)[:3], *OMNIGLOT)).data)
    d.pop("cache")
    assert not Path(d["cache_dir"]).exists()
    return d, omniglot.load_images(d)


@pytest.fixture
def decoded(first_decode, tmp_path) -> None:
    """This test's data folder starts with a copy of the decoded cache, so its runs load the
    images instead of decoding the zips again (the decoding itself: the loader test)."""
    cache = tmp_path / "data"
    cache.mkdir(exist_ok=True)
    for f in Path(first_decode[0]["cache_dir"]).glob("omniglot-images-*.npz"):
        shutil.copy(f, cache / f.name)


def test_loader_counts_shapes_values(first_decode):
    d, ((bg, bg_names), (ev, ev_names)) = first_decode
    assert bg.shape == (136, 20, 28, 28) and ev.shape == (156, 20, 28, 28)
    assert bg.dtype == np.uint8 and len(bg_names) == 136 and len(set(ev_names)) == 156
    assert bg_names[0] == "images_background_small1/Balinese/character01"
    for im in (bg, ev):  # ink is bright on a dark background, full range used
        assert im.min() == 0 and im.max() == 255
        assert 0.02 < (im > 127).mean() < 0.3
    assert any(Path(d["cache_dir"]).glob("omniglot-images-*.npz"))  # decoded once, then cached
    again = omniglot.load_images(d)
    assert np.array_equal(again[0][0], bg)


def test_vinyals_and_lake_splits_are_disjoint(make_cfg, decoded):
    _, d = _data_cfg(make_cfg)
    rng = np.random.default_rng(0)
    tr, trn, _, ten = omniglot.split_characters(d, rng)
    assert len(trn) == 200 and len(ten) == 292 - 200 and tr.shape[0] == 200
    assert not set(trn) & set(ten)
    conventional = omniglot.split_characters({**d, "character_order": "conventional"}, rng)
    assert conventional[1][:136] == [n for n in conventional[1] if "small1" in n]
    lake = omniglot.split_characters({**d, "protocol": "lake"}, rng)
    assert all("small1" in n for n in lake[1]) and all("small2" in n for n in lake[3])
    with pytest.raises(ConfigError, match="num_train_characters=292"):
        omniglot.split_characters({**d, "num_train_characters": 292}, rng)


def test_episodes_rotations_and_labels():
    rng = np.random.default_rng(1)
    pool = rng.integers(0, 256, (6, 20, 5, 5)).astype(np.uint8)
    rotations = (0, 90, 180, 270)
    sx, sy, qx, qy = sample_episodes(pool, rotations, 30, 4, 2, 3, rng)
    assert sx.shape == (30, 8, 5, 5, 1) and qx.shape == (30, 12, 5, 5, 1)
    variants = {np.rot90(pool[c, e], k=r // 90).tobytes(): (c, e, r)
                for c in range(6) for e in range(20) for r in rotations}
    seen_rotations = set()
    for t in range(30):
        found = {}
        for x, y in [*zip(sx[t], sy[t], strict=True), *zip(qx[t], qy[t], strict=True)]:
            c, e, r = variants[x[..., 0].tobytes()]  # every image is a rotated pool image
            found.setdefault(int(y), []).append((c, e, r))
        assert sorted(found) == [0, 1, 2, 3]
        classes = set()
        for items in found.values():  # one class = one (character, rotation); distinct drawings
            assert len({(c, r) for c, _, r in items}) == 1 and len({e for _, e, _ in items}) == 5
            classes.add(items[0][::2])
            seen_rotations.add(items[0][2])
        assert len(classes) == 4
        assert np.bincount(sy[t]).tolist() == [2] * 4 and np.bincount(qy[t]).tolist() == [3] * 4
    assert seen_rotations == set(rotations)


def test_episode_sampling_is_deterministic(make_cfg, decoded, tmp_path):
    _, d = _data_cfg(make_cfg)
    a = data.generate_or_load(d, 3, tmp_path / "a")
    b = data.generate_or_load(d, 3, tmp_path / "b")
    c = data.generate_or_load(d, 4, tmp_path / "c")
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.test.support_x.shape == (20, 5, 28, 28, 1) and a.test.query_x.shape[1] == 75
    assert a.train.num_classes == 800 and a.input_shape == (28, 28, 1)
    loaded = data.load(a.path)
    assert isinstance(loaded.train, type(a.train)) and loaded.fingerprint == a.fingerprint
    draws = [s.sample(np.random.default_rng(9), 4) for s in (a.train, b.train, loaded.train)]
    for f in data.FIELDS:
        assert all(np.array_equal(getattr(draws[0], f), getattr(x, f)) for x in draws[1:])
    other = a.train.sample(np.random.default_rng(10), 4)
    assert not np.array_equal(other.support_x, draws[0].support_x)


def test_missing_zip_is_a_clear_error_and_writes_nothing(make_cfg, tmp_path):
    root = tmp_path / "zips"
    root.mkdir()
    cfg, _ = make_cfg(*[o if not o.startswith("data.root=") else f"data.root={root}"
                        for o in OMNIGLOT])
    with pytest.raises(ConfigError) as e:  # checked before a run starts
        preflight.check(cfg)
    msg = str(e.value)
    assert f"{root}/{SMALL1}" in msg and "github.com/brendenlake/omniglot" in msg
    assert "python/" in msg and "data.download=true" in msg
    _, d = _data_cfg(make_cfg)
    with pytest.raises(ConfigError, match="is missing"):
        data.generate_or_load({**d, "root": str(root)}, 0, tmp_path / "data")
    assert not any(tmp_path.rglob("*.npz")) and list(root.iterdir()) == []


def test_corrupt_zip_is_a_clear_error_and_writes_nothing(make_cfg, tmp_path):
    root = tmp_path / "zips"
    (root / "extras").mkdir(parents=True)
    for name in (SMALL1, SMALL2):
        shutil.copy(SHARED / name, root / name)
    raw = bytearray((root / SMALL1).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (root / SMALL1).write_bytes(bytes(raw))
    _, d = _data_cfg(make_cfg)
    d = {**d, "root": str(root), "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(ConfigError, match="corrupt"):  # no checksum known: the zip CRC catches it
        data.generate_or_load(d, 0, tmp_path / "data")
    shutil.copy(SHARED / "SHA256SUMS", root / "SHA256SUMS")
    with pytest.raises(ConfigError, match=r"sha256 .* expected .*github.com/brendenlake"):
        data.generate_or_load(d, 0, tmp_path / "data")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "data").exists()


def test_download_from_url(make_cfg, decoded, tmp_path):
    _, d = _data_cfg(make_cfg)
    sums = omniglot.expected_checksums(d)
    root = tmp_path / "zips"
    d = {**d, "root": str(root), "background_zip": "images_background_small1.zip",
         "evaluation_zip": "images_background_small2.zip", "download": True,
         "url": (SHARED / "extras").as_uri(),
         "checksums": {"images_background_small1.zip": sums[SMALL1],
                       "images_background_small2.zip": sums[SMALL2]}}
    (bg, _), (ev, _) = omniglot.load_images(d)
    assert bg.shape[0] == 136 and ev.shape[0] == 156
    assert omniglot.sha256(root / "images_background_small1.zip") == sums[SMALL1]


def test_model_and_data_must_fit(make_cfg):
    with pytest.raises(ConfigError, match="model=mlp does not fit data=omniglot"):
        make_cfg("data=omniglot", *SMALL)
    with pytest.raises(ConfigError, match="only algorithm=protonet"):
        make_cfg(*OMNIGLOT, "algorithm=maml", "data.train_num_classes=10")


def test_protonet_prototypes_and_logits_match_numpy(make_cfg, tmp_path):
    from pipeline.run.runner import build

    cfg, _ = make_cfg("algorithm=protonet", "data.num_train_tasks=4", "data.num_test_tasks=6",
                      "meta_train.meta_batch_size=4")
    tasks = data.generate_or_load({k: v for k, v in dataclasses.asdict(cfg.data).items()
                                   if k != "cache"}, cfg.seed, tmp_path / "d")
    algo = build(cfg, tasks)
    assert algo.model.output_shape == (None, 64)  # the embedding: no head
    t = tasks.test
    protos = algo.adapt(algo.initial_state(np.arange(6)), tf.constant(t.support_x),
                        tf.constant(t.support_y)).numpy()
    metrics = algo.evaluate(protos, tf.constant(t.query_x), tf.constant(t.query_y))
    for i in range(6):
        s_emb = algo.model(t.support_x[i]).numpy()
        q_emb = algo.model(t.query_x[i]).numpy().astype(np.float64)
        want = np.stack([s_emb[t.support_y[i] == c].mean(0) for c in range(3)])
        np.testing.assert_allclose(protos[i], want, rtol=1e-5, atol=1e-5)
        logits = -((q_emb[:, None, :] - want[None].astype(np.float64)) ** 2).sum(-1)
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        loss = -logp[np.arange(len(logp)), t.query_y[i]].mean()
        np.testing.assert_allclose(metrics["loss"][i], loss, rtol=1e-4)
        assert metrics["acc"][i] == pytest.approx((logits.argmax(1) == t.query_y[i]).mean())


def test_protonet_refuses_regression(make_cfg):
    import keras

    from pipeline.algorithms import Context
    from pipeline.algorithms.losses import MSE, TaskLoss
    from pipeline.algorithms.protonet import ProtoNet
    from pipeline.config import ProtoNetConfig

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    ctx = Context(model, TaskLoss(MSE), keras.optimizers.Adam(), 0)
    with pytest.raises(ConfigError, match=r"algorithm=protonet .* classification"):
        ProtoNet(ProtoNetConfig(), ctx)


def _bn_stats(algo) -> list[np.ndarray]:
    return [v.numpy().copy() for v in algo.model.non_trainable_variables]


def test_running_batch_norm_statistics_are_updated_by_protonet(make_cfg, decoded, tmp_path):
    from pipeline.run.runner import build

    cfg, _ = make_cfg(*OMNIGLOT, "algorithm=protonet", "model.batch_norm=running",
                      "model.filters=8", "data.query_per_class=2", "data.num_test_tasks=2",
                      "meta_train.iterations=2", "meta_train.meta_batch_size=2")
    d = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "cache"}
    tasks = data.generate_or_load(d, 0, tmp_path / "d")
    algo = build(cfg, tasks)
    before = _bn_stats(algo)
    assert len(before) == 8  # moving mean and variance of 4 batch-norm layers
    for _ in algo.meta_train(tasks.train, cfg.meta_train, np.random.default_rng(0)):
        pass
    assert all(not np.allclose(a, b) for a, b in zip(_bn_stats(algo), before, strict=True))


@pytest.mark.usefixtures("migrated_store")
def test_protonet_learns_omniglot_through_the_pipeline(make_cfg, decoded, tmp_path):
    """A short run, end to end with MLflow: well above chance (0.2) on held-out characters."""
    from mlflow import MlflowClient

    from pipeline.run.runner import execute

    cfg, raw = make_cfg("experiment=omniglot_5w1s_protonet", *SMALL,
                        "data.train_num_classes=5", "data.train_query_per_class=5",
                        "meta_train.iterations=40", "meta_test.task_batch_size=10",
                        "tracking.log_model=false",
                        # the preset's pre-trained baselines: tests/test_baselines.py
                        "meta_test.baselines=[scratch]")
    result = execute(cfg, raw)
    assert set(result.per_task) == {"loss_after", "acc_after"}  # no "before" for ProtoNets
    assert result.summaries["test/query_acc_after"].mean > 0.5
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.data.tags["batch_norm"] == "running" and run.data.tags["algorithm"] == "protonet"
    history = client.get_metric_history(result.run_id, "task/query_acc_after")
    assert sorted(m.step for m in history) == list(range(20))
    assert "task/query_acc_before" not in run.data.metrics


def test_maml_runs_vectorised_on_omniglot_with_transductive_batch_norm(make_cfg, decoded):
    """The MAML preset (second order, zero head) through the pipeline, batch statistics of
    each task's own batch; the head stays at zero, the body is meta-learned."""
    from pipeline.run.runner import execute

    cfg, _ = make_cfg("experiment=omniglot_5w1s_maml", *SMALL, "model.filters=8",
                      "model.batch_norm=transductive", "data.num_test_tasks=6",
                      "meta_train.iterations=2", "meta_train.meta_batch_size=2",
                      "meta_test.task_batch_size=6", "meta_test.baselines=[scratch]")
    result = execute(cfg, track=False)
    assert result.per_task["acc_before"].shape == result.per_task["acc_after"].shape == (6,)
    assert np.isfinite(result.per_task["loss_after"]).all()
    assert not cfg.algorithm.first_order and cfg.algorithm.zero_head
    np.testing.assert_allclose(result.per_task["acc_before"], 1 / 5)  # all logits equal
    assert not np.any(result.algorithm.model.get_layer("head").kernel.numpy())


@pytest.mark.parametrize("algorithm", [  # maml: test above
    "anil", pytest.param("metasgd", marks=pytest.mark.slow),
    pytest.param("reptile", marks=pytest.mark.slow)])
def test_every_gradient_based_algorithm_runs_on_omniglot(make_cfg, decoded, algorithm):
    """The whole algorithm suite runs on conv4 episodes (batched over tasks), with finite losses."""
    from pipeline.run.runner import execute

    cfg, _ = make_cfg(*OMNIGLOT, f"algorithm={algorithm}", "model.filters=8",
                      "model.batch_norm=transductive", "data.num_classes=5", "data.k_shot=1",
                      "data.query_per_class=3", "data.num_test_tasks=4",
                      "meta_train.iterations=3", "meta_train.meta_batch_size=2",
                      "meta_test.task_batch_size=4", "meta_test.compare_to_scratch=false")
    result = execute(cfg, track=False)
    assert result.per_task["acc_after"].shape == (4,)
    assert np.isfinite(result.per_task["loss_after"]).all()
    assert result.timings["meta_train_iterations"] == 3


def test_maml_with_running_batch_norm_is_refused(make_cfg):
    """Per-task adapted weights and shared running statistics do not mix: a clear refusal."""
    with pytest.raises(ConfigError, match=r"model\.batch_norm='running' is supported with "
                                          r"algorithm=protonet only"):
        make_cfg("experiment=omniglot_5w1s_maml", *SMALL, "model.batch_norm=running")


def test_protonet_on_synthetic_is_deterministic_and_beats_scratch(make_cfg):
    """The MLP's last hidden layer as the embedding; same seed, bit-identical episodes."""
    from pipeline.run.runner import execute
    from tests.conftest import TINY

    cfg, _ = make_cfg("algorithm=protonet", *TINY, "meta_train.iterations=40")
    a, b = execute(cfg, track=False), execute(cfg, track=False)
    for k in a.per_task:
        assert np.array_equal(a.per_task[k], b.per_task[k])
    assert "acc_before" not in a.per_task and a.gain is not None and a.gain.mean > 0


def test_logged_conv4_loads_without_the_project(tmp_path):
    """The transductive conv4 is logged as stock Keras layers: a fresh Python that never imports
    ``pipeline`` loads it and gives the same logits as the training model."""
    import subprocess
    import sys

    from pipeline.config import Conv4Config
    from pipeline.models import BatchStatsNorm, build_model, portable

    model = build_model(Conv4Config(filters=8, batch_norm="transductive"), (28, 28, 1), 5, 0)
    rng = np.random.default_rng(0)
    model.set_weights([w + 0.1 * rng.standard_normal(w.shape).astype(w.dtype)
                       for w in model.get_weights()])  # gamma, beta away from 1, 0
    assert any(isinstance(layer, BatchStatsNorm) for layer in model.layers)
    x = rng.random((7, 28, 28, 1), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    portable(model).save(tmp_path / "model.keras")
    code = ("import sys, numpy as np, keras; "
            "m = keras.saving.load_model('model.keras'); "
            "np.save('y.npy', np.asarray(m(np.load('x.npy')))); "
            "assert not any(k.startswith('pipeline') for k in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_hidden_members_of_a_zip_are_not_drawings(tmp_path):
    """A zip made on a Mac holds ``._*.png`` resource forks beside the drawings; a Jupyter
    checkpoint folder can sit among the characters: neither is data."""
    import io
    import zipfile

    from PIL import Image

    def png(value: int) -> bytes:
        out = io.BytesIO()
        Image.fromarray(np.full((105, 105), value, np.uint8)).save(out, "PNG")
        return out.getvalue()

    path = tmp_path / "images_background.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(omniglot.EXAMPLES_PER_CHARACTER):
            z.writestr(f"images_background/Alpha/character01/0101_{i:02d}.png", png(255 - i))
        z.writestr("images_background/Alpha/character01/._0101_00.png", b"\x00\x05\x16\x07")
        z.writestr("images_background/Alpha/.ipynb_checkpoints/0101_00-checkpoint.png", png(0))
    images, names = omniglot._decode_zip(path, 28)
    assert names == ["images_background/Alpha/character01"]
    assert images.shape == (1, omniglot.EXAMPLES_PER_CHARACTER, 28, 28)
    assert images[0, 3].max() == 3  # inverted: 255 - (255 - 3)


def test_test_episodes_record_the_characters_they_drew(make_cfg, decoded, tmp_path):
    """Each test episode's classes, label by label, index the test split's named characters:
    the support images of a label are drawings of that character."""
    _, d = _data_cfg(make_cfg)
    ts = data.generate_or_load(d, 3, tmp_path / "d")
    _, _, te, te_names = omniglot.split_characters(d, data.stream_rng(3, "data"))
    assert ts.ci_unit == "episode" and ts.test_classes.shape == (20, 5)
    assert ts.splits["test"] == [n.split("/", 1)[1] for n in te_names]
    assert ts.splits["test"][0].count("/") == 1 and len(ts.splits["train"]) == 200 * 4
    for t in range(20):
        for image, label in zip(ts.test.support_x[t, ..., 0], ts.test.support_y[t], strict=True):
            drawings = te[ts.test_classes[t, label]]
            assert any(np.array_equal(image, drawing) for drawing in drawings)
