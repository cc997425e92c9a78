"""Save each plot of a bench report.html as a PNG, with headless Chromium.

    python tools/render_plots.py runs/quickstart/bench-grid/report.html docs/results/grid-cpu

writes docs/results/grid-cpu-1.png, -2.png, ... (one per <svg class="plot">), for pages such
as docs/benchmarks.md that cannot embed the report's inline SVG.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/render_plots.py REPORT.html OUTPUT_PREFIX")
    page = Path(sys.argv[1]).read_text()
    prefix = Path(sys.argv[2])
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if browser is None:
        sys.exit("error: headless Chromium not found (Debian: apt-get install chromium)")
    plots = re.findall(r'<svg class="plot".*?</svg>', page, flags=re.S)
    if not plots:
        sys.exit(f"error: {sys.argv[1]} has no plots; is it a report.html from `ftexport bench`?")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, svg in enumerate(plots, 1):
            w, h = (re.search(rf'{a}="(\d+)"', svg).group(1) for a in ("width", "height"))  # type: ignore[union-attr]
            html = Path(tmp) / f"plot{i}.html"
            html.write_text(f'<!doctype html><html><body style="margin:0">{svg}</body></html>')
            out = prefix.parent / f"{prefix.name}-{i}.png"
            subprocess.run(
                [
                    browser,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    f"--window-size={w},{h}",
                    f"--screenshot={out.resolve()}",
                    html.as_uri(),
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            print(out)


if __name__ == "__main__":
    main()
