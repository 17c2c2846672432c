"""Credentials never travel inside a tracking URI: they move to MLflow's environment variables.

A URI such as ``http://user:secret@host:5000`` would otherwise be copied into MLflow params,
the config artifact, ``overrides.txt``, checkpoints and ``models/<name>/``. MLflow reads
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` for HTTP basic auth.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit, urlunsplit

USER_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
URI_KEYS = ("logger.mlflow.tracking_uri",)
# An Optuna study's database URL: a password given on the command line moves to this variable
# (the sweeper and its jobs read it there), and the override becomes null.
STORAGE_KEYS, STORAGE_ENV = ("hydra.sweeper.storage",), "NNLAB_OPTUNA_STORAGE"


def credentials_to_environment(uri: str | None) -> str | None:
    """``uri`` without its user info; a user and password found there go to MLflow's environment
    variables (unless the environment already names them)."""
    if not uri or "@" not in uri or "://" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    if parts.username:
        os.environ.setdefault(USER_ENV, unquote(parts.username))
    if parts.password:
        os.environ.setdefault(PASSWORD_ENV, unquote(parts.password))
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=host))


def redacted(uri: str | None) -> str | None:
    """``uri`` without its user info, changing nothing else (for tags, reports and messages)."""
    if not uri or "@" not in uri or "://" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def override_credentials_to_environment(override: str) -> str:
    """A command-line override with any credentials moved from a tracking URI value into MLflow's
    environment variables, or an Optuna storage URL with a password moved whole into
    ``NNLAB_OPTUNA_STORAGE`` (the override becomes null)."""
    key, sep, value = override.partition("=")
    if sep and key.lstrip("+~") in URI_KEYS:
        return f"{key}={credentials_to_environment(value)}"
    if sep and key.lstrip("+~") in STORAGE_KEYS:
        url = value.strip("'\"")
        if redacted(url) != url:
            os.environ[STORAGE_ENV] = url
            return f"{key}=null"
    return override
