"""The sweep's side of the project's launcher (``hydra_plugins.pipeline_launcher``): the hooks it
takes at set-up, so the plugin imports nothing of the pipeline. The entry point installs them by
name (``pipeline.sweep.hooks:SweepHooks``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.sweep import session, workers


class SweepHooks:
    """The sweep's side of the project's launcher (its ``LauncherHooks``), installed by the
    entry point (:mod:`pipeline.__main__`): the launcher imports nothing of the pipeline."""

    def is_stopping(self, sweep_dir: Path) -> bool:
        """A stop (SIGTERM or Ctrl-C to the launching process) left its file in the folder."""
        return session.is_stopping(sweep_dir)

    def on_worker_lost(self, sweep_dir: Path, job_idx: int, reason: str) -> None:
        """The job's run, still RUNNING, ended FAILED with ``reason`` (its worker died)."""
        session.on_worker_lost(sweep_dir, job_idx, reason)

    def worker_started(self, warm: bool) -> None:
        """TensorFlow, Keras, the stages and the store's client imported once per worker
        (imports only: thread settings apply at the first op, in the first job); built
        algorithms kept across its jobs if ``warm`` (:mod:`pipeline.run.warm`)."""
        from pipeline.run import runtime_env
        from pipeline.run import warm as warm_cache

        runtime_env.import_tensorflow()
        import pipeline.run.runner  # noqa: F401
        from pipeline.tracking import store

        store.preload()
        warm_cache.enable(warm)

    def job_starting(self, assigned_at: float) -> None:
        """A clean per-job state (:func:`~pipeline.sweep.workers.fresh_job_state`); every kept
        algorithm free again."""
        from pipeline.run import warm

        workers.fresh_job_state()
        warm.new_job(assigned_at)
