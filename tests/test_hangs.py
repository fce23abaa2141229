"""Anything that can hang (issue 15, section 2): the Python API has the CLI's guards, and nothing a checkpoint
contains runs unbounded (chat templates are refused or rendered under a deadline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


PREDICT_FIFO = """
import sys, os
from aligncore import Detector
det = Detector(branches=["fake"])
p = det.predict([sys.argv[1], sys.argv[2]])
print(p[0].verdict, "|", p[0].error, "|", p[1].verdict)
"""


def test_detector_predict_on_a_fifo_returns_at_once(tmp_path):
    """In a child process with a deadline: a hang fails the test instead of hanging the suite."""
    from PIL import Image

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    ok = tmp_path / "ok.png"
    Image.new("RGB", (16, 16), (9, 9, 9)).save(ok)
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", PREDICT_FIFO, str(fifo), str(ok)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    verdict, error, other = (x.strip() for x in out.stdout.strip().splitlines()[-1].split("|"))
    assert verdict == "None" and "FIFO" in error and other in ("fake", "real")
    assert time.time() - t0 < 120


def test_detector_checks_lazily_opened_pil_images_before_decoding(tmp_path):
    """A PIL image opened (not decoded) from a decompression bomb gets the file limits too."""
    from PIL import Image

    from aligncore import Detector
    from aligncore.data import images

    path = Path(__file__).parent / "fixtures" / "tricky" / "huge_dims.png"
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        lazy = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = old
    assert lazy.size[0] * lazy.size[1] > images.MAX_PIXELS
    pred = Detector(branches=["fake"]).predict(lazy)[0]
    assert pred.verdict is None and "exceeds the limit" in pred.error


# ---------------------------------------------------------------------- chat templates of checkpoints


def _qwen_checkpoint(tmp_path: Path, template: str) -> Path:
    """A tiny qwen checkpoint folder whose saved processor carries ``template``."""
    from aligncore_plugins import qwen_model as qm

    ck = tmp_path / "ck"
    proc = qm.build_tiny_processor(56 * 56, 112 * 112)
    proc.chat_template = template
    proc.tokenizer.chat_template = template
    proc.save_pretrained(str(ck))
    (ck / "aligncore_qwen.json").write_text(json.dumps({"branch": "qwen", "preset": "tiny", "model": None,
                                                        "min_pixels": 56 * 56, "max_pixels": 112 * 112}))
    return ck


HOSTILE_TEMPLATES = {
    "nested range loops": "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    "power": "{{ 10 ** 10 ** 10 }}",
    "repeated text": "{{ messages[0]['role'] * 1000000000 }}",
    "recursive macro": "{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "huge width": "{{ messages[0]['role'] | center(2000000000) }}",
    "recursive loop": "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
    "four nested loops": "{% for a in messages %}{% for b in messages %}{% for c in messages %}{% for d in messages %}"
                         "{% endfor %}{% endfor %}{% endfor %}{% endfor %}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_a_checkpoint_template_that_can_run_unbounded_is_refused_before_it_runs(tmp_path, name):
    from aligncore.registry import create_branch
    from aligncore.templates import TemplateRefused

    ck = _qwen_checkpoint(tmp_path, HOSTILE_TEMPLATES[name])
    branch = create_branch("qwen", checkpoint=str(ck), device="cpu")
    t0 = time.time()
    with pytest.raises(TemplateRefused, match=str(ck)):
        branch.processor()
    assert time.time() - t0 < 10


def test_a_slow_template_is_stopped_at_its_deadline(tmp_path, monkeypatch):
    """Statically allowed (three loops over the conversation's text), but cubic in the prompt's length: the
    bounded render kills it at the deadline instead of letting ``run`` hang."""
    from aligncore import templates
    from aligncore.registry import create_branch

    slow = ("{% set t = messages[0]['content'][1]['text'] %}{% for a in t %}{% for b in t %}{% for c in t %}"
            "{% endfor %}{% endfor %}{% endfor %}<|im_start|>assistant\n")
    ck = _qwen_checkpoint(tmp_path, slow)
    monkeypatch.setattr(templates, "RENDER_TIMEOUT_S", 8.0)
    branch = create_branch("qwen", checkpoint=str(ck), device="cpu", prompt="Real or fake? " + "x" * 3000)
    t0 = time.time()
    with pytest.raises(templates.TemplateRefused, match="did not finish"):
        branch.processor()
    assert time.time() - t0 < 30


def test_a_checkpoint_template_is_rendered_bounded_and_exactly(tmp_path):
    """A foreign but harmless template gives exactly what transformers' own rendering gives."""
    from aligncore.registry import create_branch
    from aligncore_plugins import qwen_model as qm

    template = qm.TINY_CHAT_TEMPLATE.replace("<|im_start|>assistant\n", "<|im_start|>assistant\nAnswer: ")
    ck = _qwen_checkpoint(tmp_path, template)
    branch = create_branch("qwen", checkpoint=str(ck), device="cpu")
    branch.processor()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": branch.prompt}]}]
    expected = branch.processor().apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert branch._text == expected and expected.endswith("Answer: ")
