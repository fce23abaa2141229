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
    # the glossary explains the metrics and why accuracy at the threshold and AUC can disagree
    for needle in ("How to read this", "AUC (ROC-AUC)", "AP (average precision)", "EER (equal error rate)",
                   "TPR@5%FPR", "why accuracy and AUC disagree", "n = 300 images (150 real, 150 fake)"):
        assert needle in text, needle


def _scores(n_real=12, n_fake=12, long_name="a-generator-with-a-very-long-name-that-used-to-be-clipped-v2.1"):
    """A RunScores whose fused verdicts get one fake generator entirely wrong (accuracy 0)."""
    import numpy as np

    from aligncore.rundir import RunScores

    n = n_real + n_fake
    labels = np.array([0] * n_real + [1] * n_fake)
    gens = np.array(["photos"] * n_real + ["easy"] * (n_fake // 2) + [long_name] * (n_fake - n_fake // 2), dtype=object)
    a = np.where(labels == 0, 0.2, np.where(gens == "easy", 0.9, 0.3))
    return RunScores(branches=["a"], paths=[f"p{i}" for i in range(n)], sha256=[f"{i:064x}" for i in range(n)],
                     labels=labels, generators=gens, subsets=np.full(n, "", dtype=object), scores={"a": a},
                     errors=[""] * n, fused=a, verdicts=a >= 0.5)


def test_report_figures_are_readable():
    import matplotlib.pyplot as plt
    from matplotlib import colors as mcolors

    from aligncore.report import figures, relative_luminance, text_color_on

    rs = _scores()
    figs = {t: (c, f) for t, c, f in figures(rs, fused_threshold=0.5)}
    try:
        for title, (caption, _) in figs.items():  # the sample size beside every figure
            assert caption.startswith("n = 24 images (12 real, 12 fake)"), (title, caption)
        # a group the verdicts get entirely wrong shows its value, not a missing bar; its full name is the label
        ax = figs["Accuracy per generator"][1].axes[0]
        texts = [t.get_text() for t in ax.texts]
        assert "0.00  (n=6)" in texts and "1.00  (n=6)" in texts and "1.00  (n=12)" in texts
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert "a-generator-with-a-very-long-name-that-used-to-be-clipped-v2.1 (fake)" in labels
        # a threshold line on each histogram
        for ax in figs["Score histograms"][1].axes:
            if ax.get_visible():
                xs = [line.get_xdata()[0] for line in ax.lines]
                assert 0.5 in xs, ax.get_title()
        # confusion-matrix numbers contrast with their cells, however the counts fall
        for cm_values in ([[10, 12], [14, 16]], [[0, 0], [0, 5]], [[50, 1], [2, 47]]):
            cmap, norm = plt.get_cmap("Blues"), mcolors.Normalize(0, max(map(max, cm_values)))
            for v in sum(cm_values, []):
                bg = relative_luminance(cmap(norm(v)))
                fg = 0.0 if text_color_on(cmap(norm(v))) == "black" else 1.0
                ratio = (max(bg, fg) + 0.05) / (min(bg, fg) + 0.05)
                assert ratio >= 4.5, (cm_values, v, ratio)
        ax = figs["Confusion matrix"][1].axes[0]
        assert sorted(int(t.get_text().split("\n")[0]) for t in ax.texts) == [0, 6, 6, 12]
    finally:
        plt.close("all")
    # no threshold line is drawn where the fusion's verdicts are not a threshold on its score
    rs.verdicts = ~rs.verdicts
    from aligncore.report import fused_decision_threshold

    assert fused_decision_threshold(rs, {"fusion": {"name": "max", "config": {}, "state": {}}}) is None
    rs.verdicts = ~rs.verdicts
    assert fused_decision_threshold(rs, {"fusion": {"name": "max", "config": {"threshold": 0.5}, "state": {}}}) == 0.5


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


SIZES_SCRIPT = """<script>
window.addEventListener("load", () => {
  const sizes = [...document.images].map(i => [i.alt, i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width]);
  const pre = document.createElement("pre"); pre.id = "sizes"; pre.textContent = JSON.stringify(sizes);
  document.body.appendChild(pre);
});
</script></body>"""


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (Debian/Ubuntu: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    """The report as a browser shows it: every figure decodes and is drawn at a readable size, the classes'
    colours are on screen, the glossary is there."""
    import json

    run_dir, _ = make_scored_run(tmp_path / "run", n=200)
    assert CliRunner().invoke(build_cli(), ["report", str(run_dir)]).exit_code == 0
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", SIZES_SCRIPT), encoding="utf-8")
    exe = _chromium()
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1300,5000"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], check=True, capture_output=True, text=True, timeout=120)
    sizes = json.loads(dom.stdout.split('<pre id="sizes">', 1)[1].split("</pre>", 1)[0])
    assert [s[0] for s in sizes] == ["ROC curves", "Accuracy per generator", "Score histograms", "Confusion matrix"]
    for alt, w, h, shown in sizes:
        assert w > 250 and h > 200 and shown >= min(w, 300), (alt, w, h, shown)  # decoded and drawn, not a broken icon
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", (run_dir / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    im = Image.open(shot).convert("RGB")
    assert im.size == (1300, 5000)
    px = im.load()
    counts = {"real": 0, "fake": 0, "glossary": 0}
    want = {"real": (0x4C, 0x72, 0xB0), "fake": (0xDD, 0x84, 0x52), "glossary": (0xF6, 0xF8, 0xFA)}
    for yy in range(0, im.size[1], 3):
        for xx in range(0, im.size[0], 3):
            p = px[xx, yy]
            for k, c in want.items():
                if all(abs(p[i] - c[i]) <= 6 for i in range(3)):
                    counts[k] += 1
    # both classes' bars and curves are drawn, and the glossary's panel is on the page
    assert counts["real"] > 200 and counts["fake"] > 200 and counts["glossary"] > 2000, counts


def test_demo_runs_offline_end_to_end_and_prints_only_its_own_lines(tmp_path):
    """Run as a user runs it (a process of its own, so third-party warnings would reach its output)."""
    import os
    import sys

    from aligncore.quiet import QUIET_ENV

    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}  # what a user's shell has: none of them
    r = subprocess.run([sys.executable, "-m", "aligncore", "demo", "--out", str(tmp_path / "demo"), "--images", "28"],
                       capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    # no FutureWarning (or any third-party warning, progress bar or raw trl metric dict): only the demo's lines
    assert "Warning" not in r.stdout + r.stderr and "{'" not in out and r.stderr.strip() == "", r.stderr[-3000:]
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
