"""Hydra composition in one place: the schemas in Hydra's ConfigStore, and :func:`compose` for
everything that composes a config outside ``@hydra.main`` (rerun, resume, tests, benches)."""

from __future__ import annotations

import warnings

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pipeline import CONFIG_DIR, PROJECT_ROOT
from pipeline.config import registry
from pipeline.config.run import Config

#: hydra-joblib-launcher (installed for the benches' reference runs of Hydra's own launcher)
#: stores its schema as ``hydra/launcher/joblib``, the name of the project's launcher file that
#: users pick with ``hydra/launcher=joblib``. Hydra then checks that file against the stock
#: schema (which takes its fields: ``_target_`` and ``n_jobs``) and warns, once per composition
#: - three times a command - that such matching is deprecated. Neither name can change without
#: breaking commands, so the warning is silenced here, once, for that one file.
JOBLIB_SCHEMA_WARNING = r"\s*'hydra/launcher/joblib' is validated against ConfigStore schema"


def register_configs() -> None:
    """Store the root schema as ``config_schema`` and every option's schema under
    :attr:`~pipeline.config.registry.Option.schema_name` (root-level entries: Hydra lists them as no
    group's option, so ``algorithm=...`` offers only the YAML options)."""
    warnings.filterwarnings("ignore", message=JOBLIB_SCHEMA_WARNING, category=UserWarning)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group in registry.GROUPS:
        for opt in registry.options(group).values():
            cs.store(name=opt.schema_name, node=opt.schema)


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The composed (unvalidated) config of ``conf/config.yaml`` with Hydra ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def default_tracking_uri() -> str:
    """The tracking store a plain ``python -m pipeline`` writes to (from the composed config)."""
    return str(compose().tracking.uri)


def _project_root() -> str:
    return str(PROJECT_ROOT)


if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", _project_root)
