"""The one command line of the local services (``nnlab.team``, ``nnlab.cluster``): up, down, status."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType

from nnlab.config.paths import find_root
from nnlab.errors import fail
from nnlab.services.settings import ServiceError


def run(prog: str, doc: str, backend: ModuleType, folder_name: str, env_use: str, argv: list[str] | None) -> int:
    """``backend`` has up(folder) -> lines, down(folder) -> lines and status(folder) -> (lines, ok).
    Exit status 0; 3 when status finds something down; 1 and one line when something fails."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--dir", type=Path, help=f"the services' folder (default: <project root>/{folder_name})")
    args = parser.parse_args(argv)
    folder = (args.dir or find_root() / folder_name).absolute()
    try:
        if args.command == "up":
            lines, ok = [*backend.up(folder), f"env: {folder / 'env'} ({env_use})"], True
        elif args.command == "down":
            lines, ok = backend.down(folder), True
        else:
            lines, ok = backend.status(folder)
    except ServiceError as exc:
        fail(prog, str(exc), code=1)
    except KeyboardInterrupt:
        fail(prog, "interrupted", code=130)
    print("\n".join(lines))
    return 0 if ok else 3
