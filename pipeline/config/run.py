"""Schemas of a run's stages and surroundings: meta_train, meta_test, tracking, paths, runtime,
and the root config that holds one option of every group."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from pipeline.config.algorithm import AlgorithmConfig, ScratchConfig
from pipeline.config.data import DataConfig
from pipeline.config.fields import INNER_OPTIMIZERS, PRETRAINED_BASELINES, choice, num
from pipeline.config.model import ModelConfig
from pipeline.config.optimizer import OptimizerConfig
from pipeline.config.registry import option


@dataclass
class MetaTrainConfig:
    iterations: int = num(1000, ge=0)
    meta_batch_size: int = num(25, ge=1)
    #: Log training curves every this many meta-iterations (averaged over the window).
    log_every: int = num(10, ge=1)
    #: XLA-compile the meta-training step.
    jit_compile: bool = False
    #: Meta-iterations run inside one compiled call (a graph loop): fewer Python round trips.
    steps_per_call: int = num(100, ge=1)
    #: Score the algorithm on the data's fixed validation tasks every this many meta-iterations
    #: (and after the last), log the ``val/`` curves, and meta-test the weights that scored
    #: best (0 = off: meta-test the last weights). A compiled chunk never crosses a validation
    #: point: chunks end at multiples of ``validate_every`` as well as of ``steps_per_call``.
    validate_every: int = num(0, ge=0)


@dataclass
class PretrainConfig:
    """Supervised pre-training on the training split for the ``finetune`` and ``linear_probe``
    baselines (how it pre-trains depends on the family: ``DataConfig.pretraining``)."""

    #: Training examples the pre-training sees (null = as many as meta-training sees:
    #: iterations x meta-batch x support and query examples per task).
    examples: int | None = num(None, ge=1)
    #: Examples per step (null = as many as one meta-iteration's: meta-batch x support and
    #: query examples per task, so pre-training takes as many steps as meta-training and
    #: holds as many examples' activations as a first-order step; 1,024 for an algorithm that
    #: trains in epochs).
    batch_size: int | None = num(None, ge=1)
    learning_rate: float = num(0.001, gt=0)
    optimizer: str = choice("adam", INNER_OPTIMIZERS)
    #: Steps run inside one compiled call (a graph loop).
    steps_per_call: int = num(200, ge=1)
    #: Reuse a body pre-trained earlier on the same data, model, settings and seed (cached in
    #: ``paths.data_dir``/pretrained).
    cache: bool = True


@dataclass
class FinetuneConfig:
    """The ``finetune`` baseline: the pre-trained body and a new head, trained on each test
    task's support set. Chen et al. 2019's "Baseline" trains only the new head on the frozen
    body; here the head is trained alone first and the body then joins at a smaller rate
    (linear probing then fine-tuning, Kumar et al. 2022), so every weight adapts without a
    random head's gradients wrecking the body (at scratch's 0.01 on every weight from the
    first step, a conv4 body fell to 28.8% on Omniglot 5-way, below its own linear probe's
    62.7%: bench/README.md)."""

    #: Full-batch steps on the support set, in all.
    steps: int = num(100, ge=0)
    #: The first this many steps train the head only (the body frozen).
    freeze_body_steps: int = num(50, ge=0)
    #: The new head's rate, and the body's once it joins.
    learning_rate: float = num(0.01, gt=0)
    body_learning_rate: float = num(0.0001, ge=0)
    optimizer: str = choice("adam", INNER_OPTIMIZERS)


@dataclass
class LinearProbeConfig:
    """scikit-learn's ``LogisticRegression`` on the frozen body's support embeddings (Tian et
    al. 2020; regression: ``Ridge``)."""

    #: Inverse regularisation strength (``C``; regression: ``alpha = 1 / C``).
    C: float = num(1.0, gt=0)
    max_iter: int = num(1000, ge=1)
    #: L2-normalise every embedding first, as Tian et al.
    normalize: bool = True


@dataclass
class MetaTestConfig:
    #: false: stop after meta-training, the test tasks untouched (a search's trials: selection
    #: is on validation, the test tasks are scored once, for the chosen config).
    enabled: bool = True
    #: Also evaluate the no-meta-learning baseline on the same test tasks.
    compare_to_scratch: bool = True
    #: Test tasks adapted together in one vectorised call.
    task_batch_size: int = num(200, ge=1)
    #: Also score the algorithm after exactly these many inner steps (an adaptation curve).
    eval_steps: list[int] = field(default_factory=list)
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    #: Baselines scored on the same test episodes as the method, each with a paired gain:
    #: ``scratch`` (a fresh network per task), ``finetune`` (the pre-trained body and a new
    #: head, trained on the support set as ``meta_test.finetune`` says),
    #: ``linear_probe`` (the frozen pre-trained body and a logistic regression). Scratch also
    #: needs ``compare_to_scratch``.
    baselines: list[str] = field(default_factory=lambda: ["scratch"])
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    linear_probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)


@dataclass
class TrackingConfig:
    #: MLflow tracking URI: ``sqlite:///...`` (embedded) or ``http://host:port`` (a server).
    uri: str = MISSING
    #: Artifact root for new experiments on an embedded store (null = the server decides).
    artifact_location: str | None = None
    experiment_name: str = "meta-learning"
    #: The run's name (null = one made from the config: algorithm, family, N-way K-shot, seed).
    run_name: str | None = None
    log_model: bool = True
    #: Data files up to this size are logged as artifacts; larger ones by fingerprint only.
    log_dataset_max_mb: float = num(50.0, ge=0)
    #: Seconds an HTTP tracking call may wait / how often it is retried (bounded, not minutes).
    http_timeout_s: int = num(10, ge=1)
    http_max_retries: int = num(2, ge=0)


@option("tracking", name="local")
@dataclass
class LocalTrackingConfig(TrackingConfig):
    """The embedded store under the project root, whatever the working directory."""

    uri: str = "sqlite:///${paths.mlruns_dir}/mlflow.db"
    artifact_location: str | None = "${paths.mlruns_dir}/artifacts"


@option("tracking", name="server")
@dataclass
class ServerTrackingConfig(TrackingConfig):
    """An MLflow tracking server shared by many machines (``MLFLOW_TRACKING_URI``); the server
    stores the artifacts (``--artifacts-destination``)."""

    uri: str = "${oc.env:MLFLOW_TRACKING_URI,http://127.0.0.1:5000}"


@option("paths", name="default")
@dataclass
class PathsConfig:
    root_dir: str = "${project_root:}"
    data_dir: str = "${paths.root_dir}/data"
    mlruns_dir: str = "${paths.root_dir}/mlruns"
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class RuntimeConfig:
    #: TensorFlow op determinism: same seed, same numbers.
    deterministic: bool = True
    #: Threads per op; 1 is fastest for small models and keeps parallel jobs from fighting.
    #: A single conv run on N cores: N (bench/README.md, "Conv4 speed").
    intra_op_threads: int = num(1, ge=0)
    #: Independent ops run at once (a conv4's per-task convolutions); null: as many as
    #: ``intra_op_threads``.
    inter_op_threads: int | None = num(None, ge=0)
    #: Refuse a run whose estimated memory (pipeline/memory.py: the meta-batch's tensors) is
    #: more than the machine has available; false: run anyway (the estimate is still logged).
    memory_check: bool = True


@dataclass
class SweepConfig:
    """Multiruns (``-m``) only; a single run ignores these."""

    #: Jobs whose configs differ only in these keys form a group (a seed group): one MLflow run
    #: between the sweep's parent and those jobs, holding across-seed means and 95% CIs.
    group_by: list[str] = field(default_factory=lambda: ["seed"])
    #: Continue an earlier sweep of the same command: its parent run's id, or ``last`` (the
    #: experiment's latest sweep). FINISHED jobs are skipped, KILLED ones resumed from their
    #: checkpoints, FAILED ones rerun.
    resume: str | None = None
    #: A search (``hydra/sweeper=optuna``) whose objective is a ``test/`` metric tunes on the
    #: test tasks; it is refused unless this is true.
    allow_test_objective: bool = False
    #: Set by the search for each of its jobs: the Optuna trial number and study the job
    #: reports its ``val/`` objective to (for pruning). Never set them by hand.
    trial: int | None = num(None, ge=0)
    study: str | None = None


@dataclass
class Config:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    algorithm: AlgorithmConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    tracking: TrackingConfig = MISSING
    paths: PathsConfig = MISSING
    meta_train: MetaTrainConfig = field(default_factory=MetaTrainConfig)
    meta_test: MetaTestConfig = field(default_factory=MetaTestConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    #: The one seed behind data, initialisation and task sampling.
    seed: int = num(0, ge=0, lt=2**31)


#: Pre-training's batch where neither ``meta_test.pretrain.batch_size`` nor a meta-batch sets it.
EPOCHS_PRETRAIN_BATCH = 1024


def pretrain_batch_size(cfg: Config, per_iteration: int) -> int:
    """Pre-training's examples per step: ``meta_test.pretrain.batch_size``, else
    ``per_iteration``, the examples one meta-iteration sees (not for an algorithm that trains
    in epochs, nor when unknown: 0)."""
    if cfg.meta_test.pretrain.batch_size:
        return cfg.meta_test.pretrain.batch_size
    return per_iteration if cfg.algorithm.meta_batches and per_iteration else (
        EPOCHS_PRETRAIN_BATCH)


def pretrains(cfg: Config) -> bool:
    """Whether the run pre-trains a body (a baseline that needs one is on, and meta-test is)."""
    return cfg.meta_test.enabled and any(b in PRETRAINED_BASELINES
                                         for b in cfg.meta_test.baselines)
