"""Schemas of the ``model`` group: one dataclass per network (its module in ``pipeline/models/``
builds the layers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from omegaconf import MISSING

from pipeline.config.fields import (
    ACTIVATIONS,
    BATCH_NORM,
    DOWNSAMPLE,
    HEAD_INITS,
    HEADS,
    choice,
    num,
)
from pipeline.config.registry import option


@dataclass
class ModelConfig:
    #: Takes images ``[H, W, C]`` (the image data families), not feature vectors.
    image_model: ClassVar[bool] = False
    name: str = MISSING
    #: Initial weights of the classification/regression head: ``glorot_uniform`` (Keras'
    #: default) or ``zeros`` (all classes start equal: only the start; the head is then
    #: meta-learned, unlike ``algorithm.zero_head``).
    head_init: str = choice("glorot_uniform", HEAD_INITS)
    #: Start from a logged model's weights instead of the seeded draw: an MLflow model URI
    #: (``runs:/<run_id>/model``, ``models:/<name>/<version>``) or a local model folder. With
    #: ``meta_train.iterations=0`` the run only meta-tests that model (e.g. other meta_test
    #: settings on the same episodes).
    init_from: str | None = None


@option("model", builds="pipeline.models.mlp:body")
@dataclass
class MLPConfig(ModelConfig):
    """Fully connected network; the notebook's 64-64 ReLU MLP is the default."""

    name: str = "mlp"
    hidden_units: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = choice("relu", ACTIVATIONS)
    #: ``softmax``: one logit per class; ``sigmoid``: one logit for 2 classes (the notebook's head).
    head: str = choice("softmax", HEADS)


@dataclass
class ImageModelConfig(ModelConfig):
    """A CNN on images; ``batch_norm`` as described for :class:`Conv4Config`."""

    image_model: ClassVar[bool] = True
    batch_norm: str = choice("transductive", BATCH_NORM)
    #: Running-average momentum (``running`` only).
    bn_momentum: float = num(0.9, ge=0, lt=1)
    #: Inputs are multiplied by this first (uint8 images in 0..255 -> 0..1).
    input_scale: float = num(1 / 255, gt=0)

    def min_image_size(self) -> int:
        """The smallest image side the network takes: each 2x2 max-pool halves it (rounding
        down), and a pool of a 1-pixel map has no output."""
        return 1


@option("model", builds="pipeline.models.conv4:body")
@dataclass
class Conv4Config(ImageModelConfig):
    """The standard few-shot CNN (Vinyals et al. 2016; MAML; ProtoNets): ``blocks`` x (3x3 conv,
    batch norm, ReLU, 2x2 max-pool) on any [H, W, C] images (Omniglot's 28x28x1 -> 64
    features; miniImageNet's 84x84x3 -> 5x5x64 = 1,600), then a linear head (none for protonet).

    ``batch_norm``: ``transductive`` normalises with the statistics of the batch at hand, at
    meta-training and meta-test alike (the MAML paper's choice; no running averages exist);
    ``running`` normalises training-mode passes (meta-training, inner-loop adaptation) with batch
    statistics, keeps running averages from meta-training, and evaluates queries with them
    (the ProtoNets code's choice); ``none`` drops the normalisation. Logged as the tag
    ``batch_norm``.
    """

    name: str = "conv4"
    filters: int = num(64, ge=1)
    blocks: int = num(4, ge=1)
    #: How each block halves the image: ``maxpool`` (3x3 conv, then a 2x2 max-pool; flattened
    #: features: Vinyals et al., ProtoNets, MAML on miniImageNet) or ``stride`` (a 3x3 conv with
    #: stride 2 and no pooling, then the spatial mean of the last block: the MAML paper's Omniglot
    #: net, learn2learn's ``OmniglotCNN``; ~3.7x fewer conv FLOPs on 28x28).
    downsample: str = choice("maxpool", DOWNSAMPLE)

    def min_image_size(self) -> int:
        return 2 ** self.blocks if self.downsample == "maxpool" else 1


@option("model", builds="pipeline.models.resnet12:body")
@dataclass
class ResNet12Config(ImageModelConfig):
    """ResNet-12, the standard larger few-shot backbone (TADAM, MetaOptNet, FEAT): 4 residual
    blocks of 3 x [3x3 conv, batch norm, leaky ReLU] with a 1x1-conv shortcut, each followed by
    a 2x2 max-pool; ``filters`` 64-160-320-640; 84x84x3 -> 5x5x640, then a global average pool
    (640 features) unless ``global_pool`` is false (16,000 flattened, as MetaOptNet).
    ``batch_norm`` as for conv4."""

    name: str = "resnet12"
    filters: list[int] = field(default_factory=lambda: [64, 160, 320, 640])
    #: Negative slope of the leaky ReLUs.
    leaky_slope: float = num(0.1, ge=0, lt=1)
    global_pool: bool = True

    def min_image_size(self) -> int:
        return 2 ** len(self.filters)
