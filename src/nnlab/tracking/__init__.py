"""MLflow tracking: the one place that decides what a run records (tags, params, metrics,
artifacts, model). ``run`` holds a run's lifecycle, ``record`` what the stages record, ``sweep``
the parent run of a multirun, ``credentials`` keeps secrets out of URIs. Nothing is imported
here, so a stage that never tracks never pays for importing MLflow."""
