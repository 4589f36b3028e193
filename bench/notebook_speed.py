"""Meta-training speed: the pipeline against the notebook's own loop, side by side.

The notebook's shape: 100 tasks x 100 samples x 20 features, 10 epochs, each epoch a Keras
``model.fit(epochs=1, batch_size=32)`` on every task in turn. The pipeline's ``notebook``
algorithm runs the same updates (same model, optimizer, batch size, shuffling per epoch) as one
compiled graph per epoch. Also reports MAML meta-iterations per second on ``data=synthetic``.

    .venv/bin/python -m bench.notebook_speed
"""

from __future__ import annotations

import numpy as np

from bench.common import best_of, config, machine, tasks_of
from pipeline.run import runtime
from pipeline.run.runner import build


def notebook_loop(tasks, cfg) -> None:
    """The notebook's cells 2, 3 and 7, verbatim in spirit: one ``fit`` call per task per epoch."""
    import keras

    x = np.concatenate([tasks.train.support_x, tasks.train.query_x], axis=1)
    y = np.concatenate([tasks.train.support_y, tasks.train.query_y], axis=1)
    meta_model = keras.Sequential([keras.Input((x.shape[-1],)),
                                   keras.layers.Dense(64, activation="relu"),
                                   keras.layers.Dense(64, activation="relu"),
                                   keras.layers.Dense(1, activation="sigmoid")])
    meta_model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.001),
                       loss="binary_crossentropy", metrics=["accuracy"])
    for _epoch in range(cfg.algorithm.epochs):
        for task in range(x.shape[0]):
            meta_model.fit(x[task], y[task], epochs=1, batch_size=32, verbose=0)


def pipeline_loop(tasks, cfg) -> None:
    algo = build(cfg, tasks)
    rng = np.random.default_rng(0)
    for _ in algo.meta_train(tasks.train, cfg.meta_train, rng):
        pass


def maml_rate(chunks: int = 6) -> float:
    """Meta-iterations per second, over ``chunks`` compiled chunks of 100 (the first, which
    traces and compiles, is not timed)."""
    cfg = config(f"meta_train.iterations={100 * (chunks + 1)}", "meta_train.steps_per_call=100")
    tasks = tasks_of(cfg)
    algo = build(cfg, tasks)
    it = algo.meta_train(tasks.train, cfg.meta_train, np.random.default_rng(0))
    next(it)  # compile outside the timing
    seconds = best_of(lambda: next(it), repeat=chunks)
    return 100 / seconds


def main() -> None:
    cfg = config("experiment=notebook", "paths.data_dir=/tmp/bench/data")
    runtime.setup(cfg.runtime, cfg.seed)
    tasks = tasks_of(cfg)
    pipeline_loop(tasks, cfg)  # warm-up: trace and compile once
    ours = best_of(lambda: pipeline_loop(tasks, cfg))
    theirs = best_of(lambda: notebook_loop(tasks, cfg), repeat=1)
    rate = maml_rate()
    print(f"machine: {machine()}")
    print("| what | seconds | ratio |\n| --- | --- | --- |")
    print(f"| notebook loop: 10 epochs x 100 tasks of model.fit | {theirs:.2f} | 1.0x |")
    print(f"| pipeline `algorithm=notebook`, same updates | {ours:.2f} | {theirs / ours:.1f}x |")
    print(f"\nMAML (second order) on data=synthetic, meta-batch 25: {rate:.0f} meta-iterations/s "
          f"({1000 / rate:.2f} ms each)")


if __name__ == "__main__":
    main()
