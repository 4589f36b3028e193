"""A run's meta-learner as a fast learner, logged as the MLflow model ``few_shot/``: a new task's
support set in, its query set's predictions out (:mod:`~pipeline.serving.few_shot_predictor`,
self-contained), with what it needs of the run (:mod:`~pipeline.serving.export`)."""
