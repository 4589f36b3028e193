"""Baselines scored on the same test episodes as the method (``meta_test.baselines``): each is
an :class:`~pipeline.algorithms.Algorithm` that adapts to a task from its support set, so the
meta-test stage runs it exactly as it runs the method, task for task in the same order.

* ``scratch`` (:mod:`.scratch`): a fresh network per task;
* ``finetune`` (:mod:`.finetune`): the pre-trained body and a new head, all weights trained;
* ``linear_probe`` (:mod:`.linear_probe`): the frozen pre-trained body and a logistic regression.

The last two share one pre-training on the training split (:mod:`.pretrain`), cached on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.algorithms import Algorithm
from pipeline.algorithms.losses import TaskLoss
from pipeline.baselines import finetune, linear_probe, pretrain, scratch
from pipeline.baselines.pretrain import Pretrained
from pipeline.config import AlgorithmConfig, Config
from pipeline.data import TaskSet
from pipeline.stages import meta_test
from pipeline.stages.meta_test import Tested
from pipeline.tracking import Tracker, keys

log = logging.getLogger(__name__)

#: The baselines that need the pre-trained body.
PRETRAINED = (keys.FINETUNE, keys.LINEAR_PROBE)


@dataclass
class Baselines:
    """Each enabled baseline's per-task results, in ``meta_test.baselines`` order."""

    tested: dict[str, Tested] = field(default_factory=dict)
    pretrained: Pretrained | None = None


def enabled(cfg: Config) -> list[str]:
    """``meta_test.baselines``, less scratch where ``compare_to_scratch`` is off."""
    return [b for b in cfg.meta_test.baselines
            if b != keys.SCRATCH_NAME or cfg.meta_test.compare_to_scratch]


def run(cfg: Config, tasks: TaskSet, loss: TaskLoss,
        build_algorithm: Callable[[AlgorithmConfig], Algorithm],
        tracker: Tracker | None) -> Baselines:
    """Pre-train if a baseline needs it (once, cached), then meta-test every baseline on the
    test episodes."""
    names = enabled(cfg)
    out = Baselines()
    if any(n in PRETRAINED for n in names):
        out.pretrained = pretrain.run(cfg, tasks, loss)
        _log_pretrained(out.pretrained, tracker)
    for name in names:
        if name == keys.SCRATCH_NAME:
            algo = scratch.build(cfg, build_algorithm)
        elif name == keys.FINETUNE:
            algo = finetune.build(cfg, tasks, loss, out.pretrained.body)
        else:
            algo = linear_probe.build(cfg.meta_test.linear_probe, out.pretrained.body, loss,
                                      tasks.num_outputs)
        out.tested[name] = meta_test.run(algo, tasks.test, cfg.meta_test.task_batch_size)
    return out


def _log_pretrained(pretrained: Pretrained, tracker: Tracker | None) -> None:
    if tracker is None:
        return
    tracker.log_metrics({keys.TIME_PRETRAIN: pretrained.seconds,
                         keys.PRETRAIN_EXAMPLES: pretrained.examples})
    tracker.set_tags({keys.PRETRAIN_CACHE: "hit" if pretrained.cached else "miss"})
    if pretrained.path is not None:
        tracker.log_artifact(pretrained.path, keys.PRETRAIN_DIR)


__all__ = ["PRETRAINED", "Baselines", "enabled", "run"]
