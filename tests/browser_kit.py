"""Headless Chromium (Debian's, driven by Playwright) for the browser tests, and their screenshots.

A screenshot goes to the test's tmp path, is checked not to be blank, and is copied into the
folder named by ``OSTEO_SCREENSHOTS`` when set (`make screenshots` sets docs/images: the README's
pictures are the tests' own, on the synthetic test cohort).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from osteo_testkit import REPO

CHROMIUM = Path("/usr/bin/chromium")
# Headless in a container as root, offline: no sandbox, no GPU, no background fetches.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
VIEWPORT = {"width": 1600, "height": 1000}
PUBLISHED_WIDTH = 1280  # docs/images: 1280x800, the browser's 1600x1000 scaled


@contextmanager
def chromium_page(**context: Any) -> Iterator[Any]:
    """A fresh page in headless Chromium that reaches this machine only (the UIs under test ask
    for web fonts; offline, each such request would hang until it times out)."""
    import pytest
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT, **context)
            page.set_default_timeout(30_000)
            page.route(lambda url: not url.startswith(("http://127.0.0.1", "file://", "data:")),
                       lambda route: route.abort())
            yield page
        finally:
            browser.close()


def non_blank_fraction(png: Path) -> float:
    """The share of pixels that differ from the image's most common colour."""
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
        counts = rgb.getcolors(maxcolors=rgb.width * rgb.height)
    return 1 - max(n for n, _ in counts) / sum(n for n, _ in counts)


def screenshot(page: Any, directory: Path, name: str, *, min_drawn: float = 0.02, **options: Any) -> Path:
    """Save ``name`` (a .png) of ``page`` into ``directory``; fail when it is (nearly) one colour;
    copy it into $OSTEO_SCREENSHOTS (relative: to the repository) when that is set."""
    path = directory / name
    page.screenshot(path=str(path), animations="disabled", **options)  # transitions done, not caught halfway
    drawn = non_blank_fraction(path)
    assert drawn >= min_drawn, f"{name}: only {drawn:.1%} of the pixels differ from the background"
    if target := os.environ.get("OSTEO_SCREENSHOTS"):
        folder = REPO / target  # an absolute target stays as it is
        folder.mkdir(parents=True, exist_ok=True)
        publish(path, folder / name)
    return path


def publish(png: Path, target: Path, *, width: int = PUBLISHED_WIDTH) -> Path:
    """Write ``png`` to ``target`` as the README shows it: scaled down to ``width`` pixels wide
    and reduced to a 256-colour palette (screenshots of web pages lose nothing visible), so a
    committed picture stays small (about a tenth of the browser's full-colour file)."""
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
    if rgb.width > width:
        rgb = rgb.resize((width, round(rgb.height * width / rgb.width)), Image.Resampling.LANCZOS)
    rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        target, optimize=True)
    return target
