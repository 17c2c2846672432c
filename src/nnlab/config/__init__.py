"""Configuration: schemas, Hydra composition, params.yaml sections, the project's folders, errors."""
