"""The generalisation protocol's folds and conditions, and the ``aerecon`` branch (tiny offline presets).

Fold rules are checked on a synthetic manifest (always) and on the shared one (skipped when absent).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aligncore import create_branch
from aligncore.errors import AlignCoreError, ConfigError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import logo_features as fe  # noqa: E402
import logo_folds as lf  # noqa: E402

from pixel_sets import photo_like  # noqa: E402

# --------------------------------------------------------------------------- folds


def _manifest(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "generator", "source_repo", "sha256"])
        for k, (label, gen, repo, name) in enumerate(rows):
            w.writerow([f"{label}/{gen}/{name}", label, gen, repo, f"{k:064x}"])
    return path


@pytest.fixture
def toy_items(tmp_path):
    rows = []
    rows += [("fake", "flux.1-dev", "cheatsheet", f"f{k}.webp") for k in range(12)]
    rows += [("fake", "flux.2-dev", "comfy", "f2.png")]
    rows += [("fake", "sdxl", "cheatsheet", f"s{k}.webp") for k in range(11)]
    rows += [("fake", "sdxl", "horde", "s-h.webp"), ("fake", "sd3-medium", "comfy", "sd3.png")]
    rows += [("fake", "muse", "muse-site", f"m{k}.jpg") for k in range(10)]
    rows += [("fake", "gigagan", "gigagan-site", f"g{k}.jpg") for k in range(10)]
    rows += [("fake", "pixart-alpha", "pixart", f"p{k}.png") for k in range(3)]
    for src, n in (("COCO-train2017", 5), ("COCO-val2017", 5), ("ImageNet", 6), ("CBSD68", 3), ("Urban100", 2),
                   ("Sun-Hays80", 3), ("Dresden", 2)):
        rows += [("real", src, "photos", f"{src}-{k}.jpg") for k in range(n)]
    return lf.load_items(_manifest(tmp_path / "MANIFEST.csv", rows))


def test_folds_group_families_and_pool_rare_generators(toy_items):
    folds = lf.generator_folds(toy_items, min_images=10)
    # flux.2-dev joins flux.1-dev (one family); sd3 (1 image) and pixart (3) are pooled
    assert folds["flux"] == ("flux",) and folds["sdxl"] == ("sdxl",)
    assert set(folds) == {"flux", "sdxl", "muse", "gigagan", "rare"}
    assert set(folds["rare"]) == {"sd3", "pixart-alpha"}


def test_every_cell_keeps_families_publishers_and_photo_collections_apart(toy_items):
    cells = lf.build_cells(toy_items)
    assert len(cells) == 5 * 4
    for cell in cells:
        lf.check_cell(toy_items, cell)
        train = [toy_items[i] for i in cell.train]
        test = [toy_items[i] for i in cell.test]
        assert {it.generator for it in train} & {it.generator for it in test} == set()
        assert {it.real_group for it in train if not it.label}.isdisjoint({it.real_group for it in test if not it.label})
    flux = next(c for c in cells if c.gen_fold == "flux")
    train_gens = {toy_items[i].generator for i in flux.train if toy_items[i].label}
    # the cheat-sheet's SDXL images share the FLUX images' pipeline and the ComfyUI sd3 example its publisher
    assert "sdxl" in train_gens  # the Horde SDXL image stays
    assert not any(toy_items[i].publisher in ("cheatsheet", "comfy") for i in flux.train if toy_items[i].label)
    coco = next(c for c in cells if c.gen_fold == "muse" and c.real_fold == "coco")
    assert {toy_items[i].generator for i in coco.test if not toy_items[i].label} == {"COCO-train2017", "COCO-val2017"}


def test_check_cell_catches_a_leak(toy_items):
    cell = lf.build_cells(toy_items, gen_only=["muse"], real_only=["coco"])[0]
    photo = next(i for i in cell.test if not toy_items[i].label)
    fake = next(i for i in cell.test if toy_items[i].label)
    moved_photo = lf.Cell(cell.gen_fold, cell.real_fold, cell.train + [photo], [i for i in cell.test if i != photo])
    with pytest.raises(AssertionError, match="real collections"):
        lf.check_cell(toy_items, moved_photo)
    moved_fake = lf.Cell(cell.gen_fold, cell.real_fold, cell.train + [fake], [i for i in cell.test if i != fake])
    with pytest.raises(AssertionError, match="families"):
        lf.check_cell(toy_items, moved_fake)
    sdxl_cell = lf.build_cells(toy_items, gen_only=["sdxl"], real_only=["coco"])[0]
    cheatsheet_flux = next(i for i, it in enumerate(toy_items) if it.generator == "flux.1-dev")
    with pytest.raises(AssertionError, match="publishers"):
        lf.check_cell(toy_items, lf.Cell("sdxl", "coco", sdxl_cell.train + [cheatsheet_flux], sdxl_cell.test))


def test_subset_keeps_the_full_sets_folds(toy_items):
    folds = lf.generator_folds(toy_items)
    sub = lf.subsample(toy_items, per_fold_fakes=3, per_group_reals=2)
    assert lf.generator_folds(sub) != folds  # a subset alone would pool everything as rare
    cells = lf.build_cells(sub, folds)
    assert {c.gen_fold for c in cells} == set(folds)
    for c in cells:
        lf.check_cell(sub, c)
    rare = [it for it in sub if it.label and it.family in folds["rare"]]
    assert {it.family for it in rare} == {"sd3", "pixart-alpha"}  # round-robin keeps the pooled fold's variety


def test_unknown_real_collection_is_an_error(tmp_path):
    path = _manifest(tmp_path / "m.csv", [("real", "MyPhotos", "x", "a.jpg")])
    with pytest.raises(ValueError, match="MyPhotos.*REAL_GROUPS"):
        lf.load_items(path)


def test_shared_manifest_folds(shared_data):
    items = lf.load_items(shared_data / "MANIFEST.csv")
    folds = lf.generator_folds(items)
    assert "rare" in folds and "flux" in folds and "sdxl" in folds
    assert all(sum(1 for it in items if it.label and it.family in fams) >= lf.MIN_FOLD_IMAGES for fams in folds.values())
    cells = lf.build_cells(items, folds)
    assert len(cells) == len(folds) * 4
    for cell in cells:
        lf.check_cell(items, cell)
    # every fake and every real photo is tested exactly once per real fold / generator fold
    fakes = [i for i, it in enumerate(items) if it.label]
    tested = [i for c in cells if c.real_fold == "coco" for i in c.test if items[i].label]
    assert sorted(tested) == fakes


# --------------------------------------------------------------------------- pixels and conditions


def test_decode_reads_pixels_only(tmp_path):
    arr = photo_like(np.random.default_rng(0), 40, 56)
    plain, meta = tmp_path / "plain.png", tmp_path / "meta.png"
    Image.fromarray(arr).save(plain)
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a prompt that names the generator")
    Image.fromarray(arr).save(meta, pnginfo=info)
    np.testing.assert_array_equal(fe.decode_pixels(plain), fe.decode_pixels(meta))
    # an EXIF orientation tag is not applied: the stored pixel grid is what gets analysed
    exif = Image.Exif()
    exif[0x0112] = 6
    rot = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(rot, quality=95, exif=exif)
    assert fe.decode_pixels(rot).shape == arr.shape


def test_conditions_are_deterministic_and_sized():
    window = fe.centre_window(photo_like(np.random.default_rng(1), 600, 520), fe.WINDOW)
    assert window.shape == (512, 512, 3)
    asis = fe.condition_image(window, "asis")
    assert asis.shape == (256, 256, 3)
    np.testing.assert_array_equal(asis, window[128:384, 128:384])
    q90 = fe.condition_image(window, "jpeg90")
    assert q90.shape == asis.shape and not np.array_equal(q90, asis)
    social = fe.condition_image(window, "social")
    assert social.shape == (256, 256, 3)  # ×0.5 of the 512 window
    a1, a2 = fe.condition_image(window, "aug", "k1"), fe.condition_image(window, "aug", "k1")
    np.testing.assert_array_equal(a1, a2)
    draws = {fe.condition_image(window, "aug", f"k{i}").tobytes() for i in range(6)}
    assert len(draws) > 1  # the chain varies between images
    with pytest.raises(ValueError, match="unknown condition"):
        fe.condition_image(window, "webp")


def test_fixed_feature_sets_are_finite():
    region = photo_like(np.random.default_rng(2), 96, 120)
    for name in ("phase", "imgstats", "spectrum"):
        v = fe.FEATURE_SETS[name][1](region, None)
        assert v.ndim == 1 and np.isfinite(v).all(), name
        np.testing.assert_array_equal(v, fe.FEATURE_SETS[name][1](region.copy(), None))


def test_phase_features_see_nearest_upsampling():
    rng = np.random.default_rng(3)
    photo = photo_like(rng, 128, 128)
    up = np.repeat(np.repeat(photo[::2, ::2], 2, axis=0), 2, axis=1)
    names_p2 = slice(0, 2)  # horizontal differences at even / odd columns
    p, u = fe.phase_vec(photo, None)[names_p2], fe.phase_vec(up, None)[names_p2]
    assert abs(p[0] - p[1]) < 0.2 and u[0] - u[1] < -2  # within-cell differences vanish after nearest up-sampling


# --------------------------------------------------------------------------- the aerecon branch


def test_aerecon_tiny_scores_in_unit_interval_and_repeats():
    br = create_branch("aerecon", preset="tiny", crop_size=32)
    rng = np.random.default_rng(4)
    ims = [Image.fromarray(photo_like(rng, h, w)) for h, w in ((80, 96), (40, 40), (300, 200))]
    s1, s2 = br.score(ims), create_branch("aerecon", preset="tiny", crop_size=32).score(ims)
    assert all(0 <= s <= 1 for s in s1) and s1 == s2
    f = br.features([br.preprocess(im) for im in ims])
    names = br.feature_names()
    assert f.shape == (3, len(names)) and np.isfinite(f).all()
    assert names[:4] == ["s1_l2", "s1_hp", "s1_feat", "s1_tex"] and "s4_z_lstd3" in names and names[-1] == "c2_z_lstd3"


def _head_folder(tmp_path: Path) -> Path:
    d = tmp_path / "head"
    d.mkdir()
    (d / "branch.json").write_text(json.dumps({"branch": "aerecon", "architecture": {}}))
    return d


def test_aerecon_needs_weights_or_preset(tmp_path):
    with pytest.raises(ConfigError, match="needs decoder_path"):  # one own file: no built-in fallback
        create_branch("aerecon", encoder_path=str(tmp_path / "no.pth"))
    with pytest.raises(ConfigError, match="needs encoder_path and decoder_path"):  # a head of one's own
        create_branch("aerecon", checkpoint=str(_head_folder(tmp_path)))
    with pytest.raises(ConfigError, match="is not a file"):
        create_branch("aerecon", encoder_path=str(tmp_path / "no.pth"), decoder_path=str(tmp_path / "no.pth"))


def _write_tiny_weights(folder: Path) -> tuple[Path, Path]:
    from aligncore.safeio import save_state_dict
    from aligncore_plugins.tiny_ae_model import random_tiny_autoencoder

    m = random_tiny_autoencoder(latent_channels=4, width=16, levels=3, gn_mid=True, seed=0)
    enc, dec = folder / "enc.safetensors", folder / "dec.safetensors"
    save_state_dict(m.encoder.state_dict(), enc)
    save_state_dict(m.decoder.state_dict(), dec)
    return enc, dec


def test_aerecon_loads_weight_files_and_fingerprints_their_bytes_not_paths(tmp_path):
    import shutil

    enc, dec = _write_tiny_weights(tmp_path)
    (tmp_path / "copy").mkdir()
    enc2, dec2 = Path(shutil.copy(enc, tmp_path / "copy" / "e.safetensors")), Path(shutil.copy(dec, tmp_path / "copy" / "d.safetensors"))
    a = create_branch("aerecon", encoder_path=str(enc), decoder_path=str(dec), crop_size=32)
    b = create_branch("aerecon", encoder_path=str(enc2), decoder_path=str(dec2), crop_size=32)
    tiny = create_branch("aerecon", preset="tiny", crop_size=32)
    assert a.fingerprint() == b.fingerprint()
    im = Image.fromarray(photo_like(np.random.default_rng(5), 64, 64))
    assert a.score([im]) == tiny.score([im])  # the files hold the tiny preset's weights
    other = create_branch("aerecon", encoder_path=str(enc), decoder_path=str(dec), crop_size=32, scales=[1])
    assert other.fingerprint() != a.fingerprint()


def test_aerecon_head_checkpoint(tmp_path):
    from aligncore_plugins.aerecon import save_head

    br = create_branch("aerecon", preset="tiny", crop_size=32, scales=[1, 2])
    rng = np.random.default_rng(6)
    ims = [Image.fromarray(photo_like(rng, 64, 80)) for _ in range(3)]
    br.ensure_loaded()
    x = br.features([br.preprocess(im) for im in ims]).astype(np.float64)
    n = x.shape[1]
    mean, scale = x.mean(0), x.std(0) + 1.0
    coef, intercept = rng.normal(0, 0.3, n), np.array([0.2])
    save_head(br, tmp_path / "head", mean, scale, coef, intercept, info={"trained_on": "toy"})
    fitted = create_branch("aerecon", preset="tiny", checkpoint=str(tmp_path / "head"))
    assert fitted.config.crop_size == 32  # adopted from the checkpoint
    z = ((x - mean.astype(np.float32)) / scale.astype(np.float32)) @ coef.astype(np.float32) + 0.2
    np.testing.assert_allclose(fitted.score(ims), 1 / (1 + np.exp(-z)), rtol=1e-4)
    assert fitted.fingerprint() != br.fingerprint()
    with pytest.raises(ConfigError, match="conflict with checkpoint"):
        create_branch("aerecon", preset="tiny", checkpoint=str(tmp_path / "head"), crop_size=64)


def test_aerecon_refuses_a_tiny_image():
    br = create_branch("aerecon", preset="tiny", crop_size=32)
    with pytest.raises(AlignCoreError, match="too small"):
        br.preprocess(Image.new("RGB", (10, 40)))
    assert create_branch("aerecon", preset="tiny", canonical_size=None).preprocess(Image.new("RGB", (40, 40)))[1] is None


def test_benchmark_features_are_the_branch_features():
    """The protocol measures exactly what the branch computes on an unprocessed image."""
    br = create_branch("aerecon", preset="tiny", crop_size=fe.AE_CROP, scales=list(fe.AE_SCALES))
    br.ensure_loaded()
    arr = photo_like(np.random.default_rng(7), 700, 610)

    class Ctx:
        def autoencoder(self):
            return br.model

    region = fe.condition_image(fe.centre_window(arr, fe.WINDOW), "asis")
    thumb = fe.thumbnail(arr, "asis")
    got_region, got_view = br.preprocess(Image.fromarray(arr))
    np.testing.assert_array_equal(got_region, region)
    np.testing.assert_array_equal(got_view, thumb)
    want = np.concatenate([fe.ae_vec(region, Ctx()), fe.thumb_enc_vec(thumb, Ctx())])
    np.testing.assert_allclose(br.features([(got_region, got_view)])[0], want, rtol=1e-6)


def test_aerecon_with_real_taef2_prefers_reconstructions(shared_weights, shared_data):
    """AEROBLADE's premise with the real weights: an image that already went through the decoder
    reconstructs better than the photograph it came from."""
    import torch

    br = create_branch("aerecon", encoder_path=str(shared_weights / "taef2_encoder.pth"),
                       decoder_path=str(shared_weights / "taef2_decoder.pth"), device="cpu")
    br.ensure_loaded()
    photos = sorted((shared_data / "real").rglob("*.png"))[:3]
    assert photos
    for p in photos:
        region, view = br.preprocess(Image.open(p).convert("RGB"))
        x = torch.from_numpy(region).permute(2, 0, 1)[None].float() / 255
        with torch.inference_mode():
            rec = (br.model.reconstruct(x.contiguous(memory_format=torch.channels_last))[0].permute(1, 2, 0) * 255)
        rec = rec.round().clamp(0, 255).to(torch.uint8).numpy()
        real_score, rec_score = br.score_batch([(region, None), (rec, None)])
        assert rec_score > real_score, p.name


# --------------------------------------------------------------------------- the benchmark's fitting helpers


def test_inner_folds_keep_groups_whole_and_both_classes(toy_items):
    import generalization as gen

    cell = lf.build_cells(toy_items, gen_only=["muse"], real_only=["coco"])[0]
    folds = gen.inner_folds(toy_items, cell.train, k=3)
    assert sorted(i for f in folds for i in f) == sorted(cell.train)
    for f in folds:
        assert {toy_items[i].label for i in f} == {0, 1}
    owner = {}
    for k, f in enumerate(folds):
        for i in f:
            key = toy_items[i].family or toy_items[i].real_group
            assert owner.setdefault(key, k) == k, f"{key} split across inner folds"


def test_summary_is_mean_over_generator_folds_of_mean_over_real_folds():
    import generalization as gen

    def m(a):
        return {"auc": a, "ap": a, "tpr5": a}

    cells = [{"gen_fold": g, "real_fold": r, **{c: m(v) for c in fe.CONDITIONS}}
             for g, r, v in (("a", "x", 1.0), ("a", "y", 0.5), ("b", "x", 0.6), ("b", "y", 0.6))]
    s = gen.summarise(cells)["asis"]
    assert s["by_gen_fold"]["a"]["auc"] == pytest.approx(0.75)
    assert s["mean"]["auc"] == pytest.approx(0.675)
    assert s["by_real_fold"]["x"]["auc"] == pytest.approx(0.8)
    assert s["worst_fold"] == {"fold": "b", "auc": pytest.approx(0.6)}


def test_family_balanced_weights(toy_items, tmp_path):
    import generalization as gen

    class Store:
        def table(self, fset, source, cond):
            return {it.sha256: np.zeros(3, np.float32) for it in toy_items}

    data = gen.Data(toy_items, Store())
    ex = gen.Expert("t", fsets=("phase",), balance=True, train_conditions=("asis",))
    idx = [i for i, it in enumerate(toy_items) if it.family in ("flux", "muse") or not it.label]
    _, y, w = gen.train_rows(ex, data, idx)
    fam = [toy_items[i].family for i in idx]
    flux_w = sum(wi for wi, f in zip(w, fam) if f == "flux")
    muse_w = sum(wi for wi, f in zip(w, fam) if f == "muse")
    assert flux_w == pytest.approx(muse_w)  # 13 flux and 10 muse images weigh the same in total
    assert sum(wi for wi, yi in zip(w, y) if yi) == pytest.approx(int(y.sum()))
