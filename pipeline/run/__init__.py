"""Running one job: the runner, its process set-up (threads, determinism), preflight checks,
memory estimates, checkpoints, warm caches and provenance."""
