"""Small real image collections for the ``data=images`` tests, written by
``scripts/make_fake_fewshot.py`` (real PNG/JPEG files, CSV split files, pickles) under a test's
temporary folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pipeline import PROJECT_ROOT

_spec = importlib.util.spec_from_file_location("make_fake_fewshot",
                                               PROJECT_ROOT / "scripts" / "make_fake_fewshot.py")
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)

#: 8 / 5 / 5 classes of 8 images of 16x16: enough for 5-way 1-shot episodes with 3 queries.
CLASSES, PER_CLASS, SIZE = (8, 5, 5), 8, 16

#: Overrides that make an image run tiny (with ``data.root`` / ``data.layout`` added).
TINY_IMAGES = ["data.image_size=16", "data.query_per_class=3", "data.train_num_classes=5",
               "data.train_query_per_class=3", "data.num_test_tasks=6", "data.num_val_tasks=4",
               "model.filters=8", "meta_test.task_batch_size=6"]


def write(root: Path, layout: str = "folders", **kwargs) -> Path:
    """A collection in ``layout`` (folders, flat, csv, pickle); the same pixels for one seed."""
    args = {"classes": CLASSES, "per_class": PER_CLASS, "size": SIZE, **kwargs}
    return fake.write(root, layout, **args)


def overrides(root: Path, layout: str = "folders") -> list[str]:
    """``data=images`` on that collection (a flat folder: split 40/30/30 by the seed)."""
    if layout == "flat":
        return [f"data.root={root}", "data.layout=folders", "data.class_split=[0.4,0.3,0.3]"]
    return [f"data.root={root}", f"data.layout={layout}"]
