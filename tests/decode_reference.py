"""Images for the scoring-path regression test, and the frozen scores of the earlier path.

``tests/fixtures/scores_before_one_decode.json`` holds the ``fake`` branch's scores (full
precision, read from the score store) that the per-branch scoring path gave on these images
before the runner decoded each image once for all branches. The images are PNG/GIF only, so
their decoded pixels do not depend on the JPEG library; the modes and the EXIF orientation
exercise every conversion the loader does. Regenerate only on purpose:
``python tests/decode_reference.py`` (it overwrites the fixture with the current path's scores).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "fixtures" / "scores_before_one_decode.json"
CONDITIONS = (None, "blur:1.0+crop:0.8")
#: the pixel branches' scores before their windows went through the model in memory-bounded chunks
PIXEL_FIXTURE = Path(__file__).parent / "fixtures" / "scores_before_chunking.json"
#: (name, branch, options): random-weight models; "npr-full" is npr's default architecture (4 of its 16 windows)
PIXEL_CONFIGS = (
    ("npr-tiny", "npr", {"preset": "tiny"}),
    ("npr-full", "npr", {"preset": "tiny", "width": 16, "crop_size": 128, "inference_crops": 4}),
    ("dinov2-tiny", "dinov2", {"preset": "tiny", "inference_crops": 4}),
    ("spectrum-tiny", "spectrum", {"preset": "tiny"}),
)


def windows_when_frozen(h: int, w: int, size: int, n: int, align: int = 8) -> list[tuple[int, int]]:
    """The window positions :data:`PIXEL_FIXTURE` was frozen with (the grid of the time, its positions repeated
    in order to fill ``n``). Later, scoring chose ``n`` windows that count every distinct window equally
    (``aligncore.pixel.window_positions``): an image whose windows changed has a different score on purpose,
    so the frozen scores hold only for the images whose windows (as a multiset) did not change."""
    from aligncore.data.crops import _span, center_position

    if n <= 1:
        return [center_position(h, w, size, align)] * max(1, n)
    th, tw = _span(h, size, align), _span(w, size, align)
    step = max(1, align)
    rows = min(n, max(1, round(math.sqrt(n * h / max(1, w)))))
    cols = max(1, n // rows)
    rows, cols = min(rows, th // step + 1), min(cols, tw // step + 1)

    def spread(span: int, k: int) -> list[int]:
        if k == 1:
            off = span // 2
            return [off - off % step]
        return [v - v % step for v in (round(i * span / (k - 1)) for i in range(k))]

    pos = [(t, l) for t in spread(th, rows) for l in spread(tw, cols)]
    return [pos[i % len(pos)] for i in range(n)]


def unchunked_scores(root: Path) -> dict[str, dict[str, float]]:
    """{config name: {relative path: score}} of the neural :data:`PIXEL_CONFIGS` the plain way, with today's
    windows: each image decoded on its own (``load_image``), its windows cut with ``crop`` at the branch's
    positions, every window of the image in one forward pass of the branch's model, mean logit, sigmoid."""
    import torch

    from aligncore.data import load_dataset, load_image
    from aligncore.data.crops import crop
    from aligncore.registry import create_branch

    out: dict[str, dict[str, float]] = {}
    records = load_dataset(root).records
    for name, branch, opts in PIXEL_CONFIGS:
        br = create_branch(branch, device="cpu", **opts).ensure_loaded()
        if not hasattr(br, "logits"):
            continue  # no model (spectrum): only the frozen scores apply
        br.model.eval()
        c, scores = br.config, {}
        for r in records:
            arr = np.asarray(load_image(r.path))
            wins = np.stack([crop(arr, t, l, c.crop_size, c.pad_mode) for t, l in br.window_positions(*arr.shape[:2])])
            with torch.inference_mode():
                z = br.logits(torch.from_numpy(wins).permute(0, 3, 1, 2).contiguous()).float().mean()
            scores[Path(r.path).relative_to(root).as_posix()] = 1.0 / (1.0 + math.exp(-float(z)))
        out[name] = scores
    return out


def make_reference_images(root: Path) -> Path:
    """A 0_real/1_fake folder of 10 small images in several modes (deterministic pixels)."""
    from PIL import Image

    rng = np.random.default_rng(1234)
    real, fake = root / "0_real", root / "1_fake"
    real.mkdir(parents=True, exist_ok=True)
    fake.mkdir(parents=True, exist_ok=True)

    def rgb(h, w, noise):
        ramp = np.linspace(0, 80, w)[None, :, None]
        return np.clip(rng.uniform(0, 200, (1, 1, 3)) + ramp + rng.normal(0, noise, (h, w, 3)), 0, 255).astype(np.uint8)

    for k in range(3):
        Image.fromarray(rgb(40 + 3 * k, 52, 30)).save(real / f"rgb{k}.png")
        Image.fromarray(rgb(44, 50 + 5 * k, 3)).save(fake / f"rgb{k}.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: the loader must transpose
    Image.fromarray(rgb(30, 60, 20)).save(real / "rotated.png", exif=exif)
    Image.fromarray((np.arange(48 * 40, dtype=np.uint16).reshape(48, 40) * 27).astype(np.uint16)).save(real / "gray16.png")
    rgba = np.concatenate([rgb(36, 36, 4), rng.integers(0, 256, (36, 36, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(fake / "rgba.png")
    pal = Image.fromarray(rng.integers(0, 8, (40, 40), dtype=np.uint8), "P")
    pal.putpalette([int(v) for v in rng.integers(0, 256, 768)])
    pal.save(fake / "palette.png", transparency=0)
    frames = [Image.fromarray(rgb(32, 32, 10)) for _ in range(2)]
    frames[0].save(fake / "anim.gif", save_all=True, append_images=frames[1:])
    return root


def current_scores(root: Path, work: Path) -> dict[str, dict[str, float]]:
    """{condition: {relative path: score}} of the ``fake`` branch through today's runner (read from the store)."""
    from aligncore.config import make_run_config
    from aligncore.data import load_dataset
    from aligncore.hashing import sha256_file
    from aligncore.perturb import perturbed_fingerprint
    from aligncore.registry import create_branch
    from aligncore.runner import run
    from aligncore.store import ScoreStore

    out: dict[str, dict[str, float]] = {}
    records = load_dataset(root).records
    for cond in CONDITIONS:
        store = work / f"store-{cond or 'clean'}.sqlite"
        run(make_run_config(branches="fake", data=str(root), out=str(work / f"run-{cond or 'clean'}"), store=str(store),
                            perturb=cond, batch_size=4), progress=False)
        fp = perturbed_fingerprint(create_branch("fake").fingerprint(), cond)
        with ScoreStore(store) as st:
            got = st.get_scores(fp, [sha256_file(r.path) for r in records])
        out[cond or "clean"] = {Path(r.path).relative_to(root).as_posix(): got[sha256_file(r.path)][0] for r in records}
    return out


def pixel_scores(root: Path, work: Path, **branch_options) -> dict[str, dict[str, float]]:
    """{config name: {relative path: score}} of :data:`PIXEL_CONFIGS` through today's runner (read from the
    predictions, which hold the stored values); ``branch_options`` are added to every configuration."""
    import csv

    from aligncore.config import make_run_config
    from aligncore.runner import run

    out: dict[str, dict[str, float]] = {}
    for name, branch, opts in PIXEL_CONFIGS:
        res = run(make_run_config(branches=branch, data=str(root), out=str(work / f"run-{name}"), device="cpu",
                                  store=str(work / f"store-{name}.sqlite"), batch_size=4,
                                  branch_options={branch: {**opts, **branch_options}}), progress=False)
        with open(res.out_dir / "predictions.csv", newline="") as f:
            out[name] = {Path(r["path"]).relative_to(root).as_posix(): float(r[f"score_{branch}"]) for r in csv.DictReader(f)}
    return out


if __name__ == "__main__":
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        images = make_reference_images(Path(tmp) / "images")
        if "--pixel" in sys.argv:  # the pixel branches' fixture
            PIXEL_FIXTURE.write_text(json.dumps(pixel_scores(images, Path(tmp)), indent=1, sort_keys=True) + "\n")
            print(f"wrote {PIXEL_FIXTURE}")
        else:
            FIXTURE.write_text(json.dumps(current_scores(images, Path(tmp)), indent=1, sort_keys=True) + "\n")
            print(f"wrote {FIXTURE}")
