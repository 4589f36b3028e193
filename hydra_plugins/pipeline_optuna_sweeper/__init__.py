"""The project's Optuna sweeper for Hydra (``hydra/sweeper=optuna``): current Optuna through
ask/tell, a persistent study beside the MLflow store, selection on validation, pruning on
validation curves, resumable searches and no batch barrier with a launcher that can submit
single jobs. The logic lives in :mod:`pipeline.search`; this package only plugs it into Hydra.
"""
