"""Stage prepare_mnist: obtain MNIST (params ``mnist.source``), verify it, write data/mnist/."""

from __future__ import annotations

import os
from pathlib import Path

from nnlab.config.params import checked_params, parser
from nnlab.config.paths import find_root
from nnlab.data import mnist
from nnlab.errors import NnlabError, report
from nnlab.report.tables import console

PROG = "nnlab.prepare_mnist"


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, "data/mnist").parse_args(argv)
    out = args.out or find_root() / "data" / "mnist"
    cache = Path(os.environ.get("NNLAB_CACHE", Path.home() / ".cache" / "nnlab")) / "mnist"
    try:
        p = checked_params(args.params, "mnist", mnist.MnistParams)  # before anything is written
        source, files = mnist.fetch(p.source, cache, p.dir)
        manifest = mnist.prepare(out, files, source, p.val_size, p.seed, expected_md5=p.md5)
    except NnlabError as exc:
        report(PROG, exc)
    counts = manifest["counts"]
    console.print(
        f"MNIST from [bold]{source}[/]: md5 verified; train {counts['train']}, "
        f"val {counts['val']}, test {counts['test']} -> {out}"
    )


if __name__ == "__main__":
    main()
