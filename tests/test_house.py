"""House rules that a reader cannot see in one file: nnlab uses only the documented names of the
packages it depends on, and never rewrites the interpreter's module table.

The scan reads every module under src/ (no import) and fails on:
- ``x._name`` where ``x`` is not ``self``/``cls`` (another object's private attribute), and
  ``getattr``/``setattr``/``hasattr``/``delattr`` with such a name written out;
- ``from pkg import _name``, ``import pkg._mod``, ``from pkg._mod import ...`` of another package;
- any write to ``sys.modules`` (assignment, augmented assignment, ``del``, or a mutating method).
Names Hydra and the standard library document with a leading underscore are names, not
violations: Hydra's config keys and namedtuple's methods (PUBLIC_UNDERSCORE_NAMES). There is no
list of exempted violations.
"""

from __future__ import annotations

import ast

from helpers import REPO

SRC = REPO / "src"
OWN_PACKAGES = ("nnlab", "hydra_plugins")  # the project's own modules may be private to it
# Documented public names that begin with an underscore.
PUBLIC_UNDERSCORE_NAMES = {
    "_target_",  # Hydra's instantiate keys
    "_recursive_",
    "_convert_",
    "_partial_",
    "_args_",
    "_replace",  # collections.namedtuple
    "_asdict",
    "_fields",
    "_field_defaults",
    "_make",
    "_exit",  # os._exit, the documented way to leave without cleanup
}
ATTRIBUTE_FUNCTIONS = ("getattr", "setattr", "hasattr", "delattr")
MUTATING_METHODS = ("update", "pop", "popitem", "setdefault", "clear", "__setitem__", "__delitem__")


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def own_module(module: str) -> bool:
    return module.split(".")[0] in OWN_PACKAGES


def is_sys_modules(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "modules"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


def written_sys_modules(node: ast.AST) -> bool:
    """``sys.modules[...] = / += / del``, ``sys.modules = ...``, ``sys.modules.update(...)`` etc."""
    targets: list[ast.AST] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    elif isinstance(node, ast.Delete):
        targets = node.targets
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in MUTATING_METHODS and is_sys_modules(node.func.value)
    return any(is_sys_modules(t) or (isinstance(t, ast.Subscript) and is_sys_modules(t.value)) for t in targets)


def violations(source: str) -> list[str]:
    """What in ``source`` breaks the rules, one line each (``line: what``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and private(node.attr) and node.attr not in PUBLIC_UNDERSCORE_NAMES:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{line}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ATTRIBUTE_FUNCTIONS:
            name = node.args[1] if len(node.args) > 1 else None
            owner = node.args[0] if node.args else None
            if (
                isinstance(name, ast.Constant)
                and isinstance(name.value, str)
                and private(name.value)
                and not (isinstance(owner, ast.Name) and owner.id in ("self", "cls"))
            ):
                found.append(f"{line}: {ast.unparse(node)}")
        elif isinstance(node, ast.Import):
            found += [
                f"{line}: import {a.name}"
                for a in node.names
                if not own_module(a.name) and any(private(part) for part in a.name.split("."))
            ]
        elif isinstance(node, ast.ImportFrom) and not node.level and not own_module(node.module or ""):
            module = node.module or ""
            if any(private(part) for part in module.split(".")):
                found.append(f"{line}: from {module} import ...")
            found += [f"{line}: from {module} import {a.name}" for a in node.names if private(a.name)]
        if written_sys_modules(node):
            found.append(f"{line}: writes sys.modules: {ast.unparse(node).splitlines()[0]}")
    return sorted(found, key=lambda violation: int(violation.split(":")[0]))


def test_the_scan_finds_each_kind_of_violation():
    source = """
import sys, atexit, torch._dynamo
from lightning_utilities.core.imports import _version
from mlflow.utils._env import x
from nnlab.training import _own
atexit._run_exitfuncs()
getattr(threading, "_shutdown")
self._mine, cls._theirs, cfg._target_, point._replace(x=1), os._exit(0)
sys.modules["torchvision"] = None
sys.modules.update({})
sys.modules.pop("scipy", None)
del sys.modules["x"]
sys.modules.get("lightning")
"""
    assert violations(source) == [
        "2: import torch._dynamo",
        "3: from lightning_utilities.core.imports import _version",
        "4: from mlflow.utils._env import ...",
        "6: atexit._run_exitfuncs",
        "7: getattr(threading, '_shutdown')",
        "9: writes sys.modules: sys.modules['torchvision'] = None",
        "10: writes sys.modules: sys.modules.update({})",
        "11: writes sys.modules: sys.modules.pop('scipy', None)",
        "12: writes sys.modules: del sys.modules['x']",
    ]


def test_src_uses_no_private_name_of_another_package_and_never_writes_sys_modules():
    found = [
        f"{path.relative_to(REPO)}:{violation}"
        for path in sorted(SRC.rglob("*.py"))
        for violation in violations(path.read_text())
    ]
    assert found == []
