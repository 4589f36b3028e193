"""Schemas of the ``algorithm`` group: one dataclass per algorithm (its module in
``pipeline/algorithms/`` implements it). What generic code needs to know about an algorithm is a
class attribute here, not a check of its name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from omegaconf import MISSING

from pipeline.config.fields import INNER_OPTIMIZERS, choice, num
from pipeline.config.registry import option


@dataclass
class AlgorithmConfig:
    #: Whether the model ends in a per-class (or regression) head; ProtoNets classify with the
    #: embedding, so they may also train with another N-way than they test with.
    needs_head: ClassVar[bool] = True
    #: Adapts by gradient steps on the support set (``meta_test.eval_steps`` varies their number).
    has_inner_loop: ClassVar[bool] = False
    #: Scores classification families only.
    classification_only: ClassVar[bool] = False
    #: Keeps running batch-norm statistics across episodes (``model.batch_norm=running``).
    running_batch_norm: ClassVar[bool] = False
    #: Learns anything before meta-test (False for the no-meta-learning baseline).
    meta_learns: ClassVar[bool] = True
    #: Meta-learns its inner step sizes (Meta-SGD): they are tuned for ``inner_steps`` steps,
    #: so testing with more is warned about.
    learned_inner_rates: ClassVar[bool] = False
    #: Meta-trains on meta-batches of ``meta_train.meta_batch_size`` training tasks.
    meta_batches: ClassVar[bool] = True
    #: Values the compiled steps read at run time (variables or call arguments), not baked in
    #: as constants: a warm sweep worker reuses the steps of a job that differs only in these
    #: (:mod:`pipeline.run.warm`).
    fed_values: ClassVar[tuple[str, ...]] = ()

    name: str = MISSING


@option("algorithm", builds="pipeline.algorithms.scratch:Scratch")
@dataclass
class ScratchConfig(AlgorithmConfig):
    """No meta-learning: a fresh model per test task, trained on its support set only. The
    baseline every meta-learner must beat."""

    meta_learns: ClassVar[bool] = False
    name: str = "scratch"
    steps: int = num(100, ge=0)
    learning_rate: float = num(0.01, gt=0)
    optimizer: str = choice("adam", INNER_OPTIMIZERS)


@option("algorithm", builds="pipeline.algorithms.notebook:Notebook")
@dataclass
class NotebookAlgorithmConfig(AlgorithmConfig):
    """The notebook's procedure: for each epoch, one epoch of ``fit`` on each training task in
    turn (``meta_train.iterations`` does not apply: ``epochs`` does)."""

    meta_batches: ClassVar[bool] = False
    name: str = "notebook"
    epochs: int = num(10, ge=1)
    batch_size: int = num(32, ge=1)
    #: Test-time fine-tuning on the support set (0 = evaluate as trained, like the notebook).
    finetune_steps: int = num(0, ge=0)
    finetune_lr: float = num(0.01, gt=0)
    finetune_optimizer: str = choice("sgd", INNER_OPTIMIZERS)


@dataclass
class InnerLoopConfig(AlgorithmConfig):
    """Algorithms that adapt to a task by ``inner_steps`` gradient steps on its support set."""

    has_inner_loop: ClassVar[bool] = True
    fed_values: ClassVar[tuple[str, ...]] = ("test_inner_steps",)
    inner_lr: float = num(0.5, gt=0)
    inner_steps: int = num(1, ge=1)
    #: Inner steps at meta-test time (null = same as ``inner_steps``).
    test_inner_steps: int | None = num(5, ge=0)


@option("algorithm", builds="pipeline.algorithms.maml:MAML")
@dataclass
class MAMLConfig(InnerLoopConfig):
    """MAML (Finn et al. 2017): learn an initialisation from which ``inner_steps`` SGD steps on a
    task's support set fit it; second order unless ``first_order``."""

    fed_values: ClassVar[tuple[str, ...]] = ("inner_lr", "test_inner_steps")
    name: str = "maml"
    first_order: bool = False
    #: The zeroing trick of Kao et al. (2022): the ``head`` layer starts every task at zero
    #: and is not meta-learned, so no class is favoured before the support set is seen.
    zero_head: bool = False


@option("algorithm", builds="pipeline.algorithms.maml:MAML")
@dataclass
class FOMAMLConfig(MAMLConfig):
    """First-order MAML: the inner gradients are constants, so no second-order terms."""

    name: str = "fomaml"
    first_order: bool = True


@option("algorithm", builds="pipeline.algorithms.anil:ANIL")
@dataclass
class ANILConfig(MAMLConfig):
    """ANIL (Raghu et al. 2020): MAML whose inner loop (train and test) adapts only the head;
    the body is meta-learned in the outer loop."""

    name: str = "anil"


@option("algorithm", builds="pipeline.algorithms.metasgd:MetaSGD")
@dataclass
class MetaSGDConfig(MAMLConfig):
    """Meta-SGD (Li et al. 2017): per-parameter inner learning rates, meta-learned with the init.

    ``inner_lr`` is the initial value of every learned rate, which are tuned for
    ``inner_steps`` (so the test uses as many).
    """

    learned_inner_rates: ClassVar[bool] = True
    name: str = "metasgd"
    test_inner_steps: int | None = num(1, ge=0)


@option("algorithm", builds="pipeline.algorithms.reptile:Reptile")
@dataclass
class ReptileConfig(InnerLoopConfig):
    """Reptile (Nichol et al. 2018): move the init toward each task's adapted weights.

    Inner loop: ``inner_steps`` full-batch steps of ``inner_optimizer`` on the support set; outer
    step: ``theta += epsilon * (mean adapted weights - theta)``, with ``epsilon`` linearly
    annealed to 0 over ``meta_train.iterations`` when ``anneal`` is set. The outer step is the
    interpolation itself: the ``optimizer`` group is not used.
    """

    name: str = "reptile"
    inner_lr: float = num(0.1, gt=0)
    inner_steps: int = num(5, ge=1)
    inner_optimizer: str = choice("sgd", INNER_OPTIMIZERS)
    epsilon: float = num(1.0, gt=0, le=1)
    anneal: bool = True


@option("algorithm", builds="pipeline.algorithms.protonet:ProtoNet")
@dataclass
class ProtoNetConfig(AlgorithmConfig):
    """Prototypical networks (Snell et al. 2017): class prototypes = mean embedding of the
    support examples; queries scored by softmax over negative squared Euclidean distances. The
    embedding is the model without its head."""

    needs_head: ClassVar[bool] = False
    classification_only: ClassVar[bool] = True
    running_batch_norm: ClassVar[bool] = True
    name: str = "protonet"
