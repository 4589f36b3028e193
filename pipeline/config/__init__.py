"""Config schemas (one dataclass per Hydra group option, registered with
:func:`pipeline.config.registry.option`), Hydra composition and pure validation.

Hydra/OmegaConf check key names and types while composing (a mistyped key or a non-numeric
learning rate stops composition). Ranges and choice lists live in each field's metadata and are
checked by :func:`validate` before any stage runs, so every error names the full dotted key, the
bad value and what is allowed. Nothing here imports TensorFlow or MLflow.
"""

from pipeline.config.algorithm import (
    AlgorithmConfig,
    ANILConfig,
    FOMAMLConfig,
    InnerLoopConfig,
    MAMLConfig,
    MetaSGDConfig,
    NotebookAlgorithmConfig,
    ProtoNetConfig,
    ReptileConfig,
    ScratchConfig,
)
from pipeline.config.compose import compose, default_tracking_uri, register_configs
from pipeline.config.data import (
    ClassificationDataConfig,
    DataConfig,
    EpisodeDataConfig,
    ImagesDataConfig,
    NotebookDataConfig,
    OmniglotDataConfig,
    SinusoidDataConfig,
    SyntheticDataConfig,
    TabularDataConfig,
)
from pipeline.config.model import (
    Conv4Config,
    ImageModelConfig,
    MLPConfig,
    ModelConfig,
    ResNet12Config,
)
from pipeline.config.optimizer import AdamConfig, OptimizerConfig, SGDConfig
from pipeline.config.run import (
    Config,
    FinetuneConfig,
    LinearProbeConfig,
    LocalTrackingConfig,
    MetaTestConfig,
    MetaTrainConfig,
    PathsConfig,
    PretrainConfig,
    RuntimeConfig,
    ServerTrackingConfig,
    SweepConfig,
    TrackingConfig,
)
from pipeline.config.validate import validate
from pipeline.errors import ConfigError

__all__ = [
    "ANILConfig", "AdamConfig", "AlgorithmConfig", "ClassificationDataConfig", "Config",
    "ConfigError", "Conv4Config", "DataConfig", "EpisodeDataConfig", "FOMAMLConfig",
    "FinetuneConfig",
    "ImageModelConfig", "ImagesDataConfig", "InnerLoopConfig", "LinearProbeConfig",
    "LocalTrackingConfig", "MAMLConfig",
    "MLPConfig", "MetaSGDConfig", "MetaTestConfig", "MetaTrainConfig", "ModelConfig",
    "NotebookAlgorithmConfig", "NotebookDataConfig", "OmniglotDataConfig", "OptimizerConfig",
    "PathsConfig", "PretrainConfig", "ProtoNetConfig", "ReptileConfig", "ResNet12Config",
    "RuntimeConfig", "SGDConfig", "ScratchConfig", "ServerTrackingConfig", "SinusoidDataConfig",
    "SweepConfig", "SyntheticDataConfig", "TabularDataConfig", "TrackingConfig", "compose",
    "default_tracking_uri", "register_configs", "validate",
]
