"""``data=images``: the three on-disk layouts, decoding and its cache, fingerprints, class splits,
episodes, and every bad input refused in one line, on real image files written by the test
(``scripts/make_fake_fewshot.py``)."""

from __future__ import annotations

import dataclasses
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import data
from pipeline.data import decoded, images
from pipeline.data.episodes import EpisodeSampler, EpisodeSet
from pipeline.errors import ConfigError, DataError
from pipeline.run import preflight
from tests import image_sets
from tests.conftest import run_cli, store_overrides

IMAGES = ["data=images", "model=conv4"]


def _cfg(make_cfg, root: Path, layout: str = "folders", *extra: str):
    cfg, _ = make_cfg(*IMAGES, *image_sets.overrides(root, layout), *image_sets.TINY_IMAGES,
                      *extra)
    d = dataclasses.asdict(cfg.data)
    d.pop("cache")
    return cfg, d


def _classes_of(split: EpisodeSet, sizes: np.ndarray, t: int) -> dict[int, set[int]]:
    """Label -> the pool classes its support and query images come from, for episode ``t``."""
    ends = np.cumsum(sizes)
    out: dict[int, set[int]] = {}
    for idx, y in ((split.support_idx[t], split.support_y[t]),
                   (split.query_idx[t], split.query_y[t])):
        for i, label in zip(idx, y, strict=True):
            out.setdefault(int(label), set()).add(int(np.searchsorted(ends, i, side="right")))
    return out


def test_the_three_layouts_of_one_collection_give_the_same_task_file(make_cfg, tmp_path):
    """Folders of PNGs, CSV split files and pickles of the same pixels decode to the same
    pools, class order and episodes: one fingerprint."""
    tasks = {}
    for layout in ("folders", "csv", "pickle"):
        root = image_sets.write(tmp_path / layout, layout)
        cfg, d = _cfg(make_cfg, root, layout)
        preflight.check(cfg)
        tasks[layout] = data.generate_or_load(d, cfg.seed, tmp_path / "data")
    ts = tasks["folders"]
    assert {t.fingerprint for t in tasks.values()} == {ts.fingerprint}
    assert isinstance(ts.train, EpisodeSampler) and isinstance(ts.test, EpisodeSet)
    assert ts.train.pool.shape == (8 * 8, 16, 16, 3) and ts.train.pool.dtype == np.uint8
    assert ts.input_shape == (16, 16, 3) and ts.num_outputs == 5
    first = np.asarray(Image.open(tmp_path / "folders/train/n00000000/0000.png"))
    np.testing.assert_array_equal(ts.train.pool[0], first)  # decoded exactly, class by class
    batch = ts.test.take(slice(0, 6))
    assert batch.support_x.shape == (6, 5, 16, 16, 3) and batch.query_x.shape == (6, 15, 16, 16, 3)
    assert ts.val.num_tasks == 4 and ts.test.num_tasks == 6
    sizes = np.full(5, 8)
    for t in range(6):  # each label is one class, a different one per label; no image twice
        classes = _classes_of(ts.test, sizes, t)
        assert sorted(classes) == list(range(5)) and all(len(c) == 1 for c in classes.values())
        assert len(set().union(*classes.values())) == 5
        assert len(set(ts.test.support_idx[t]) | set(ts.test.query_idx[t])) == 20
        assert np.bincount(ts.test.support_y[t]).tolist() == [1] * 5
    loaded = data.load(ts.path)
    assert loaded.fingerprint == ts.fingerprint and isinstance(loaded.val, EpisodeSet)
    np.testing.assert_array_equal(loaded.test.take([2]).query_x, ts.test.take([2]).query_x)
    draws = [s.sample(np.random.default_rng(4), 2) for s in (ts.train, loaded.train)]
    np.testing.assert_array_equal(draws[0].support_x, draws[1].support_x)
    assert draws[0].support_x.shape == (2, 5, 16, 16, 3) and draws[0].query_y.shape == (2, 15)


def test_decoded_once_and_keyed_by_the_sources_content(make_cfg, tmp_path):
    root = image_sets.write(tmp_path / "set", "folders")
    _, d = _cfg(make_cfg, root)
    pool = images.load_images(d)["train"][0]
    caches = list(Path(d["cache_dir"]).glob("images-*.npz"))
    assert len(caches) == 1
    again = images.load_images(d)["train"][0]  # read back from the cache
    np.testing.assert_array_equal(again, pool)
    assert list(Path(d["cache_dir"]).glob("images-*.npz")) == caches
    before = data.data_file(d, 0, tmp_path / "data")
    edited = root / "train/n00000000/0000.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(edited)  # same name, new content
    changed = images.load_images(d)["train"][0]
    assert len(list(Path(d["cache_dir"]).glob("images-*.npz"))) == 2
    assert not changed[0].any() and np.array_equal(changed[1:], pool[1:])
    assert data.data_file(d, 0, tmp_path / "data") != before  # the task file is not reused


def test_images_are_resized_to_image_size_or_kept(make_cfg, tmp_path):
    root = image_sets.write(tmp_path / "set", "csv", fmt="jpg")
    _, d = _cfg(make_cfg, root, "csv")
    small = images.load_images({**d, "image_size": 8})
    native = images.load_images({**d, "image_size": None})
    assert small["test"][0].shape == (40, 8, 8, 3) and native["test"][0].shape == (40, 16, 16, 3)
    assert list(native["val"][1]) == [8] * 5 and native["val"][2][0] == "n00000008"


def test_a_flat_folder_is_split_by_the_seed(make_cfg, tmp_path):
    root = image_sets.write(tmp_path / "flat", "flat")
    cfg, d = _cfg(make_cfg, root, "flat")
    preflight.check(cfg)
    a = data.generate_or_load(d, 0, tmp_path / "a")
    b = data.generate_or_load(d, 0, tmp_path / "b")
    c = data.generate_or_load(d, 1, tmp_path / "c")
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert images.split_counts(18, [0.4, 0.3, 0.3]) == (7, 5, 6)
    assert a.train.pool.shape[0] == 7 * 8 and a.test.pool.shape[0] == 6 * 8
    assert a.val.pool.shape[0] == 5 * 8
    pools = [{im.tobytes() for im in p} for p in (a.train.pool, a.val.pool, a.test.pool)]
    assert not (pools[0] & pools[1] or pools[0] & pools[2] or pools[1] & pools[2])
    splits = [images.assign_classes(18, [0.4, 0.3, 0.3], data.stream_rng(s, "data"))
              for s in (0, 1)]
    assert sorted(np.concatenate(list(splits[0].values()))) == list(range(18))
    assert not np.array_equal(splits[0]["train"], splits[1]["train"])


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _emptied(path: Path) -> None:
    for p in path.iterdir():
        _remove(p)


def _thinned(folder: Path) -> None:
    for p in sorted(folder.iterdir())[3:]:
        p.unlink()


# (layout, how the collection is broken, extra overrides, what the one-line refusal says)
REFUSED = [
    ("folders", lambda r: _remove(r / "val"), [], r"split folder .*/val is missing.*"
     r"data\.num_val_tasks=0"),
    ("folders", lambda r: _remove(r / "test"), [], r"split folder .*/test is missing"),
    ("folders", lambda r: _emptied(r / "train"), [], r"folder .*/train is empty"),
    ("folders", lambda r: _emptied(r / "train/n00000003"), [],
     r"class folder .*train/n00000003 is empty"),
    ("folders", lambda r: _thinned(r / "test/n00000014"), [],
     r"Class .*test/n00000014 \(test split\) has 3 images, fewer than data\.k_shot \+ "
     r"data\.query_per_class = 4"),
    ("folders", lambda r: None, ["data.num_classes=6", "data.train_num_classes=null"],
     r"The val split has 5 classes, fewer than the 6"),
    ("folders", lambda r: _remove(r), [], r"data\.root=.* is not a folder"),
    ("flat", lambda r: _thinned(r / "n00000002"), [], r"Class .*n00000002 \(.* split\) has 3"),
    ("csv", lambda r: _remove(r / "train.csv"), [], r"Split file .*/train\.csv is missing"),
    ("csv", lambda r: _remove(r / "images/n0000000800000003.png"), [],
     r"Image .*n0000000800000003\.png \(named in .*val\.csv, line 5\) is missing"),
    ("csv", lambda r: (r / "test.csv").write_text("file,class\n"), [],
     r"does not start with the header 'filename,label'"),
    ("pickle", lambda r: _remove(r / "mini-imagenet-cache-val.pkl"), [],
     r"Pickle .*mini-imagenet-cache-val\.pkl is missing"),
]


@pytest.mark.parametrize("layout, breaks, extra, message", REFUSED)
def test_broken_collections_are_refused_before_a_run_starts(layout, breaks, extra, message,
                                                            make_cfg, tmp_path):
    root = image_sets.write(tmp_path / "set", layout)
    breaks(root)
    cfg, _ = _cfg(make_cfg, root, layout, *extra)
    with pytest.raises(ConfigError, match=message) as e:
        preflight.check(cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "data").exists()


def test_without_validation_tasks_the_val_split_is_not_needed(make_cfg, tmp_path):
    root = image_sets.write(tmp_path / "set", "folders")
    _remove(root / "val")
    cfg, d = _cfg(make_cfg, root, "folders", "data.num_val_tasks=0")
    preflight.check(cfg)
    assert data.generate_or_load(d, 0, tmp_path / "data").val is None


def test_cli_refusals_are_one_line(tmp_path):
    root = image_sets.write(tmp_path / "set", "folders")
    _remove(root / "test")
    for args, fragment in (
            (["experiment=miniimagenet_5w1s_protonet"], "data.root is required"),
            (["experiment=cifarfs_5w1s_protonet", f"data.root={root}"], "is missing")):
        out = run_cli(*args, *store_overrides(tmp_path), timeout=60)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
        assert fragment in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "mlruns").exists()


def test_an_unreadable_image_fails_naming_it(make_cfg, tmp_path):
    root = image_sets.write(tmp_path / "set", "folders")
    bad = root / "val/n00000009/0004.png"
    bad.write_bytes(b"not a png at all")
    cfg, d = _cfg(make_cfg, root)
    preflight.check(cfg)  # the layout is fine: only decoding finds it
    with pytest.raises(DataError, match=rf"Image {bad} cannot be read"):
        data.generate_or_load(d, 0, tmp_path / "data")
    assert not list(Path(d["cache_dir"]).glob("images-*.npz"))


def test_mixed_sizes_without_resizing_fail_naming_two_files(make_cfg, tmp_path):
    root = image_sets.write(tmp_path / "set", "folders")
    odd = root / "test/n00000015/0001.png"
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(odd)
    _, d = _cfg(make_cfg, root, "folders", "data.image_size=null")
    with pytest.raises(DataError, match=rf"is 16x16, {odd} is 16x12.*Set data\.image_size"):
        data.generate_or_load(d, 0, tmp_path / "data")
    resized = {**d, "image_size": 16}  # resizing makes them fit
    assert data.generate_or_load(resized, 0, tmp_path / "data").test.pool.shape[1:] == (16, 16, 3)


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_a_pickle_cannot_run_code_and_a_wrong_one_is_named(make_cfg, tmp_path):
    root = image_sets.write(tmp_path / "set", "pickle")
    _, d = _cfg(make_cfg, root, "pickle")
    exploit = _Exploit()
    exploit.target = str(tmp_path / "pwned")
    with open(root / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": exploit, "class_dict": {}}, f)
    with pytest.raises(DataError, match=r"mini-imagenet-cache-test\.pkl is not a miniImageNet "
                                        r"cache pickle.*pathlib"):
        images.load_images(d)
    assert not (tmp_path / "pwned").exists()
    with open(root / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": np.zeros((4, 16, 16), np.uint8), "class_dict": {}}, f)
    with pytest.raises(DataError, match=r"image_data must be an \[N, H, W, 3\] array"):
        images.load_images(d)


def test_cifar_style_pickles_with_data_and_labels_are_read(make_cfg, tmp_path):
    """MetaOptNet's CIFAR-FS / FC100 pickles: ``data`` [N, 32, 32, 3] and ``labels``."""
    root = image_sets.write(tmp_path / "set", "pickle")
    for split in ("train", "val", "test"):
        path = root / f"mini-imagenet-cache-{split}.pkl"
        with open(path, "rb") as f:
            content = pickle.load(f)
        labels = np.zeros(len(content["image_data"]), np.int64)
        for name, idx in content["class_dict"].items():
            labels[idx] = int(name[1:])
        with open(root / f"CIFAR_FS_{split}.pickle", "wb") as f:
            pickle.dump({"data": content["image_data"], "labels": labels.tolist()}, f)
    _, d = _cfg(make_cfg, root, "pickle")
    _, cifar = _cfg(make_cfg, root, "pickle", "data.pickle_file='CIFAR_FS_{split}.pickle'")
    a = data.generate_or_load(d, 0, tmp_path / "a")
    b = data.generate_or_load(cifar, 0, tmp_path / "b")
    np.testing.assert_array_equal(a.train.pool, b.train.pool)
    assert list(images.load_images(cifar)["test"][2]) == [str(c) for c in range(13, 18)]


def test_decoded_cache_that_is_corrupt_is_rebuilt(make_cfg, tmp_path):
    root = image_sets.write(tmp_path / "set", "pickle")
    _, d = _cfg(make_cfg, root, "pickle")
    pool = images.load_images(d)["train"][0]
    [cache] = Path(d["cache_dir"]).glob("images-*.npz")
    cache.write_bytes(b"garbage")
    assert decoded.read(cache) is None
    np.testing.assert_array_equal(images.load_images(d)["train"][0], pool)


# --- odd images and tampered caches ---------------------------------------------------------


def test_a_pickle_of_float_images_is_refused_not_cast(make_cfg, tmp_path):
    """float32 in [0, 1] cast to uint8 would be all 0s and 1s: a run at chance accuracy."""
    root = image_sets.write(tmp_path / "set", "pickle")
    path = root / "mini-imagenet-cache-train.pkl"
    with open(path, "rb") as f:
        content = pickle.load(f)
    content["image_data"] = content["image_data"].astype(np.float32) / 255
    with open(path, "wb") as f:
        pickle.dump(content, f)
    _, d = _cfg(make_cfg, root, "pickle")
    with pytest.raises(DataError, match=r"mini-imagenet-cache-train\.pkl .*images are float32, "
                                        r"values 0\.\.1, not uint8") as e:
        data.generate_or_load(d, 0, tmp_path / "data")
    assert "\n" not in str(e.value)
    assert not list(Path(d["cache_dir"]).glob("images-*.npz"))


def test_a_tampered_decoded_cache_is_rebuilt_not_trusted(make_cfg, tmp_path, caplog):
    """The cache holds the sha256 of its content: an edited pool gives the sources' pixels and
    the same task fingerprint, with a warning, never a new fingerprint for the same sources."""
    root = image_sets.write(tmp_path / "set", "folders")
    _, d = _cfg(make_cfg, root)
    honest = data.generate_or_load(d, 0, tmp_path / "a")
    [cache] = Path(d["cache_dir"]).glob("images-*.npz")
    with np.load(cache) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["train_images"][0] = 0  # swap in other pixels, keep the stored hash
    np.savez(cache, **arrays)
    again = data.generate_or_load(d, 0, tmp_path / "b")
    assert again.fingerprint == honest.fingerprint
    np.testing.assert_array_equal(again.train.pool, honest.train.pool)
    assert f"decoded cache {cache} does not match the sha256 stored in it" in caplog.text
    with np.load(cache) as f:  # rebuilt: the right pixels again
        np.testing.assert_array_equal(f["train_images"], honest.train.pool)


def test_16_bit_pngs_are_scaled_to_8_bits_not_saturated(make_cfg, tmp_path):
    root = image_sets.write(tmp_path / "set", "folders")
    ramp = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)  # 0..65535, 8-bit steps
    Image.fromarray(ramp).save(root / "train/n00000000/0000.png")
    with Image.open(root / "train/n00000000/0000.png") as im:
        assert im.mode == "I;16"
    _, d = _cfg(make_cfg, root)
    first = images.load_images(d)["train"][0][0]
    expected = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for channel in range(3):
        np.testing.assert_array_equal(first[..., channel], expected)


@pytest.mark.parametrize("layout", ["folders", "flat"])
def test_hidden_files_and_folders_are_not_data(layout, make_cfg, tmp_path):
    """macOS's ``._*.png`` beside the images and a ``.ipynb_checkpoints`` folder of PNGs among
    the classes (and among the splits) are skipped, as ``.DS_Store`` is."""
    root = image_sets.write(tmp_path / "set", layout)
    cfg, d = _cfg(make_cfg, root, layout)
    clean = data.generate_or_load(d, 0, tmp_path / "clean")
    classes = root / "train" if layout == "folders" else root
    first = sorted(p for p in classes.iterdir() if p.is_dir())[0]
    (first / "._0000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (first / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    for where in (classes, root):
        checkpoints = where / ".ipynb_checkpoints"
        checkpoints.mkdir(exist_ok=True)
        shutil.copy(first / "0000.png", checkpoints / "0000-checkpoint.png")
    preflight.check(cfg)
    dirty = data.generate_or_load(d, 0, tmp_path / "dirty")
    assert dirty.fingerprint == clean.fingerprint
    assert dirty.train.pool.shape == clean.train.pool.shape


def test_episodes_record_their_classes_by_name(make_cfg, tmp_path):
    """Each test (validation) episode's classes, label by label, as indices into the split's
    class names: the folders' names."""
    root = image_sets.write(tmp_path / "set", "folders")
    _, d = _cfg(make_cfg, root)
    ts = data.generate_or_load(d, 0, tmp_path / "data")
    assert ts.ci_unit == "episode" and ts.test_source is None
    for split in ("train", "val", "test"):
        assert ts.splits[split] == sorted(p.name for p in (root / split).iterdir())
    for episodes, classes in ((ts.test, ts.test_classes), (ts.val, ts.val_classes)):
        assert classes.shape == (episodes.num_tasks, 5)
        for t in range(episodes.num_tasks):
            drawn = _classes_of(episodes, np.full(5, 8), t)
            assert {label: {int(classes[t, label])} for label in range(5)} == drawn
    np.testing.assert_array_equal(data.load(ts.path).test_classes, ts.test_classes)
