"""nnlab's Optuna sweeper for Hydra (``hydra/sweeper=nnlab_optuna``), on Optuna's ask-and-tell API.

hydra-optuna-sweeper 1.3 requires optuna<3, whose database storage fails with SQLAlchemy 2 (which
MLflow 3 needs), so this project carries its own small sweeper on a current Optuna. Its settings
under ``hydra.sweeper`` keep hydra-optuna-sweeper's names (n_trials, study_name, storage,
direction, sampler, pruner, n_jobs, max_failure_rate, params in Hydra's override grammar).
Hydra imports every module here whose name does not start with ``_`` when it scans for plugins,
at every start: ``config`` (settings, the samplers and pruners), ``sweeper`` (the plugin class)
and ``study`` (storage; Optuna imported inside its functions) are light; the search loop
(``_loop``) and the search space (``_space``) load Optuna and run only in a search.
"""
