"""``hydra/sweeper=optuna``: the config node (registered in Hydra's ConfigStore) and the Sweeper
that runs :class:`pipeline.search.driver.Search`. Hydra imports every module under
``hydra_plugins`` at start-up, so nothing heavy (Optuna, TensorFlow, MLflow) is imported here
before a search starts."""

# No ``from __future__ import annotations``: Hydra's plugin scan executes this module outside
# sys.modules, where dataclasses cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class ReevaluateConf:
    #: The best this many trials (on validation) are re-run on fresh seeds after the search.
    top_k: int = 3
    #: Fresh seeds per re-run trial (a seed group with across-seed CIs).
    seeds: int = 3
    #: The first fresh seed (then +1, +2, ...); null: the search's seed + 1.
    first_seed: int | None = None


@dataclass
class PipelineOptunaSweeperConf:
    _target_: str = "hydra_plugins.pipeline_optuna_sweeper.sweeper.PipelineOptunaSweeper"
    #: The sampler and pruner reach the sweeper as their configs (a resumed search moves the
    #: sampler's seed on; each job builds the pruner), not as objects.
    _recursive_: bool = False
    direction: str = "maximize"
    #: What a trial returns: a ``val/`` metric (a ``test/`` one needs
    #: ``sweep.allow_test_objective=true``), its ``best`` or ``last`` value over meta-training.
    objective: str = "val/query_acc_after_mean"
    objective_value: str = "best"
    #: Name stem of the study (the sweep's date/time is appended; a resumed search reuses its
    #: parent's study).
    study_name: str | None = None
    #: RDB storage URL; null: ``mlruns/optuna.db`` beside a SQLite tracking store, else
    #: ``OPTUNA_STORAGE`` (the team's PostgreSQL with ``tracking=server``).
    storage: str | None = None
    n_trials: int = 20
    #: Trials per batch with launchers that only ``launch`` batches (default: the launcher's
    #: ``n_jobs``); a launcher with ``submit`` keeps its ``n_jobs`` trials in flight.
    n_jobs: Any = "${oc.select:hydra.launcher.n_jobs,1}"
    #: Failed trials (not pruned ones) over finished trials above which the search stops.
    max_failure_rate: float = 0.0
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler",
                                                  "seed": None})
    #: null (no pruning), or e.g. {_target_: optuna.pruners.SuccessiveHalvingPruner}.
    pruner: Any = None
    #: key -> Hydra search-space spec: ``tag(log, interval(0.01, 1))``, ``range(1, 3)``,
    #: ``choice(a, b)``, or a fixed value.
    params: dict[str, str] | None = None
    reevaluate: ReevaluateConf = field(default_factory=ReevaluateConf)


ConfigStore.instance().store(group="hydra/sweeper", name="optuna",
                             node=PipelineOptunaSweeperConf, provider="pipeline")


class PipelineOptunaSweeper(Sweeper):
    """Hydra's entry point; the search itself is :mod:`pipeline.search.driver`."""

    def __init__(self, **settings: Any) -> None:
        from pipeline.search.settings import Settings

        self.settings = Settings.of(settings)  # typed once; the search and its record use it
        self.config: DictConfig | None = None
        self.launcher: Any = None

    @staticmethod
    def refuse_early(config: DictConfig) -> None:
        """Called by the sweep's callback before its parent run or the study exist: raises
        :class:`pipeline.errors.ConfigError` for a search that cannot run as asked."""
        from pipeline.search.refusals import refuse_early

        refuse_early(config)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from pipeline.search.driver import Search

        assert self.config is not None
        return Search(self.settings, self.launcher, self.config).run(arguments)
