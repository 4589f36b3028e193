"""Each job's config composed once in the launching process, not twice.

Hydra's basic sweeper composes every job of a batch to check it can be (``Sweeper.
validate_batch_is_legal``), then the launcher composes it again to run it. A composition of
this project's config tree takes 0.3-0.4 s here, so a 16-job grid spent about 6 CPU-s of the
launching process on compositions it threw away, on the 2 cores its workers need. The wrapper
keeps what the sweeper composed until the launcher asks for the same job.
"""

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig


class ComposeOnce:
    """A config loader that keeps what it composed for others (the sweeper's check) until the
    launcher :meth:`take`s the same job's config. Everything else goes to the loader itself;
    pickled (to a worker), it is the loader itself."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self._kept: dict[tuple[int, tuple[str, ...]], DictConfig] = {}

    @classmethod
    def around(cls, loader: Any) -> Any:
        return loader if isinstance(loader, cls) else cls(loader)

    def load_sweep_config(self, master_config: DictConfig,
                          sweep_overrides: Sequence[str]) -> DictConfig:
        config = self.loader.load_sweep_config(master_config, list(sweep_overrides))
        self._kept[(id(master_config), tuple(sweep_overrides))] = config
        return config

    def take(self, master_config: DictConfig, sweep_overrides: Sequence[str]) -> DictConfig:
        """The job's config: the one composed for the sweeper (forgotten now), else a fresh
        one, not kept (a search's trials are composed once only)."""
        kept = self._kept.pop((id(master_config), tuple(sweep_overrides)), None)
        if kept is not None:
            return kept
        return self.loader.load_sweep_config(master_config, list(sweep_overrides))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return _loader, (self.loader,)


def _loader(loader: Any) -> Any:
    return loader
