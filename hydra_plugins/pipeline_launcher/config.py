"""The launcher's config schema, ``hydra/launcher=pipeline`` (``conf/hydra/launcher/joblib.yaml``
builds on it, so ``hydra/launcher=joblib`` selects this launcher)."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class PipelineLauncherConf:
    _target_: str = "hydra_plugins.pipeline_launcher.launcher.PipelineLauncher"
    #: Worker processes, each running one job at a time (-1: one per core, as joblib's).
    n_jobs: int = 2
    #: Keep built algorithms in each worker, so later jobs of the same graph reuse their
    #: compiled steps (pipeline.warm); false builds and traces every job afresh.
    warm: bool = True


ConfigStore.instance().store(group="hydra/launcher", name="pipeline", node=PipelineLauncherConf,
                             provider="pipeline_launcher")
