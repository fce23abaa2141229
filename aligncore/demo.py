"""``alignctl demo``: the whole pipeline, offline, in a few minutes on a CPU.

The demo is a list of steps over a :class:`DemoPlan`. It knows no component by name: each
plugin says what it contributes through a ``demo_options`` class attribute on its branch or
builder class (validated as :class:`DemoOptions`): a role (``pixel``, ``semantic`` or
``fallback``), the options to build or load it with for the demo (e.g. a tiny preset), its
training options and, optionally, the weight files that replace the random preset when the
demo is given a weights folder. For each role the demo takes the first registered builder and
branch that claim it (a :class:`DemoPlan` field can name another); whatever is missing is
replaced by a stand-in that is said out loud (a resampling stand-in for decoder
reconstructions, the model-free fallback branch), so the demo runs with the core alone and
grows as plugins are installed. Its models are tiny and trained for seconds: its numbers
demonstrate the plumbing, not detection quality.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .supervision import write_manifest

DISCLAIMER = (
    "DEMONSTRATION ONLY: every model here is tiny (random-initialised 'tiny' presets or no model at all) and "
    "trained for seconds on a few dozen crops of bundled photos. Read the numbers as a check that the pipeline "
    "runs end to end, not as the detection accuracy of aligncore or of the paper's method."
)

#: colour photos bundled with scikit-image (no download); greyscale ones are used as RGB too
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "cat", "camera", "coins", "horse", "moon", "brick", "grass", "gravel")

#: the roles a component can play in the demo, in the order the demo trains them
TRAINED_ROLES = ("pixel", "semantic")


class DemoOptions(BaseModel):
    """What a branch or builder class contributes to the demo (its ``demo_options`` class attribute)."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["pixel", "semantic", "fallback"] = Field(
        ..., description="pixel: a builder that turns real photos into (photo, reconstruction) pairs, or a branch "
                         "trained on such a set; semantic: a builder that takes a folder with real/ and "
                         "fake/<generator>/ images, or a branch trained on its set; fallback: a model-free branch "
                         "scored when no trainable branch is installed.")
    options: dict[str, Any] = Field(default_factory=dict, description="Config to build or load it with, e.g. a tiny preset.")
    train: dict[str, Any] = Field(default_factory=dict, description="Training options (branches).")
    weights: dict[str, str] = Field(
        default_factory=dict, description="Option -> file name in the demo's weights folder; when every file is there "
                                          "they are set and the random-weight preset is dropped.")


@dataclass
class Part:
    """One component the demo uses: its registered name and what it contributes."""

    name: str
    demo: DemoOptions

    def options(self, weights: str | None) -> tuple[dict[str, Any], str]:
        """Build/load options with the weights folder applied, and a note saying which weights it has."""
        opts = dict(self.demo.options)
        if not self.demo.weights:
            return opts, ""
        files = {k: Path(weights) / f for k, f in self.demo.weights.items()} if weights else {}
        if files and all(p.exists() for p in files.values()):
            opts.pop("preset", None)
            opts.update({k: str(p) for k, p in files.items()})
            return opts, f"weights from {weights}"
        wanted = ", ".join(self.demo.weights.values())
        return opts, f"RANDOM weights (give --weights DIR holding {wanted}, or set ALIGNCORE_SHARED, for real ones)"


def demo_parts(kind: str) -> dict[str, list[Part]]:
    """Role → the registered components of ``kind`` that claim it, in registration order."""
    from .component import format_validation_error
    from .errors import ConfigError
    from .registry import get_registry

    out: dict[str, list[Part]] = {}
    for name, reg in get_registry().components[kind].items():
        raw = getattr(reg.cls, "demo_options", None)
        if raw is None:
            continue
        try:
            demo = DemoOptions(**raw)
        except (ValidationError, TypeError) as err:
            what = f"the demo_options of {kind} {name!r} (plugin {reg.plugin!r})"
            raise ConfigError(format_validation_error(what, err) if isinstance(err, ValidationError) else
                              f"{what} must be a mapping: {err}") from None
        out.setdefault(demo.role, []).append(Part(name, demo))
    return out


def _pick(kind: str, role: str, chosen: str | None) -> Part | None:
    """The plan's choice (any registered name), else the first component claiming ``role``."""
    from .registry import get_registry

    parts = demo_parts(kind).get(role, [])
    if chosen is None:
        return parts[0] if parts else None
    get_registry().get(kind, chosen)  # an unknown name fails here, with close matches
    own = [p for p in parts if p.name == chosen]
    return own[0] if own else Part(chosen, DemoOptions(role=role))


@dataclass
class DemoPlan:
    """What the demo does. Component names left None are picked by role from what is registered."""

    pixel_builder: str | None = None
    pixel_branch: str | None = None
    semantic_builder: str | None = None
    semantic_branch: str | None = None
    fallback_branch: str | None = None
    fusion: str = "or"
    fusions: tuple[str, ...] = ("or", "and", "max", "weighted", "learned")
    n_images: int = 60  # crops of bundled photos (real images)
    crop: int = 96
    device: str = "cpu"
    weights: str | None = None  # folder with real weights; default $ALIGNCORE_SHARED/weights when that is set
    seed: int = 0

    def builder(self, role: str) -> Part | None:
        return _pick("builder", role, getattr(self, f"{role}_builder"))

    def branch(self, role: str) -> Part | None:
        return _pick("branch", role, getattr(self, f"{role}_branch"))

    def weights_folder(self) -> str | None:
        if self.weights is None and os.environ.get("ALIGNCORE_SHARED"):
            return str(Path(os.environ["ALIGNCORE_SHARED"]) / "weights")
        return self.weights


@dataclass
class DemoState:
    out: Path
    plan: DemoPlan
    echo: Callable[[str], None]
    photos_train: Path | None = None
    photos_eval: Path | None = None
    sets: dict[str, Path] = field(default_factory=dict)  # role → train manifest
    eval_sets: dict[str, Path] = field(default_factory=dict)
    branches: dict[str, dict[str, Any]] = field(default_factory=dict)  # scored branch → its options (+ checkpoint)
    notes: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    store: Path | None = None


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


def _build(st: DemoState, part: Part, sources: Path, out: Path) -> tuple[Path, str]:
    from .registry import create_builder

    opts, weights_note = part.options(st.plan.weights_folder())
    manifest = create_builder(part.name, opts).build([str(sources)], out, progress=False)
    return Path(manifest), f"builder {part.name}" + (f", {weights_note}" if weights_note else "")


def build_pixel_set(st: DemoState) -> None:
    part = st.plan.builder("pixel")
    for split, src in (("train", st.photos_train), ("heldout", st.photos_eval)):
        out = st.out / "sets" / f"pixel-{split}"
        if part is not None:
            manifest, how = _build(st, part, src, out)
        else:
            manifest = _standin_pixel_set(src, out)
            how = "stand-in (no pixel builder is installed): 2x resampled copies"
        (st.sets if split == "train" else st.eval_sets)["pixel"] = manifest
        st.echo(f"  pixel set ({split}): {manifest}  [{how}]")


def build_semantic_set(st: DemoState) -> None:
    part = st.plan.builder("semantic")
    if part is None:
        msg = "semantic set skipped: no semantic builder is installed"
        st.notes.append(msg)
        st.echo(f"  {msg}")
        return
    rng = np.random.default_rng(st.plan.seed + 1)
    for split, src in (("train", st.photos_train), ("heldout", st.photos_eval)):
        sources = _semantic_sources(src, st.out / "photos" / f"semantic-{split}", rng)
        manifest, how = _build(st, part, sources, st.out / "sets" / f"semantic-{split}")
        (st.sets if split == "train" else st.eval_sets)["semantic"] = manifest
        st.echo(f"  semantic set ({split}): {manifest}  [{how}; fakes are "
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


def train_branch(name: str, train_set: Path, out: Path, branch_options: dict[str, Any],
                 train_options: dict[str, Any]) -> Path:
    """Train branch ``name`` on ``train_set`` through the one training API; the checkpoint folder to score with."""
    from .train import train_branch as train

    result = train(name, str(train_set), out, branch_options=branch_options, train_options=train_options, progress=False)
    return Path(result.checkpoint)


def train_branches(st: DemoState) -> None:
    from .errors import AlignCoreError

    weights = st.plan.weights_folder()
    for role in TRAINED_ROLES:
        part = st.plan.branch(role)
        if part is None:
            st.echo(f"  no {role} branch is installed")
            continue
        if role not in st.sets:
            st.echo(f"  {role} branch {part.name!r} has no {role} set to train on; skipped")
            continue
        t0 = time.time()
        opts, weights_note = part.options(weights)
        opts["device"] = st.plan.device
        try:
            ckpt = train_branch(part.name, st.sets[role], st.out / "checkpoints" / part.name, opts, part.demo.train)
        except AlignCoreError as exc:
            st.echo(f"  {role} branch {part.name!r} could not be trained: {exc}")
            continue
        st.branches[part.name] = {**opts, "checkpoint": str(ckpt)}
        setting = ", ".join(f"{k} {v}" for k, v in part.demo.options.items()) or "default options"
        st.echo(f"  trained {part.name} ({setting}{'; ' + weights_note if weights_note else ''}) on the {role} set "
                f"in {time.time() - t0:.0f}s -> {ckpt}")
    if not st.branches:
        fallback = st.plan.branch("fallback")
        if fallback is None:
            raise AlignCoreError("the demo found no branch to score with: no trainable branch and no fallback branch "
                                 "(a branch whose demo_options has role 'fallback') is registered.")
        st.branches[fallback.name] = {**fallback.options(weights)[0], "device": st.plan.device}
        msg = (f"no trainable branch is installed: using the model-free {fallback.name!r} branch "
               "(a fixed image statistic, nothing is trained)")
        st.notes.append(msg)
        st.echo(f"  {msg}")


# ---------------------------------------------------------------------- step 5-8: score, ablate, leaderboard, report


def _merge_eval(st: DemoState) -> Path:
    """One held-out manifest over every held-out set (paths made relative to the demo folder)."""
    from .data import load_dataset

    rows = []
    for role, manifest in st.eval_sets.items():
        for r in load_dataset(manifest).records:
            rows.append({"path": str(Path(r.path).relative_to(st.out.resolve())), "label": r.label,
                         "generator": r.generator or role, "subset": r.subset or role})
    out = st.out / "heldout.csv"
    write_manifest(out, rows)
    return out


def score_heldout(st: DemoState) -> None:
    from .config import RunConfig
    from .runner import run

    manifest = _merge_eval(st)
    st.store = st.out / "store.sqlite"
    cfg = RunConfig(branches=list(st.branches), fusion=st.plan.fusion, data=str(manifest), device=st.plan.device,
                    out=str(st.out / "run"), store=str(st.store), suite="demo", dataset_name="demo-heldout",
                    branch_options=st.branches, overwrite=True)  # the demo's own folder: a re-run replaces it
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
    from .leaderboard import DEFAULT_METRIC, leaderboard, render
    from .store import ScoreStore

    with ScoreStore(st.store) as s:  # tiny models: rows of random-weight runs are shown too
        ds, rows = leaderboard(s, "demo", DEFAULT_METRIC, include_random=True)
    st.echo(render(ds, rows, "table", DEFAULT_METRIC, "demo").rstrip())


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
             echo: Callable[[str], None] = lambda m: None, weights: str | None = None) -> DemoState:
    """Run every step of :data:`STEPS` into ``out``; ``weights`` is a folder of real weights (see :class:`DemoOptions`)."""
    plan = plan or DemoPlan()
    if n_images is not None:
        plan.n_images = n_images
    if weights is not None:
        plan.weights = weights
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
