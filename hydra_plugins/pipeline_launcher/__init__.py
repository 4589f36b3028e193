"""The project's Hydra launcher (``hydra/launcher=joblib``): warm worker processes on loky,
jobs started the moment a worker is free, a worker's death failing only its job, workers that
die with their launcher. :mod:`._core` runs in the launching process, :mod:`._worker` in each
worker, :mod:`.config` is the launcher's config schema."""
