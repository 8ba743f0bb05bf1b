"""The HTML page `dvc plots show` fills (`--html-template`), with Vega, Vega-Lite and
vega-embed inlined, so that the plots draw without a network: DVC's own page loads them from a
CDN and is blank offline. The libraries come from the vl-convert-python package, so nothing
third-party is copied into the repository; the page is written where git ignores it.

    uv run python -m evaluation.plots_page          # writes .dvc/tmp/plots.html
    uv run dvc plots show --html-template .dvc/tmp/plots.html
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from data.atomic import write_text
from data.errors import AnonlabError

log = logging.getLogger(__name__)

DEFAULT = Path(".dvc/tmp/plots.html")  # .dvc/.gitignore ignores .dvc/tmp/
# What DVC replaces in the page (dvc_render.html): the plots, and the refresh tag of --refresh.
# Its `{scripts}` placeholder (the CDN's script tags) is left out on purpose.
PLOT_DIVS, REFRESH_TAG = "{plot_divs}", "{refresh_tag}"

_STYLE = "body { font-family: sans-serif; margin: 1em; } body > div { margin: 0 0 2em; }"


def page(bundle: str) -> str:
    """The page around `bundle` (JavaScript that defines `vegaEmbed` globally). Refused when
    the bundle holds text DVC would replace or that would end its script element early."""
    for bad in (PLOT_DIVS, REFRESH_TAG, "{scripts}", "</script"):
        if bad in bundle.lower():
            raise AnonlabError(f"the Vega bundle holds {bad!r}; it cannot be inlined in the page")
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset='utf-8'>\n"
        f"{REFRESH_TAG}\n<title>anonlab plots (dvc plots)</title>\n"
        f"<script>\n{bundle}\n</script>\n<style>{_STYLE}</style>\n"
        f"</head>\n<body>\n{PLOT_DIVS}\n</body>\n</html>\n"
    )


def write_page(out: Path) -> Path:
    """Write the page with vl-convert-python's bundle of Vega, Vega-Lite and vega-embed."""
    import vl_convert

    write_text(out, page(vl_convert.javascript_bundle()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.plots_page",
        description="Write an HTML template for `dvc plots show --html-template` with Vega "
        "inlined, so that the plots draw offline.",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT, help=f"where to write it (default: {DEFAULT})"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out == DEFAULT and not Path(".dvc").is_dir():
        log.error("no .dvc/ here: run this in the repository root, or give --out")
        return 2
    out = write_page(args.out)
    log.info("wrote %s: dvc plots show --html-template %s", out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
