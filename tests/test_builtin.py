"""Issue 12: built-in weights that ship in the package, the default ensemble, ``alignctl detect``.

Nothing here needs ../shared: the built-in files are package data (built by benchmarks/build_builtin.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from aligncore import create_branch
from aligncore.builtin import (DEFAULT_ENSEMBLE, SUMS_FILE, BuiltinWeightsError, default_ensemble, read_sums,
                              resource_folder, verify)
from aligncore.cli import build_cli
from aligncore.testing import make_image_folder

BUILTIN = resource_folder(DEFAULT_ENSEMBLE)


def alignctl(*args):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def photo(seed: int, h: int = 96, w: int = 128) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC)).astype(np.int16)
    arr = np.clip(arr + rng.integers(-6, 7, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for k in range(3):
        photo(k).save(d / f"img{k}.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "notes.txt").write_text("not an image")  # not an image suffix: not looked at
    return d


# ---------------------------------------------------------------------- the shipped files


@pytest.mark.parametrize("branch", ["npr", "spectrum", "aerecon"])
def test_builtin_weights_load_check_their_digest_and_score(branch):
    b = create_branch(branch, device="cpu")
    assert b.uses_builtin_weights and b.config.checkpoint is None
    folder = b.builtin_folder()
    sums = read_sums(folder)
    assert set(sums) >= {"branch.json"} and len(sums) >= 2
    verify(folder)  # every listed file has its recorded sha256
    prov = b.weights_provenance()
    assert prov == f"builtin@{b.weights_digest()[:16]}" and len(prov) == len("builtin@") + 16
    s = b.score([photo(1), photo(2, 160, 120)])
    assert all(0.0 <= v <= 1.0 for v in s) and s[0] != s[1]


def test_builtin_weights_are_real_not_the_random_preset():
    im = [photo(3)]
    built, tiny = create_branch("spectrum"), create_branch("spectrum", preset="tiny")
    assert tiny.weights_provenance() == "random" and not tiny.uses_builtin_weights
    assert built.score(im) != tiny.score(im)
    npr_tiny = create_branch("npr", preset="tiny")
    assert npr_tiny.weights_provenance() == "random" and npr_tiny.config.width == 8


def test_builtin_architecture_is_adopted_and_other_options_mean_another_model():
    from aligncore.errors import AlignCoreError, ConfigError

    recorded = json.loads((BUILTIN / "npr" / "branch.json").read_text())["architecture"]
    b = create_branch("npr")
    assert {k: getattr(b.config, k) for k in recorded} == recorded and b.uses_builtin_weights
    other = 8 if recorded["width"] != 8 else 32
    mine = create_branch("npr", width=other)  # a model the built-in weights cannot serve: untrained, never them
    assert not mine.uses_builtin_weights and mine.weights_digest() == ""
    with pytest.raises(AlignCoreError, match=rf"no trained weights.*width={other} \(built-in: width={recorded['width']}\)"):
        mine.ensure_loaded()
    with pytest.raises(ConfigError, match="built-in: scales"):
        create_branch("aerecon", scales=[1])


def _fake_package(tmp_path, monkeypatch, name: str) -> Path:
    pkg = tmp_path / name
    shutil.copytree(BUILTIN / "spectrum", pkg / "w")
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    return pkg / "w"


def _spectrum_with(spec: str):
    from aligncore_plugins.spectrum import SpectrumBranch

    return type("Spectrum2", (SpectrumBranch,), {"builtin_weights": spec})


def test_altered_builtin_file_is_an_error_naming_it(tmp_path, monkeypatch):
    folder = _fake_package(tmp_path, monkeypatch, "altered_builtin_pkg")
    cls = _spectrum_with("altered_builtin_pkg:w")
    assert cls().uses_builtin_weights  # intact copy: loads
    data = bytearray((folder / "spectrum.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "spectrum.safetensors").write_bytes(bytes(data))
    import os

    os.utime(folder / SUMS_FILE)  # a new check, not the cached verdict
    with pytest.raises(BuiltinWeightsError, match="spectrum.safetensors has sha256"):
        cls()


def test_missing_builtin_file_or_folder_is_an_error(tmp_path, monkeypatch):
    folder = _fake_package(tmp_path, monkeypatch, "missing_builtin_pkg")
    (folder / "spectrum.safetensors").unlink()
    with pytest.raises(BuiltinWeightsError, match="is missing"):
        _spectrum_with("missing_builtin_pkg:w")()
    with pytest.raises(BuiltinWeightsError, match="are missing"):
        _spectrum_with("missing_builtin_pkg:nowhere")()
    (folder / SUMS_FILE).unlink()
    with pytest.raises(BuiltinWeightsError, match="no SHA256SUMS"):
        _spectrum_with("missing_builtin_pkg:w")()


def test_the_core_names_no_builtin_branch():
    import aligncore.builtin
    import aligncore.commands.detect

    for mod in (aligncore.builtin, aligncore.commands.detect):
        text = Path(mod.__file__).read_text()
        assert not any(f'"{n}"' in text for n in ("npr", "spectrum", "aerecon")), mod.__name__


# ---------------------------------------------------------------------- run: provenance recorded


def test_run_without_checkpoint_records_builtin_weights(tmp_path):
    import yaml

    ds = make_image_folder(tmp_path / "ds", n_real=3, n_fake=3, generators=("genA",))
    res = alignctl("run", "--branches", "npr,spectrum", "--data", ds, "--out", tmp_path / "r", "-q", "--device", "cpu")
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    want = {b: create_branch(b).weights_provenance() for b in ("npr", "spectrum")}
    assert cfg["weights"] == want and all(v.startswith("builtin@") for v in want.values())
    board = json.loads(alignctl("leaderboard", "--all", "--format", "json").stdout)["rows"]
    assert len(board) == 1 and json.loads(json.dumps(board[0]["weights"])) is not None
    assert "builtin@" in json.dumps(board[0]["weights"])
    tiny = alignctl("run", "--branches", "npr,spectrum", "--preset", "tiny", "--data", ds, "--out", tmp_path / "t",
                    "-q", "--device", "cpu")
    assert tiny.exit_code == 0, tiny.output
    assert yaml.safe_load((tmp_path / "t" / "config.yaml").read_text())["weights"] == {"npr": "random", "spectrum": "random"}


# ---------------------------------------------------------------------- detect and Detector()


def test_default_ensemble_is_data():
    desc = default_ensemble()
    assert desc["branches"] and desc["fusion"]["name"]
    assert desc["calibration"]["target_fpr"] == 0.05


def test_detect_table_json_and_unreadable_files(images):
    res = alignctl("detect", images)
    assert res.exit_code == 3, res.output
    lines = res.stdout.strip().splitlines()
    branches = list(default_ensemble()["branches"])
    assert lines[0].split() == ["path", "P(fake)", "verdict", *branches]
    body = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert len(body) == 4 and not any("notes.txt" in k for k in body)
    for k in range(3):
        row = body[str(images / f"img{k}.png")]
        assert row[2] in ("fake", "real") and 0.0 <= float(row[1]) <= 1.0
    assert body[str(images / "broken.jpg")][2] == "error"
    assert "1 input(s) could not be scored" in res.stderr and "broken.jpg" in res.stderr

    js = alignctl("detect", "--json", images, images / "nope.png")
    assert js.exit_code == 3
    recs = [json.loads(ln) for ln in js.stdout.strip().splitlines()]
    assert [Path(r["path"]).name for r in recs] == ["broken.jpg", "img0.png", "img1.png", "img2.png", "nope.png"]
    for r in recs:
        assert set(r) >= {"path", "score", "verdict", "scores"}
    ok = [r for r in recs if r["verdict"] is not None]
    assert len(ok) == 3 and all(set(r["scores"]) == set(branches) for r in ok)
    assert all(r["verdict"] == ("fake" if r["score"] >= 0.5 else "real") for r in ok)
    assert recs[0]["error"] and recs[-1]["error"] == "no such file or folder"

    # the Python API is the same detector: same scores, same verdicts
    import aligncore

    preds = aligncore.Detector().predict([images / f"img{k}.png" for k in range(3)])
    for p, r in zip(preds, ok):
        assert p.score == pytest.approx(r["score"], abs=1e-12) and p.verdict == r["verdict"]
        assert p.scores == pytest.approx(r["scores"], abs=1e-12)


def test_detect_all_readable_exits_zero(tmp_path):
    photo(7).save(tmp_path / "a.png")
    res = alignctl("detect", "--json", tmp_path / "a.png")
    assert res.exit_code == 0 and json.loads(res.stdout)["verdict"] in ("fake", "real")
