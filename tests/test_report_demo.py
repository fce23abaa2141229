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

from aligncore import hookimpl
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


def test_demo_without_trainable_plugins_uses_stand_ins(tmp_path, monkeypatch):
    """With the plugins that contribute demo parts blocked, the demo still runs, on stand-ins it names."""
    from aligncore.demo import run_demo
    from aligncore.plugins import reset_plugins

    monkeypatch.setenv("ALIGNCORE_DISABLE_PLUGINS", "npr,qwen,vae_sets,semantic_set")
    reset_plugins()
    try:
        lines = []
        st = run_demo(tmp_path / "demo", n_images=28, echo=lines.append)
    finally:
        monkeypatch.delenv("ALIGNCORE_DISABLE_PLUGINS")
        reset_plugins()
    out = "\n".join(lines)
    assert "stand-in (no pixel builder is installed)" in out and "no semantic builder is installed" in out
    assert list(st.branches) == ["fake"] and "using the model-free 'fake' branch" in out
    assert (tmp_path / "demo" / "report.html").exists()


def test_demo_options_are_validated_and_weights_replace_the_preset(tmp_path):
    from aligncore import Branch
    from aligncore.demo import DemoOptions, Part, demo_parts
    from aligncore.errors import ConfigError
    from aligncore.plugins import get_plugin_manager, reset_plugins

    part = Part("ae", DemoOptions(role="pixel", options={"preset": "tiny", "threads": 1},
                                  weights={"encoder_path": "enc.pth", "decoder_path": "dec.pth"}))
    opts, note = part.options(str(tmp_path))
    assert opts == {"preset": "tiny", "threads": 1} and "RANDOM weights" in note and "enc.pth, dec.pth" in note
    (tmp_path / "enc.pth").write_bytes(b"")
    (tmp_path / "dec.pth").write_bytes(b"")
    opts, note = part.options(str(tmp_path))
    assert opts == {"threads": 1, "encoder_path": str(tmp_path / "enc.pth"), "decoder_path": str(tmp_path / "dec.pth")}

    class Misdeclared(Branch):
        name = "misdeclared"
        help = "A branch whose demo options name a role the demo does not know."
        demo_options = {"role": "pixle"}

    class Plugin:
        @hookimpl
        def register_branches(self, register):
            register(Misdeclared)

    pm = get_plugin_manager()
    pm.register(Plugin(), name="misdeclaring")
    try:
        from aligncore.registry import reset_registry

        reset_registry()
        with pytest.raises(ConfigError, match="misdeclared.*misdeclaring.*role"):
            demo_parts("branch")
    finally:
        pm.unregister(name="misdeclaring")
        reset_plugins()
