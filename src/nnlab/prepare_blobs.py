"""Stage prepare_blobs: make_blobs, StandardScaler, train/validation split -> data/blobs/."""

from __future__ import annotations

from nnlab import stage
from nnlab.data import blobs
from nnlab.paths import find_root
from nnlab.reporting import console


def main(argv: list[str] | None = None) -> None:
    args = stage.parser(__doc__, "data/blobs").parse_args(argv)
    p = stage.params_section(args.params, "blobs")
    data = blobs.make(int(p["n_samples"]), int(p["centers"]), int(p["n_features"]),
                      int(p["random_state"]), float(p["test_size"]))
    out = args.out or find_root() / "data" / "blobs"
    blobs.write(out, data)
    console.print(f"blobs: train {len(data['train'][1])}, val {len(data['val'][1])} -> {out}")


if __name__ == "__main__":
    main()
