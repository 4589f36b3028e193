"""Hyperparameter search on validation (``hydra/sweeper=optuna``, the sweeper in
``hydra_plugins/pipeline_optuna_sweeper``): the objective and the refusal of test-set tuning
(:mod:`~pipeline.search.objective`), Hydra's search-space syntax as Optuna distributions
(:mod:`~pipeline.search.space`), the persistent study beside the MLflow store
(:mod:`~pipeline.search.study`), a job's trial and its pruning (:mod:`~pipeline.search.trial`),
the search loop with its re-evaluation on fresh seeds (:mod:`~pipeline.search.driver`) and its
record on the parent run (:mod:`~pipeline.search.record`).

Nothing is imported here: a job imports only what it uses (Optuna only inside a search).
"""
