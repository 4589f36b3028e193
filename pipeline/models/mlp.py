"""Fully connected networks: ``hidden_units`` Dense layers with one activation."""

from __future__ import annotations

import keras

from pipeline.config import MLPConfig


def body(cfg: MLPConfig) -> list[keras.layers.Layer]:
    """The hidden layers; the last one's output is the embedding (ProtoNets)."""
    return [keras.layers.Dense(units, activation=cfg.activation, name=f"hidden_{i}")
            for i, units in enumerate(cfg.hidden_units)]
