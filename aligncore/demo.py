"""``alignctl demo``: the whole pipeline, offline, in a few minutes on a CPU.

The demo is a list of steps over a :class:`DemoPlan`. Each step uses what is registered:
the plan names the preferred pixel and semantic branches and builders (``npr`` + ``tiny-ae``,
``qwen`` + ``semantic-set``); whatever is missing is replaced by a stand-in that is said out
loud (the model-free ``fake`` branch, a resampling stand-in for decoder reconstructions), so
the demo runs with the core alone and grows as plugins are installed. Its models are tiny
and trained for seconds: its numbers demonstrate the plumbing, not detection quality.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .supervision import write_manifest

DISCLAIMER = (
    "DEMONSTRATION ONLY: every model here is tiny (random-initialised 'tiny' presets or no model at all) and "
    "trained for seconds on a few dozen crops of bundled photos. Read the numbers as a check that the pipeline "
    "runs end to end, not as the detection accuracy of aligncore or of the paper's method."
)

#: colour photos bundled with scikit-image (no download); greyscale ones are used as RGB too
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "cat", "camera", "coins", "horse", "moon", "brick", "grass", "gravel")


@dataclass
class DemoPlan:
    """What the demo uses when it is registered; switch names here when new plugins land."""

    pixel_branch: str = "npr"
    pixel_builder: str = "tiny-ae"
    semantic_branch: str = "qwen"
    semantic_builder: str = "semantic-set"
    fallback_branch: str = "fake"  # model-free; used when no trainable branch is registered
    preset: str = "tiny"
    fusion: str = "or"
    fusions: tuple[str, ...] = ("or", "and", "max", "weighted", "learned")
    n_images: int = 60  # crops of bundled photos (real images)
    crop: int = 96
    builder_options: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        # a random-weight tiny autoencoder unless real TAESD weights are given (ae_weights / $ALIGNCORE_SHARED)
        "tiny-ae": {"preset": "tiny", "threads": 1},
        "semantic-set": {"size": 112, "keep_clean": False},
    })
    train_options: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "npr": {"epochs": 4, "batch_size": 8, "crop_size": 64, "lr": 2e-3, "val_fraction": 0.2, "max_minutes": 1.5},
        # a tiny random VLM needs a far higher learning rate than the paper's 1e-6 for 7B
        "qwen": {"learning_rate": 1e-2, "max_steps": 30, "per_device_train_batch_size": 4, "lora_dropout": 0.0,
                 "logging_steps": 100, "save_steps": 1000},
    })
    ae_weights: str | None = None  # folder with taef2_encoder.pth / taef2_decoder.pth (real tiny FLUX.2 autoencoder)
    seed: int = 0

    def pixel_builder_options(self) -> dict[str, Any]:
        opts = dict(self.builder_options.get(self.pixel_builder, {}))
        folder = self.ae_weights
        if folder is None and os.environ.get("ALIGNCORE_SHARED"):
            folder = str(Path(os.environ["ALIGNCORE_SHARED"]) / "weights")
        if self.pixel_builder == "tiny-ae" and folder and (Path(folder) / "taef2_decoder.pth").exists():
            opts.pop("preset", None)
            opts.update(encoder_path=str(Path(folder) / "taef2_encoder.pth"),
                        decoder_path=str(Path(folder) / "taef2_decoder.pth"))
        return opts


@dataclass
class DemoState:
    out: Path
    plan: DemoPlan
    echo: Callable[[str], None]
    photos_train: Path | None = None
    photos_eval: Path | None = None
    sets: dict[str, Path] = field(default_factory=dict)  # "pixel"/"semantic" → train manifest
    eval_sets: dict[str, Path] = field(default_factory=dict)
    branches: list[str] = field(default_factory=list)
    checkpoints: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    store: Path | None = None


def _registered(kind: str, name: str) -> bool:
    from .registry import get_registry

    return name in get_registry().components[kind]


# ---------------------------------------------------------------------- step 1: source photos


def source_photos(st: DemoState) -> None:
    """Crops of photos that ship inside scikit-image (or generated textures), split by source photo."""
    from PIL import Image

    rng = np.random.default_rng(st.plan.seed)
    arrays: list[tuple[str, np.ndarray]] = []
    try:
        import skimage.data as skd

        for name in SKIMAGE_PHOTOS:
            try:
                a = np.asarray(getattr(skd, name)())
            except Exception:  # a photo that needs a download in this scikit-image version
                continue
            if a.ndim == 2:
                a = np.stack([a] * 3, axis=-1)
            arrays.append((name, a[..., :3].astype(np.uint8)))
        origin = f"scikit-image's bundled photos ({len(arrays)})"
    except ImportError:
        arrays = [(f"texture{k}", _texture(rng, 384)) for k in range(8)]
        origin = "procedural textures (scikit-image is not installed)"
    c = st.plan.crop
    n_sources = len(arrays)
    eval_sources = {name for name, _ in arrays[::4]}  # every 4th photo is held out entirely
    per_photo = max(1, st.plan.n_images // max(1, n_sources))
    st.photos_train, st.photos_eval = st.out / "photos" / "train", st.out / "photos" / "heldout"
    for d in (st.photos_train, st.photos_eval):
        d.mkdir(parents=True, exist_ok=True)
    count = {"train": 0, "heldout": 0}
    for name, a in arrays:
        h, w = a.shape[:2]
        dest = st.photos_eval if name in eval_sources else st.photos_train
        for k in range(per_photo):
            y, x = int(rng.integers(0, max(1, h - c))), int(rng.integers(0, max(1, w - c)))
            Image.fromarray(a[y:y + c, x:x + c]).save(dest / f"{name}_{k:02d}.png")
            count["heldout" if dest == st.photos_eval else "train"] += 1
    st.echo(f"  {count['train']} training and {count['heldout']} held-out crops from {origin}; "
            f"held-out photos ({', '.join(sorted(eval_sources))}) never appear in training")


def _texture(rng, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * xx + rng.uniform(0, 6)), np.cos(5 * yy + rng.uniform(0, 6)), np.sin(4 * (xx + yy))], -1)
    img = 127 + 80 * base + rng.normal(0, 18, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------- step 2-3: supervision sets


def _standin_pixel_set(src: Path, out: Path, generator: str = "resample-standin") -> Path:
    """Real crop vs. a 2x down-and-up resampled copy (a crude stand-in for a VAE's decoder trace).

    Both are written as PNG, so the file format says nothing about the label.
    """
    from PIL import Image

    rows = []
    for sub in ("0_real", "1_fake"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.png")):
        im = Image.open(p).convert("RGB")
        w, h = im.size
        rec = im.resize((w // 2, h // 2), Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BICUBIC)
        im.save(out / "0_real" / p.name)
        rec.save(out / "1_fake" / p.name)
        rows += [{"path": f"0_real/{p.name}", "label": 0, "generator": "photos", "subset": "pixel"},
                 {"path": f"1_fake/{p.name}", "label": 1, "generator": generator, "subset": "pixel"}]
    manifest = out / "manifest.csv"
    write_manifest(manifest, rows)
    return manifest


def build_pixel_set(st: DemoState) -> None:
    p = st.plan
    for part, src in (("train", st.photos_train), ("heldout", st.photos_eval)):
        out = st.out / "sets" / f"pixel-{part}"
        if _registered("builder", p.pixel_builder):
            from .registry import create_builder

            opts = p.pixel_builder_options()
            manifest = create_builder(p.pixel_builder, opts).build([str(src)], out, progress=False)
            how = f"builder {p.pixel_builder}" + (
                ", RANDOM-weight tiny autoencoder (pass --ae-weights or set ALIGNCORE_SHARED for the real taef2)"
                if opts.get("preset") == "tiny" else f", weights {opts.get('decoder_path', '')}")
        else:
            manifest = _standin_pixel_set(src, out)
            how = f"stand-in (builder {p.pixel_builder!r} not installed): 2x resampled copies"
        (st.sets if part == "train" else st.eval_sets)["pixel"] = Path(manifest)
        st.echo(f"  pixel set ({part}): {manifest}  [{how}]")


def build_semantic_set(st: DemoState) -> None:
    p = st.plan
    if not _registered("builder", p.semantic_builder):
        msg = f"semantic set skipped: builder {p.semantic_builder!r} is not installed"
        st.notes.append(msg)
        st.echo(f"  {msg}")
        return
    from .registry import create_builder

    rng = np.random.default_rng(p.seed + 1)
    for part, src in (("train", st.photos_train), ("heldout", st.photos_eval)):
        sources = _semantic_sources(src, st.out / "photos" / f"semantic-{part}", rng)
        out = st.out / "sets" / f"semantic-{part}"
        manifest = create_builder(p.semantic_builder, p.builder_options.get(p.semantic_builder, {})).build(
            [str(sources)], out, progress=False)
        (st.sets if part == "train" else st.eval_sets)["semantic"] = Path(manifest)
        st.echo(f"  semantic set ({part}): {manifest}  [builder {p.semantic_builder}; fakes are "
                "'impossible' collages of the photos (stand-ins for surreal generated images)]")


def _semantic_sources(src: Path, out: Path, rng) -> Path:
    """real/ = the photo crops; fake/collage-standin/ = the same crops made physically impossible.

    Each fake flips its lower half upside down and swaps red and blue in its upper half: wrong
    content, not a pixel trace (the semantic builder's degradation chain then erases pixel cues).
    """
    from PIL import Image

    real, fake = out / "real" / "photos", out / "fake" / "collage-standin"
    real.mkdir(parents=True, exist_ok=True)
    fake.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.png")):
        a = np.asarray(Image.open(p).convert("RGB"))
        Image.fromarray(a).save(real / p.name)
        h = a.shape[0] // 2
        b = a.copy()
        b[h:] = a[h:][::-1]
        b[:h] = a[:h][..., ::-1]
        if rng.random() < 0.5:
            b = b[:, ::-1]
        Image.fromarray(np.ascontiguousarray(b)).save(fake / p.name)
    return out


# ---------------------------------------------------------------------- step 4: training


def train_branches(st: DemoState) -> None:
    from .errors import AlignCoreError
    from .registry import create_branch

    p = st.plan
    for role, name in (("pixel", p.pixel_branch), ("semantic", p.semantic_branch)):
        if not _registered("branch", name):
            st.echo(f"  {role} branch {name!r} is not installed")
            continue
        if role not in st.sets:
            st.echo(f"  {role} branch {name!r} has no {role} set to train on; skipped")
            continue
        t0 = time.time()
        br = create_branch(name, None, preset=p.preset, device="cpu")
        try:
            ckpt = br.train(str(st.sets[role]), st.out / "checkpoints" / name, dict(p.train_options.get(name, {})))
        except AlignCoreError as exc:
            st.echo(f"  {role} branch {name!r} could not be trained: {exc}")
            continue
        st.branches.append(name)
        st.checkpoints[name] = str(ckpt)
        st.echo(f"  trained {name} (preset {p.preset}) on the {role} set in {time.time() - t0:.0f}s -> {ckpt}")
    if not st.branches:
        st.branches.append(p.fallback_branch)
        msg = (f"no trainable branch is installed: using the model-free {p.fallback_branch!r} branch "
               "(a fixed image statistic, nothing is trained)")
        st.notes.append(msg)
        st.echo(f"  {msg}")


# ---------------------------------------------------------------------- step 5-8: score, ablate, leaderboard, report


def _merge_eval(st: DemoState) -> Path:
    """One held-out manifest over every held-out set (paths made relative to the demo folder)."""
    rows = []
    for role, manifest in st.eval_sets.items():
        with open(manifest, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                full = (manifest.parent / r["path"]).resolve()
                rows.append({"path": str(full.relative_to(st.out.resolve())), "label": r["label"],
                             "generator": r.get("generator") or role, "subset": r.get("subset") or role})
    out = st.out / "heldout.csv"
    write_manifest(out, rows)
    return out


def score_heldout(st: DemoState) -> None:
    from .config import RunConfig
    from .runner import run

    manifest = _merge_eval(st)
    st.store = st.out / "store.sqlite"
    cfg = RunConfig(branches=st.branches, fusion=st.plan.fusion, data=str(manifest), preset=st.plan.preset,
                    device="cpu", out=str(st.out / "run"), store=str(st.store), suite="demo",
                    dataset_name="demo-heldout",
                    branch_options={b: {"checkpoint": c} for b, c in st.checkpoints.items()})
    res = run(cfg, progress=False)
    st.run_dir = res.out_dir
    o = res.metrics["overall"]
    st.echo(f"  run {res.run_id}: {o['n']} held-out images ({o['n_real']} real, {o['n_fake']} fake), "
            f"branches {', '.join(st.branches)}, fusion {st.plan.fusion}: acc {o['accuracy']}, AUC {o['auc']}")


def ablate_fusions(st: DemoState) -> None:
    from .ablation import ablate, to_text

    fusions = st.plan.fusions
    res = ablate([st.run_dir], fusions, target_fpr=0.05, cal_fraction=0.4)
    st.echo(to_text([r for r in res.rows if r["scope"] == "dataset"]))
    st.echo(f"  ablation table: {res.files['md']}")


def print_leaderboard(st: DemoState) -> None:
    from .leaderboard import leaderboard, render
    from .store import ScoreStore

    with ScoreStore(st.store) as s:
        ds, rows = leaderboard(s, "demo", "accuracy")
    st.echo(render(ds, rows, "table", "accuracy", "demo").rstrip())


def write_html_report(st: DemoState) -> None:
    from .report import write_report

    note = DISCLAIMER + (" " + " ".join(n[0].upper() + n[1:] + "." for n in st.notes) if st.notes else "")
    path = write_report(st.run_dir, st.out / "report.html", st.plan.fusions, target_fpr=0.05, note=note)
    st.echo(f"  report: {path}")


STEPS: list[tuple[str, Callable[[DemoState], None]]] = [
    ("Collect source photos (no download)", source_photos),
    ("Build a small pixel set", build_pixel_set),
    ("Build a small semantic set", build_semantic_set),
    ("Train the tiny branches briefly", train_branches),
    ("Score the held-out split", score_heldout),
    ("Ablate fusion rules (calibrated to 5% FPR on a calibration split)", ablate_fusions),
    ("Leaderboard (suite 'demo')", print_leaderboard),
    ("Write the HTML report", write_html_report),
]


def run_demo(out: str | Path = "demo-out", n_images: int | None = None, plan: DemoPlan | None = None,
             echo: Callable[[str], None] = lambda m: None, ae_weights: str | None = None) -> DemoState:
    plan = plan or DemoPlan()
    if n_images is not None:
        plan.n_images = n_images
    if ae_weights is not None:
        plan.ae_weights = ae_weights
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    st = DemoState(out.resolve(), plan, echo)
    echo(DISCLAIMER)
    t0 = time.time()
    for i, (title, step) in enumerate(STEPS, start=1):
        echo(f"[{i}/{len(STEPS)}] {title}")
        step(st)
    echo(f"done in {time.time() - t0:.0f}s. {DISCLAIMER.split(':')[0]}: tiny models, numbers are not results.")
    return st
