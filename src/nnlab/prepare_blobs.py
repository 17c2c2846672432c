"""Stage prepare_blobs: make_blobs, StandardScaler, train/validation split -> data/blobs/."""

from __future__ import annotations

from dataclasses import asdict

from nnlab.config.params import checked_params, parser
from nnlab.config.paths import find_root
from nnlab.data import blobs
from nnlab.errors import NnlabError, report
from nnlab.report.tables import console

PROG = "nnlab.prepare_blobs"


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, "data/blobs").parse_args(argv)
    out = args.out or find_root() / "data" / "blobs"
    try:
        data = blobs.make(**asdict(checked_params(args.params, "blobs", blobs.BlobsParams)))
        blobs.write(out, data)
    except NnlabError as exc:
        report(PROG, exc)
    console.print(f"blobs: train {len(data['train'][1])}, val {len(data['val'][1])} -> {out}")


if __name__ == "__main__":
    main()
