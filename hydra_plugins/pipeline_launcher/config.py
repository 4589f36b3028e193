"""The launcher's config schema, ``hydra/launcher=pipeline`` (``conf/hydra/launcher/joblib.yaml``
builds on it, so ``hydra/launcher=joblib`` selects this launcher; ``pipeline_ray.yaml`` is the
same launcher on Ray)."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class RayConf:
    """Ray for ``backend=ray``, with the Ray launcher's keys (``conf/hydra/launcher/ray.yaml``):
    ``init`` goes to ``ray.init`` (null values left out: Ray's defaults, and what joining a
    cluster needs), ``remote`` to each worker actor's options."""

    init: dict[str, Any] = field(default_factory=lambda: {
        "address": None, "num_cpus": None, "include_dashboard": False,
        "object_store_memory": 200_000_000})  # Ray's default takes 30% of RAM
    remote: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1})


@dataclass
class PipelineLauncherConf:
    _target_: str = "hydra_plugins.pipeline_launcher.launcher.PipelineLauncher"
    #: Workers, each running one job at a time (-1: one per core, as joblib's; on Ray, one per
    #: ``ray.remote.num_cpus`` CPUs of the cluster).
    n_jobs: int = 2
    #: Keep built algorithms in each worker, so later jobs of the same graph reuse their
    #: compiled steps (pipeline.run.warm); false builds and traces every job afresh.
    warm: bool = True
    #: Where the workers run: ``loky`` (processes on this machine) or ``ray`` (actors on a Ray
    #: cluster, started here without ``ray.init.address``).
    backend: str = "loky"
    ray: RayConf = field(default_factory=RayConf)


ConfigStore.instance().store(group="hydra/launcher", name="pipeline", node=PipelineLauncherConf,
                             provider="pipeline_launcher")
