#!/usr/bin/env python3
"""Regenerates the pictures in docs/img/ from the HTML reports of a lab run, with headless
Chromium (Debian's `chromium` package: `apt-get install chromium`).

    cargo run --release -p lab -- demo           # writes data/lab/report.html
    cargo run --release -p lab -- bench --quick  # writes data/lab/bench.html
    cargo run --release -p lab -- bench fanout   # writes data/lab/fanout.html
    python3 scripts/screenshots.py [DATA_DIR]    # default data/lab

A picture of one section of a page is taken from a page holding only that section (the
report's own styles, its `<h2 id=...>` heading up to the next `<h2>`), so it does not depend
on where the section falls on the page.
"""

import html.parser
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "img"
WIDTH = 1100


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("screenshots.py needs headless Chromium: apt-get install chromium")


def shoot(page: pathlib.Path, image: pathlib.Path, height: int) -> None:
    subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={WIDTH},{height}",
            f"--screenshot={image}",
            page.as_uri(),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )
    print(f"wrote {image.relative_to(ROOT)}")


class Heights(html.parser.HTMLParser):
    """Adds up the heights of a section's SVG figures, to size the window to the section."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0.0

    def handle_starttag(self, tag, attrs):
        if tag == "svg":
            height = dict(attrs).get("height")
            if height:
                self.total += float(height)


def section(report: pathlib.Path, section_id: str, work: pathlib.Path) -> tuple[pathlib.Path, int]:
    """A page holding only the section of `report` whose heading has `section_id`, and the
    window height it needs."""
    text = report.read_text(encoding="utf-8")
    head = text[: text.index("<body>") + len("<body>")]
    match = re.search(rf'<h2 id="{section_id}">.*?(?=<h2|</body>)', text, re.S)
    if not match:
        sys.exit(f"{report} has no section {section_id!r}: regenerate it with this version of the lab")
    body = match.group(0)
    heights = Heights()
    heights.feed(body)
    figures = body.count("<figure>")
    page = work / f"{section_id}.html"
    page.write_text(f"{head}\n{body}</body></html>\n", encoding="utf-8")
    return page, int(heights.total + 60 * figures + 240)


def main() -> None:
    data_dir = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "data" / "lab")
    IMAGES.mkdir(parents=True, exist_ok=True)
    demo = data_dir / "report.html"
    bench = data_dir / "bench.html"
    fanout = data_dir / "fanout.html"
    if not demo.exists() and not bench.exists() and not fanout.exists():
        sys.exit(f"no report.html, bench.html or fanout.html in {data_dir}: run `lab demo` or `lab bench` first")
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        if demo.exists():
            shoot(demo, IMAGES / "demo-report.png", 980)
            page, height = section(demo, "traces", work)
            shoot(page, IMAGES / "demo-traces.png", height)
        if bench.exists():
            shoot(bench, IMAGES / "bench-report.png", 1500)
        if fanout.exists():
            shoot(fanout, IMAGES / "fanout.png", 1150)


if __name__ == "__main__":
    main()
