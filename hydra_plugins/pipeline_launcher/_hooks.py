"""What the launcher asks of the application it launches, and the one seam it gets it through.

The launcher knows nothing of the application's modules. An application that needs more than
Hydra's task function (its sweep's stop, a dead worker's run marked FAILED, warm worker set-up)
installs a :class:`LauncherHooks` before Hydra sets the launcher up::

    from hydra_plugins.pipeline_launcher import install_hooks
    install_hooks("pipeline.sweep.hooks:SweepHooks")   # or an instance

The launcher takes the installed hooks at :meth:`~.launcher.PipelineLauncher.setup` and hands
them to each worker (pickled: a class by module path), which calls the worker-side hooks. An
application that installs none gets :class:`NoHooks`: nothing stops a sweep early, a dead
worker's job just fails, workers import nothing ahead.
"""

import importlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class LauncherHooks(Protocol):
    """The application's side of the launcher (all calls must not raise to mean "no")."""

    # --- in the launching process -------------------------------------------------------------

    def is_stopping(self, sweep_dir: Path) -> bool:
        """Whether the sweep is stopping: queued jobs are then dropped, not started, and a
        shutdown signals the busy workers (SIGTERM) before it stops them."""
        ...

    def on_worker_lost(self, sweep_dir: Path, job_idx: int, reason: str) -> None:
        """Job ``job_idx``'s worker died under it (``reason``, e.g. "worker killed by signal 9
        (often: out of memory)"): record it where the job could not (its run FAILED)."""
        ...

    # --- in each worker -----------------------------------------------------------------------

    def worker_started(self, warm: bool) -> None:
        """Once per worker, before its first job: import what every job needs; ``warm`` is
        ``hydra.launcher.warm`` (keep built state across the worker's jobs)."""
        ...

    def job_starting(self, assigned_at: float) -> None:
        """Before each job in a worker (handed to it at ``assigned_at``): put back whatever an
        earlier job of this process left that the next must not see."""
        ...


class NoHooks:
    """The hooks of an application that installs none."""

    def is_stopping(self, sweep_dir: Path) -> bool:
        return False

    def on_worker_lost(self, sweep_dir: Path, job_idx: int, reason: str) -> None:
        return None

    def worker_started(self, warm: bool) -> None:
        return None

    def job_starting(self, assigned_at: float) -> None:
        return None


_installed: LauncherHooks | str | None = None


def install_hooks(hooks: "LauncherHooks | str") -> None:
    """Install the application's hooks: an instance, or ``"module:Class"`` (imported and made
    when a launcher is set up, so installing costs no import)."""
    global _installed
    _installed = hooks


def installed() -> LauncherHooks:
    """The installed hooks (made now if given by name), else :class:`NoHooks`."""
    global _installed
    if _installed is None:
        return NoHooks()
    if isinstance(_installed, str):
        module, _, name = _installed.partition(":")
        made: Any = getattr(importlib.import_module(module), name)()
        _installed = made
    assert isinstance(_installed, LauncherHooks), _installed
    return _installed
