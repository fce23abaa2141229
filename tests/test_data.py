"""Dataset layouts and robust image loading."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from aligncore.data import ImageLoadError, load_dataset, load_image
from aligncore.errors import DataError


def _png(path, arr, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


def test_0_real_1_fake_nested_per_generator(tmp_path):
    for gen, sub in (("progan", "car"), ("progan", "cat"), ("sdv1", "")):
        for lab in ("0_real", "1_fake"):
            d = tmp_path / gen / sub / lab if sub else tmp_path / gen / lab
            d.mkdir(parents=True)
            _png(d / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "README.txt").write_text("not an image")
    ds = load_dataset(tmp_path)
    assert ds.layout == "0_real/1_fake" and len(ds) == 6
    got = {(r.generator, r.subset, r.label) for r in ds.records}
    assert ("progan", "car", 0) in got and ("progan", "cat", 1) in got and ("sdv1", None, 1) in got


def test_real_fake_folders_give_generator(tmp_path):
    (tmp_path / "real" / "coco").mkdir(parents=True)
    (tmp_path / "fake" / "midjourney").mkdir(parents=True)
    _png(tmp_path / "real" / "coco" / "x.png", np.zeros((4, 4, 3), np.uint8))
    _png(tmp_path / "fake" / "midjourney" / "y.png", np.zeros((4, 4, 3), np.uint8))
    ds = load_dataset(tmp_path)
    by = {r.label: r for r in ds.records}
    assert by[1].generator == "midjourney" and by[0].generator == "coco" and ds.layout == "real/fake"


def test_csv_and_jsonl_manifests(tmp_path):
    _png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    _png(tmp_path / "b.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "m.csv").write_text("file,label,generator,subset\na.png,real,,\nb.png,1,sd,test\n")
    recs = load_dataset(tmp_path / "m.csv").records
    assert [(r.label, r.generator, r.subset) for r in recs] == [(0, None, None), (1, "sd", "test")]
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "a.png", "label": 0}) + "\n" + json.dumps({"path": "b.png", "label": "fake"}) + "\n")
    assert [r.label for r in load_dataset(tmp_path / "m.jsonl").records] == [0, 1]


def test_manifest_columns_beyond_the_core_are_kept(tmp_path):
    _png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    _png(tmp_path / "b.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "m.csv").write_text("path,label,pair_id,rationale\na.png,0,p1,looks real\nb.png,1,p1,\n")
    assert [r.extra for r in load_dataset(tmp_path / "m.csv").records] == [
        {"pair_id": "p1", "rationale": "looks real"}, {"pair_id": "p1", "rationale": ""}]
    (tmp_path / "m.jsonl").write_text(json.dumps({"file": "a.png", "label": 0, "psnr": 31.5, "tags": ["x"], "note": None}) + "\n")
    assert load_dataset(tmp_path / "m.jsonl").records[0].extra == {"psnr": "31.5", "tags": '["x"]', "note": ""}
    assert load_dataset(tmp_path / "a.png").records[0].extra == {}


def test_a_folder_with_a_manifest_is_read_through_it(tmp_path):
    """A builder's output folder: only what its manifest lists is in the set (not side copies)."""
    for sub in ("0_real", "1_fake", "clean/0_real"):
        (tmp_path / sub).mkdir(parents=True)
        _png(tmp_path / sub / "x.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "manifest.csv").write_text("path,label,generator,subset,clean_path\n0_real/x.png,0,,,clean/0_real/x.png\n"
                                           "1_fake/x.png,1,gen,,\n")
    ds = load_dataset(tmp_path)
    assert ds.layout == "builder-manifest" and ds.root == str(tmp_path.resolve()) and ds.name == tmp_path.name
    assert [(r.path, r.label, r.extra["clean_path"]) for r in ds.records] == [
        (str(tmp_path.resolve() / "0_real/x.png"), 0, "clean/0_real/x.png"), (str(tmp_path.resolve() / "1_fake/x.png"), 1, "")]


@pytest.mark.parametrize(
    "content, needle",
    [
        ("path,label\na.png,maybe\n", "line 2: label 'maybe'"),
        ("path,label\na.png,0\na.png,1\n", "line 3: duplicate path"),
        ("path,label\n../escape.png,0\n", "outside the manifest's folder"),
        ("name,label\na.png,0\n", "no 'path'"),
    ],
)
def test_bad_manifest_rows_name_the_line(tmp_path, content, needle):
    _png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(tmp_path / "m.csv")


def test_modes_are_converted_to_rgb(tmp_path):
    rng = np.random.default_rng(0)
    # 16-bit grayscale is scaled, not clipped
    a16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    im = load_image(tmp_path / "g16.png")
    assert im.mode == "RGB" and np.asarray(im)[..., 0].max() == round(63000 / 257)
    # CMYK JPEG
    Image.fromarray(rng.integers(0, 255, (8, 8, 4), dtype=np.uint8), "CMYK").save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg").mode == "RGB"
    # palette with transparency: transparent pixels become white
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "p.png"))[0, 0].tolist() == [255, 255, 255]
    # animated GIF gives its first frame
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(tmp_path / "a.gif"))[0, 0].tolist() == [255, 0, 0]


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (10, 4), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    img.save(tmp_path / "o.jpg", exif=exif)
    assert load_image(tmp_path / "o.jpg").size == (4, 10)


def test_bad_files_raise_with_reason(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[:300])
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, not a png")
    for name, why in (("trunc.jpg", "corrupt"), ("zero.png", "empty file"), ("text.png", "not a recognised image")):
        with pytest.raises(ImageLoadError, match=why):
            load_image(tmp_path / name)


def test_jpeg_roundtrip_is_one_thing_everywhere():
    from aligncore.data.codec import encode, jpeg_roundtrip
    from aligncore.perturb import parse_perturb

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (37, 45, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    from_array, from_image = jpeg_roundtrip(arr, 75), jpeg_roundtrip(img, 75)
    assert isinstance(from_array, np.ndarray) and from_image.mode == "RGB"
    assert np.array_equal(from_array, np.asarray(from_image))
    assert np.array_equal(np.asarray(parse_perturb("jpeg:75")(img)), from_array)  # the robustness protocol's jpeg:75
    with Image.open(io.BytesIO(encode(img, "jpeg", 75))) as im:
        from PIL import JpegImagePlugin

        assert JpegImagePlugin.get_sampling(im) == 2  # 4:2:0


def test_an_rgb_image_without_rotation_is_not_copied(tmp_path, monkeypatch):
    _png(tmp_path / "a.png", np.zeros((6, 5, 3), np.uint8))
    copies = []
    real_copy = Image.Image.copy
    monkeypatch.setattr(Image.Image, "copy", lambda self: (copies.append(1), real_copy(self))[1])
    assert load_image(tmp_path / "a.png").size == (5, 6) and not copies


def test_decompression_bomb_refused_before_decoding(tmp_path):
    Image.new("L", (5000, 5000)).save(tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(tmp_path / "big.png", max_pixels=1_000_000)
