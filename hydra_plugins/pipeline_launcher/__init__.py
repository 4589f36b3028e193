"""The project's Hydra launcher (``hydra/launcher=local``; ``pipeline_ray`` on Ray): warm worker
processes, jobs started the moment a worker is free, a worker's death failing only its job,
workers that die with their launcher. In Hydra's plugin shape: :mod:`.config` (the schema),
:mod:`.launcher` (the thin plugin class), :mod:`._core` (the slots, their queue and the
:class:`~._core.WorkerBackend` protocol; :mod:`._loky` and :mod:`._ray` implement it),
:mod:`._worker` (inside each worker). The application it launches is reached only through the
hooks it installs (:mod:`._hooks`, :func:`install_hooks`)."""

from hydra_plugins.pipeline_launcher._hooks import LauncherHooks, install_hooks

__all__ = ["LauncherHooks", "install_hooks"]
