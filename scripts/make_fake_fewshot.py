"""Write a small made-up few-shot image collection in one of the layouts ``data=images`` reads,
so the image presets can be tried before pointing them at a real copy of miniImageNet,
CIFAR-FS or FC100.

Each class is a colour and a stripe pattern (orientation, frequency) of its own; each image of a
class has its own phase, brightness and pixel noise, so a conv4 learns it in a few hundred
episodes. Class names look like ImageNet synsets (``n00000012``).

    python scripts/make_fake_fewshot.py OUT [--layout folders|flat|csv|pickle]
        [--classes 64 16 20] [--per-class 60] [--size 84] [--format png|jpg] [--seed 0]

``folders``: ``OUT/{train,val,test}/<class>/*.png``; ``flat``: ``OUT/<class>/*.png`` (use with
``data.class_split``); ``csv``: ``OUT/{train,val,test}.csv`` + ``OUT/images/``; ``pickle``:
``OUT/mini-imagenet-cache-{train,val,test}.pkl``. Then, e.g.:

    python -m pipeline experiment=miniimagenet_5w1s_protonet data.root=OUT data.layout=csv
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import pickle
import sys
from pathlib import Path

import numpy as np

LAYOUTS = ("folders", "flat", "csv", "pickle")
SPLITS = ("train", "val", "test")


def class_images(index: int, count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` images [count, size, size, 3] uint8 of class ``index``."""
    hue = (index * 0.6180339887) % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.4 + 0.5 * (index % 3) / 2, 0.9))
    angle = np.pi * ((index * 0.3819660113) % 1.0)
    freq = 2 + index % 4
    yy, xx = np.mgrid[0:size, 0:size] / size
    along = np.cos(angle) * xx + np.sin(angle) * yy
    phase = rng.uniform(0, 2 * np.pi, (count, 1, 1))
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * along[None] + phase)
    brightness = rng.uniform(0.7, 1.0, (count, 1, 1, 1))
    image = brightness * (0.35 + 0.65 * stripes[..., None]) * colour
    image = image + rng.normal(0, 0.06, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write(out: Path, layout: str = "folders", classes: tuple[int, int, int] = (64, 16, 20),
          per_class: int = 60, size: int = 84, fmt: str = "png", seed: int = 0) -> Path:
    """Write the collection under ``out``; return ``out``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    first = 0
    for split, count in zip(SPLITS, classes, strict=True):
        names = [f"n{first + c:08d}" for c in range(count)]
        images = {n: class_images(first + c, per_class, size, rng)
                  for c, n in enumerate(names)}
        first += count
        if layout == "pickle":
            stacked = np.concatenate(list(images.values()))
            class_dict = {n: list(range(i * per_class, (i + 1) * per_class))
                          for i, n in enumerate(names)}
            with open(out / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
                pickle.dump({"image_data": stacked, "class_dict": class_dict}, f)
            continue
        rows = []
        for name, ims in images.items():
            folder = {"folders": out / split / name, "flat": out / name,
                      "csv": out / "images"}[layout]
            folder.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(ims):
                file = f"{name}{i:08d}.{fmt}" if layout == "csv" else f"{i:04d}.{fmt}"
                Image.fromarray(im).save(folder / file)
                rows.append((file, name))
        if layout == "csv":
            with open(out / f"{split}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["filename", "label"])
                w.writerows(rows)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--layout", choices=LAYOUTS, default="folders")
    p.add_argument("--classes", type=int, nargs=3, default=[64, 16, 20],
                   metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--size", type=int, default=84)
    p.add_argument("--format", choices=("png", "jpg"), default="png")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    write(a.out, a.layout, tuple(a.classes), a.per_class, a.size, a.format, a.seed)
    print(f"wrote {sum(a.classes)} classes x {a.per_class} images of {a.size}x{a.size} "
          f"({a.layout}) to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
