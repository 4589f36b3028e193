"""Central finite differences of an algorithm's meta-loss, the reference for meta-gradients."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def finite_differences(algo, batch, eps: float = 1e-6) -> np.ndarray:
    """d(meta-loss)/d(each meta-variable entry), flattened in ``algo.meta_variables`` order."""
    meta_loss = tf.function(lambda *b: algo.meta_gradients(b)[0]["loss"])  # traced once
    numeric = []
    for v in algo.meta_variables:
        base = v.numpy()
        for i in range(base.size):
            values = []
            for sign in (1, -1):
                w = base.copy().ravel()
                w[i] += sign * eps
                v.assign(w.reshape(base.shape))
                values.append(float(meta_loss(*batch)))
            numeric.append((values[0] - values[1]) / (2 * eps))
        v.assign(base)
    return np.array(numeric)
