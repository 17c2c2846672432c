"""nnlab's Optuna sweeper for Hydra (``hydra/sweeper=nnlab_optuna``), on Optuna's ask-and-tell API.

hydra-optuna-sweeper 1.3 requires optuna<3, whose database storage fails with SQLAlchemy 2 (which
MLflow 3 needs), so this project carries its own small sweeper on a current Optuna. Its settings
under ``hydra.sweeper`` keep hydra-optuna-sweeper's names (n_trials, study_name, storage,
direction, sampler, pruner, n_jobs, max_failure_rate, params in Hydra's override grammar).
Only ``config`` and ``sweeper`` are imported when Hydra scans its plugins; Optuna loads when a
search runs.
"""
