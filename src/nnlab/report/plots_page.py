"""The page of `dvc plots show` that works offline: .dvc/plots/page.html.

DVC's own page loads Vega, Vega-Lite and vega-embed from the internet, so with no network every
chart is blank. This page carries the three libraries inline (each after its licence) and is
the project's `plots.html_template` (.dvc/config). It is made from the npm packages, not by hand:
`make plots-page` installs vega@5, vega-lite@5 and vega-embed@6 into a temporary folder with npm
and runs `python -m nnlab.report.plots_page <that folder>/node_modules`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nnlab.config.paths import find_root

# package: its minified browser build
LIBRARIES = {
    "vega": "build/vega.min.js",
    "vega-lite": "build/vega-lite.min.js",
    "vega-embed": "build/vega-embed.min.js",
}

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>nnlab: DVC plots</title>
{libraries}
    <style>
        body {{ font-family: sans-serif; margin: 16px; }}
        table {{ border-spacing: 15px; }}
        img {{ max-width: 900px; }}
    </style>
</head>
<body>
    <h2>nnlab: DVC plots</h2>
    {{plot_divs}}
</body>
</html>
"""


def licence(package_dir: Path) -> str:
    """The package's LICENSE text; a package that ships none (vega) is named with the licence its
    package.json declares, the same BSD-3-Clause terms as the others."""
    meta = json.loads((package_dir / "package.json").read_text())
    header = f"{meta['name']} {meta['version']}, licence {meta['license']}, by {meta.get('author', 'its authors')}"
    text = package_dir / "LICENSE"
    body = text.read_text().strip() if text.is_file() else "(the package ships no LICENSE file)"
    return f"{header}\n\n{body}".replace("--", "- -")


def script(package_dir: Path, build: str) -> str:
    code = (package_dir / build).read_text()
    if "</script" in code.lower():
        raise SystemExit(f"{package_dir / build}: contains '</script', cannot be inlined")
    return f"    <!--\n{licence(package_dir)}\n    -->\n    <script>{code}</script>"


def page(node_modules: Path) -> str:
    missing = [name for name, build in LIBRARIES.items() if not (node_modules / name / build).is_file()]
    if missing:
        raise SystemExit(f"{node_modules}: no {', '.join(missing)} (npm install vega@5 vega-lite@5 vega-embed@6)")
    return PAGE.format(libraries="\n".join(script(node_modules / name, build) for name, build in LIBRARIES.items()))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("node_modules", type=Path, help="folder with vega, vega-lite and vega-embed installed by npm")
    p.add_argument("--out", type=Path, default=None, help="default: <root>/.dvc/plots/page.html")
    args = p.parse_args(argv)
    out = args.out or find_root() / ".dvc" / "plots" / "page.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(args.node_modules))
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
