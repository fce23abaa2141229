"""The HTML report (validated, images decoded, optionally rendered by headless Chromium) and the demo."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner
from PIL import Image

from aligncore.cli import build_cli
from study_utils import make_scored_run

VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    """Well-formedness check (every non-void tag closed in order) that also collects images."""

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.errors, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _check_report(path):
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    c = _Checker()
    c.feed(html)
    assert not c.errors and not c.stack, (c.errors, c.stack)
    assert "http://" not in html and "https://" not in html  # self-contained
    sizes = []
    for img in c.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        im.load()
        assert im.size[0] > 100 and im.size[1] > 100
        sizes.append(im.size)
    return html, c, sizes


def test_report_is_valid_self_contained_html_with_all_figures(tmp_path):
    run_dir, _ = make_scored_run(tmp_path / "run", n=300)
    r = CliRunner().invoke(build_cli(), ["report", str(run_dir), "--target-fpr", "0.05"])
    assert r.exit_code == 0, r.output
    html, c, sizes = _check_report(run_dir / "report.html")
    alts = [i["alt"] for i in c.images]
    assert alts == ["ROC curves", "Accuracy per generator", "Score histograms", "Confusion matrix"]
    text = " ".join(c.text)
    for needle in ("Fusion ablation", "fusion:learned", "branch:pix", "pixgen", "TPR@5%FPR"):
        assert needle in text


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="headless Chromium is not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    run_dir, _ = make_scored_run(tmp_path / "run", n=200)
    CliRunner().invoke(build_cli(), ["report", str(run_dir)])
    shot = tmp_path / "shot.png"
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,3600",
                    f"--screenshot={shot}", (run_dir / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    im = Image.open(shot).convert("L")
    # the page is not blank: the figures cover a good share of the screenshot with non-white pixels
    hist = im.histogram()
    non_white = 1 - sum(hist[245:]) / (im.size[0] * im.size[1])
    assert non_white > 0.05, non_white


def test_demo_runs_offline_end_to_end(tmp_path):
    r = CliRunner().invoke(build_cli(), ["demo", "--out", str(tmp_path / "demo"), "--images", "28"])
    assert r.exit_code == 0, r.output
    out = r.output
    assert out.startswith("DEMONSTRATION ONLY")
    assert "[8/8] Write the HTML report" in out
    assert "fusion:or" in out and "suite: demo" in out
    # the built-in tiny experts were built, trained and scored (no fallback to the model-free branch)
    assert "builder tiny-ae" in out and "builder semantic-set" in out
    assert "trained npr" in out and "trained qwen" in out and "branches npr, qwen" in out
    assert "branch:npr" in out and "branch:qwen" in out
    html, c, _ = _check_report(tmp_path / "demo" / "report.html")
    assert "DEMONSTRATION ONLY" in html
    # held-out photos never served as training material
    train = {p.name.split("_")[0] for p in (tmp_path / "demo" / "photos" / "train").glob("*.png")}
    held = {p.name.split("_")[0] for p in (tmp_path / "demo" / "photos" / "heldout").glob("*.png")}
    assert train and held and not train & held
