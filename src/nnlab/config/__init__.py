"""Configuration: schemas, Hydra composition, params.yaml sections, the project's folders, errors."""

# Every entry point imports this package before torch, Lightning or MLflow: the exit handler of
# nnlab.config.process must be registered before theirs, so that it runs after them.
from nnlab.config import process as process
