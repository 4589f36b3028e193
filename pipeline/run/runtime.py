"""Process-wide TensorFlow set-up: threads, determinism, seeds. Called once per run."""

from __future__ import annotations

import keras
import tensorflow as tf

from pipeline.config import RuntimeConfig
from pipeline.run import runtime_env  # noqa: F401  (before TensorFlow is imported)


def setup(cfg: RuntimeConfig, seed: int) -> None:
    """Apply thread limits (only possible before TF's first op) and determinism, then seed."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.intra_op_threads)
        inter = cfg.inter_op_threads
        tf.config.threading.set_inter_op_parallelism_threads(
            cfg.intra_op_threads if inter is None else inter)
    except RuntimeError:
        pass  # TF already initialised in this process (tests share one): keep its settings
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
