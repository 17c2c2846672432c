"""Stage prepare_mnist: obtain MNIST (params ``mnist.source``), verify it, write data/mnist/."""

from __future__ import annotations

import os
from pathlib import Path

from nnlab import stage
from nnlab.data import mnist
from nnlab.data.idx import DataError
from nnlab.paths import find_root
from nnlab.reporting import console

KEYS = {"source", "dir", "val_size", "seed", "md5"}


def main(argv: list[str] | None = None) -> None:
    args = stage.parser(__doc__, "data/mnist").parse_args(argv)
    params = stage.params_section(args.params, "mnist")
    unknown = set(params) - KEYS
    if unknown:
        raise SystemExit(f"nnlab.prepare_mnist: error: unknown mnist.{sorted(unknown)[0]}; allowed: {', '.join(sorted(KEYS))}")
    out = args.out or find_root() / "data" / "mnist"
    cache = Path(os.environ.get("NNLAB_CACHE", Path.home() / ".cache" / "nnlab")) / "mnist"
    try:
        source, files = mnist.fetch(params.get("source", "auto"), cache, params.get("dir"))
        manifest = mnist.prepare(out, files, source, int(params["val_size"]), int(params["seed"]),
                                 expected_md5=params.get("md5"))
    except DataError as exc:
        raise SystemExit(f"nnlab.prepare_mnist: error: {exc}") from None
    counts = manifest["counts"]
    console.print(f"MNIST from [bold]{source}[/]: md5 verified; train {counts['train']}, "
                  f"val {counts['val']}, test {counts['test']} -> {out}")


if __name__ == "__main__":
    main()
