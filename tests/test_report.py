"""report.html: self-contained, every section filled, rendered by a real browser without errors."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

import convlens
from convlens.api.evaluate import evaluate_run
from convlens.api.explain import explain_run
from convlens.report.classify import SECTIONS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MAX_SHIFT = 3


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    """A digits run, explained with --invariance, whose report is then rewritten."""
    run = convlens.train(data="digits", model="textbook", epochs=4, batch_size=32, lr=0.05,
                         run=str(tmp_path_factory.mktemp("report") / "run"))  # fmt: skip
    explain_run(run, invariance=True, max_shift=MAX_SHIFT, n_images=200)
    evaluate_run(run, write=True)  # what `convlens report RUN` does
    return run


class Page(HTMLParser):
    """Sections (id -> text), image sources, links, scripts and tables of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.images: list[tuple[str | None, str]] = []  # (section, src)
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.rows: dict[str, int] = {}  # section -> number of table rows
        self._section: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self._section = a["id"]
            self.sections[self._section] = ""
        elif tag == "img":
            self.images.append((self._section, a.get("src", "")))
        elif tag in ("a", "link"):
            self.links.append(a.get("href", ""))
        elif tag == "tr" and self._section:
            self.rows[self._section] = self.rows.get(self._section, 0) + 1

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._section:
            self.sections[self._section] += data


def test_report_is_self_contained_with_every_section(report_run):
    page = Page((report_run / "report.html").read_text())
    assert list(page.sections) == list(SECTIONS)
    assert page.links == [f"#{k}" for k in SECTIONS]  # navigation only: no outside link
    assert not page.tags & {"script", "link", "iframe", "object"}
    for section, src in page.images:
        assert src.startswith("data:image/png;base64,"), (section, src[:40])
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.format == "PNG" and im.width > 10, section
    with_images = {s for s, _ in page.images}
    drawn = {"curves", "confusion", "calibration", "mistakes", "hierarchy", "invariance"}
    assert drawn <= with_images
    for section, text in page.sections.items():
        assert "could not be drawn" not in text and "not measured yet" not in text, section

    metrics = json.loads((report_run / "metrics.json").read_text())
    assert page.rows["per-class"] == 1 + len(metrics["per_class"])
    wrong = metrics["n"] - round(metrics["accuracy"] * metrics["n"])
    assert (
        f"{wrong:,} of {metrics['n']:,} test images are misclassified" in page.sections["mistakes"]
    )
    shown = sum(s == "mistakes" for s, _ in page.images) // 2  # image + heatmap per mistake
    assert shown == min(8, wrong)
    model = convlens.load(str(report_run)).model
    total = sum(p.numel() for p in model.parameters())
    assert re.search(rf"whole model\s*{total:,}", page.sections["sharing"])
    assert page.rows["sharing"] == 1 + 2 + 1  # header, conv1, conv2, whole model
    assert page.rows["invariance"] == 1 + MAX_SHIFT + 1  # header, shifts 0..3
    assert "Training patches that excite" in page.sections["hierarchy"]
    assert "epochs" in page.sections["settings"]


def test_report_shows_the_reliability_diagram_of_the_test_split(report_run):
    page = Page((report_run / "report.html").read_text())
    metrics = json.loads((report_run / "metrics.json").read_text())
    rel = metrics["reliability"]
    assert sum(rel["count"]) == metrics["n"] and len(rel["bins"]) == len(rel["count"]) + 1
    [src] = [src for s, src in page.images if s == "calibration"]
    png = (report_run / "reliability.png").read_bytes()
    assert base64.b64decode(src.split(",", 1)[1]) == png
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.width > 300
        assert len(im.convert("RGB").getcolors(im.width * im.height)) > 20  # drawn, not blank
    text = page.sections["calibration"]
    assert "dashed diagonal" in text and "over-confident" in text
    cal = metrics["calibration"]  # digits has enough validation images to fit a temperature
    before, after = (f"{100 * e:.1f}%" for e in cal["val_ece"])
    assert f"T = {cal['temperature']:.3f}" in text
    assert f"validation ECE from {before} to {after}" in text


def _chromium(*args: str, tmp_path) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


# Run in the browser after load: counts images it could not decode and checks the page width.
PROBE = """<script>window.addEventListener("load", () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
  document.body.dataset.brokenImages = broken;
  document.body.dataset.overflow = document.documentElement.scrollWidth > innerWidth + 1;
});</script>"""


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser)")
def test_chromium_catches_console_errors_and_broken_images(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><img src="data:image/png;base64,AAAA"><script>nope()</script>'
                    + PROBE)  # fmt: skip
    out = _chromium("--dump-dom", page.as_uri(), tmp_path=tmp_path)
    assert _console(out.stderr) and 'data-broken-images="1"' in out.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser)")
def test_report_renders_in_chromium_without_errors(report_run, tmp_path):
    probed = tmp_path / "report.html"
    probed.write_text(
        (report_run / "report.html").read_text().replace("</body>", PROBE + "</body>")
    )
    out = _chromium("--window-size=1200,900", "--dump-dom", probed.as_uri(), tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert _console(out.stderr) == []
    assert 'data-broken-images="0"' in out.stdout and 'data-overflow="false"' in out.stdout
    for key, title in SECTIONS.items():
        assert f'<section id="{key}"><h2>{title}</h2>' in out.stdout

    shot = tmp_path / "report.png"
    out = _chromium("--window-size=1200,2400", "--hide-scrollbars", f"--screenshot={shot}",
                    (report_run / "report.html").as_uri(), tmp_path=tmp_path)  # fmt: skip
    assert out.returncode == 0 and _console(out.stderr) == []
    with Image.open(shot) as im:
        assert im.size == (1200, 2400)
        colours = im.convert("RGB").resize((60, 120)).getcolors(60 * 120)
        assert colours is not None and len(colours) > 50  # a page was drawn, not a blank
