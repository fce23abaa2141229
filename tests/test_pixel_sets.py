"""Pixel-set builders (plugins/vae_sets.py): pairs, format alignment, crops without resampling,
resume, determinism, and the real tiny FLUX.2 autoencoder on shared photos."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aligncore.data import load_dataset
from aligncore.errors import ConfigError, ModelUnavailableError
from aligncore.registry import create_builder, get_registry

BUILDERS = ("tiny-ae", "sd-vae", "flux-vae")


def read_rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def photos(tmp_path) -> Path:
    """Unlabelled 'photos' of odd sizes (PNG, so the crop check can be pixel-exact) plus one fake."""
    rng = np.random.default_rng(3)
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    sizes = [(71, 53), (64, 48), (90, 37), (40, 66), (64, 48)]
    for i, (w, h) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([xx * 3 % 256, yy * 5 % 256, (xx + yy) * 2 % 256], -1) + rng.integers(0, 40, (h, w, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / ("a" if i % 2 else ".") / f"p{i}.png")
    return root


def test_registered():
    names = get_registry().names("builder")
    for b in BUILDERS:
        assert b in names


@pytest.mark.parametrize("name", BUILDERS)
def test_tiny_builders_make_pairs(name, photos, tmp_path):
    b = create_builder(name, {"preset": "tiny"})
    out = tmp_path / "set"
    manifest = b.build([photos], out, progress=False)
    rows = read_rows(manifest)
    assert len(rows) == 2 * 5
    stride = b.latent_stride
    by_pair: dict[str, list[dict]] = {}
    for r in rows:
        by_pair.setdefault(r["pair_id"], []).append(r)
        assert (out / r["path"]).is_file()
        assert r["subset"] == "pixel" and r["generator"] == r["decoder"] == b.decoder_name
        w, h = Image.open(out / r["path"]).size
        assert (w, h) == (int(r["width"]), int(r["height"]))
        assert w % stride == 0 and h % stride == 0
    for pair in by_pair.values():
        assert sorted(r["label"] for r in pair) == ["0", "1"]
        assert pair[0]["psnr"] == pair[1]["psnr"]
        real, fake = (np.asarray(Image.open(out / r["path"])) for r in sorted(pair, key=lambda r: r["label"]))
        assert real.shape == fake.shape and not np.array_equal(real, fake)
    # the output is a labelled dataset in its own right (manifest and 0_real/1_fake folder agree)
    ds = load_dataset(out)
    assert sorted(r.label for r in ds.records) == [0] * 5 + [1] * 5
    assert sorted(r.label for r in load_dataset(manifest).records) == [0] * 5 + [1] * 5
    assert "psnr" in (out / "provenance.json").read_text()
    assert "mean PSNR" in b.summary()


def test_only_real_photos_are_used(image_folder, tmp_path):
    rows = read_rows(create_builder("tiny-ae", preset="tiny").build([image_folder], tmp_path / "s", progress=False))
    sources = {r["source"] for r in rows}
    assert len(sources) == 6 and all("/0_real/" in s for s in sources)


def test_format_alignment_jpeg(photos, tmp_path):
    out = tmp_path / "set"
    rows = read_rows(create_builder("tiny-ae", preset="tiny", format="jpeg", jpeg_quality=83).build([photos], out, progress=False))
    # reference tables for quality 83 and for another quality, from the same encoder
    ref83, ref60 = tmp_path / "r83.jpg", tmp_path / "r60.jpg"
    Image.new("RGB", (16, 16), (90, 120, 30)).save(ref83, quality=83)
    Image.new("RGB", (16, 16), (90, 120, 30)).save(ref60, quality=60)
    q83 = Image.open(ref83).quantization
    assert q83 != Image.open(ref60).quantization
    for r in rows:
        im = Image.open(out / r["path"])
        assert im.format == "JPEG" and r["path"].endswith(".jpg")
        assert im.quantization == q83, r["path"]
        assert r["format"] == "jpeg" and r["quality"] == "83"
    png_rows = read_rows(create_builder("tiny-ae", preset="tiny").build([photos], tmp_path / "p", progress=False))
    assert {Image.open(tmp_path / "p" / r["path"]).format for r in png_rows} == {"PNG"}
    assert {r["quality"] for r in png_rows} == {""}


@pytest.mark.parametrize("max_side", [None, 40])
def test_crop_without_resampling(photos, tmp_path, max_side):
    b = create_builder("tiny-ae", preset="tiny", max_side=max_side)
    out = tmp_path / "set"
    rows = [r for r in read_rows(b.build([photos], out, progress=False)) if r["label"] == "0"]
    assert b.latent_stride == 8
    for r in rows:
        src = np.asarray(Image.open(r["source"]).convert("RGB"))
        h, w = src.shape[:2]
        cap = max_side or max(w, h)
        th, tw = min(h, cap) // 8 * 8, min(w, cap) // 8 * 8
        top, left = (h - th) // 2, (w - tw) // 2
        got = np.asarray(Image.open(out / r["path"]))
        assert got.shape == (th, tw, 3)
        assert np.array_equal(got, src[top : top + th, left : left + tw])


def test_tiny_source_is_skipped(tmp_path):
    d = tmp_path / "small"
    d.mkdir()
    Image.new("RGB", (5, 30)).save(d / "thin.png")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(d / "ok.png")
    rows = read_rows(create_builder("tiny-ae", preset="tiny").build([d], tmp_path / "s", progress=False))
    assert {Path(r["source"]).name for r in rows} == {"ok.png"}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("journal.jsonl", "provenance.json")}


def test_resume_after_kill_matches_uninterrupted(photos, tmp_path):
    from aligncore_plugins.vae_sets import TinyAEBuilder

    class Killed(Exception):
        pass

    class DiesAfterTwo(TinyAEBuilder):
        """The real builder, killed (an exception out of build) while processing its third photo."""

        def process_batch(self, items, out_dir):
            self.seen = getattr(self, "seen", 0) + len(items)
            if self.seen > 2:
                raise Killed
            return super().process_batch(items, out_dir)

    full = tmp_path / "full"
    create_builder("tiny-ae", preset="tiny").build([photos], full, progress=False)

    part = tmp_path / "part"
    with pytest.raises(Killed):
        DiesAfterTwo(preset="tiny").build([photos], part, progress=False)
    assert len((part / "journal.jsonl").read_text().splitlines()) == 2
    assert not (part / "manifest.csv").exists()
    # a torn last line (killed mid-write) is ignored
    with open(part / "journal.jsonl", "a") as f:
        f.write('{"key": "photos/p4.png", "ro')
    resumed = create_builder("tiny-ae", preset="tiny")
    calls = []
    resumed.build([photos], part, progress=lambda i, n: calls.append(i))
    assert resumed._reconstructed == 3  # only the photos not journalled
    assert _tree_bytes(part) == _tree_bytes(full)
    # a third run has nothing to do
    again = create_builder("tiny-ae", preset="tiny")
    again.build([photos], part, progress=False)
    assert again.model is None and again._reconstructed == 0


def test_same_seed_same_bytes(photos, tmp_path):
    a = create_builder("sd-vae", preset="tiny", seed=7, sample_latent=True).build([photos], tmp_path / "a", progress=False)
    b = create_builder("sd-vae", preset="tiny", seed=7, sample_latent=True).build([photos], tmp_path / "b", progress=False)
    c = create_builder("sd-vae", preset="tiny", seed=8, sample_latent=True).build([photos], tmp_path / "c", progress=False)
    assert a.read_bytes() == b.read_bytes()
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
    assert a.read_bytes() != c.read_bytes()


def test_batched_equals_single(photos, tmp_path):
    # photos p1 and p4 share a size, so batch_size=4 puts them through one model call
    one = create_builder("tiny-ae", preset="tiny", batch_size=1).build([photos], tmp_path / "one", progress=False)
    four = create_builder("tiny-ae", preset="tiny", batch_size=4).build([photos], tmp_path / "four", progress=False)
    r1, r4 = read_rows(one), read_rows(four)
    assert [r["path"] for r in r1] == [r["path"] for r in r4]
    for x, y in zip(r1, r4):
        assert abs(float(x["psnr"]) - float(y["psnr"])) < 0.05


def test_missing_weights_fail_fast(monkeypatch, photos, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("sd-vae", "flux-vae"):
        b = create_builder(name, model="no-such-org/no-such-model-xyz")
        t0 = time.monotonic()
        with pytest.raises(ModelUnavailableError, match="no-such-org/no-such-model-xyz"):
            b.build([photos], tmp_path / name, progress=False)
        assert time.monotonic() - t0 < 20
    with pytest.raises(ConfigError, match="encoder_path"):
        create_builder("tiny-ae")
    with pytest.raises(ConfigError, match="not a file"):
        create_builder("tiny-ae", encoder_path=str(tmp_path / "x.pth"), decoder_path=str(tmp_path / "y.pth"))


@pytest.mark.parametrize("latent,gn", [(4, False), (16, False), (32, True)])
def test_layout_inferred_from_state_dict(tmp_path, latent, gn):
    import torch

    from aligncore_plugins import tiny_ae_model as m

    src = m.TinyAutoencoder(m.standard_layout(latent_channels=latent, gn_mid=gn))
    torch.save(src.encoder.state_dict(), tmp_path / "e.pth")
    torch.save(src.decoder.state_dict(), tmp_path / "d.pth")
    got = m.load_tiny_autoencoder(tmp_path / "e.pth", tmp_path / "d.pth")
    assert got.layout == src.layout
    assert (got.stride, got.latent_channels, got.layout.has_groupnorm) == (8, latent, gn)
    x = torch.rand(1, 3, 32, 24)
    with torch.inference_mode():
        assert torch.equal(got.reconstruct(x), src.eval().reconstruct(x))


def test_plugin_import_stays_light():
    code = "import sys, aligncore_plugins.vae_sets; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


# ------------------------------------------------------------------ the real tiny FLUX.2 autoencoder


def test_real_taef2_reconstructs_shared_photos(shared_weights, shared_data, tmp_path):
    import torch

    from aligncore_plugins import tiny_ae_model as m

    enc, dec = shared_weights / "taef2_encoder.pth", shared_weights / "taef2_decoder.pth"
    if not (enc.is_file() and dec.is_file()):
        pytest.skip("taef2_encoder.pth / taef2_decoder.pth are not in the shared weights")
    model = m.load_tiny_autoencoder(enc, dec)  # strict=True inside: every key and shape must match
    assert (model.stride, model.latent_channels, model.layout.has_groupnorm) == (8, 32, True)
    sd = torch.load(dec, weights_only=True)
    assert set(sd) == set(model.decoder.state_dict())

    opts = dict(encoder_path=str(enc), decoder_path=str(dec), max_side=128, limit=3)
    real = create_builder("tiny-ae", **opts)
    real.build([shared_data / "real"], tmp_path / "real", progress=False)
    rand = create_builder("tiny-ae", reinit_decoder=True, **opts)
    rand.build([shared_data / "real"], tmp_path / "rand", progress=False)
    good, bad = real._stats["psnr_mean"], rand._stats["psnr_mean"]
    assert real._stats["pairs"] == rand._stats["pairs"] == 3
    assert good > 20, good
    assert bad < 12, bad
    assert rand.decoder_name == "taef2-random-decoder" and real.decoder_name == "taef2"
