"""Team mode: PostgreSQL, an S3 object store (SeaweedFS) and an MLflow tracking server on
127.0.0.1, started and stopped by ``python -m nnlab.team up|down|status`` (``make services-up``).

settings   ports, credentials and URLs; the git-ignored env file ``.services/env``
process    PID files, starting, waiting for and stopping a service's processes
postgres   the database (run as an unprivileged user), its ``mlflow`` and ``optuna`` databases
objectstore  SeaweedFS's S3 gateway, its buckets, bucket quotas
tracking_server  ``mlflow server`` on PostgreSQL with artifacts proxied to the object store
stack      the three in order: up, down, status; the DVC remote's local credentials
"""
