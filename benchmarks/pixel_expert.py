"""Pixel experts on real photographs and their tiny-autoencoder reconstructions (CPU, ~30-45 min).

    nice -n 10 python benchmarks/pixel_expert.py --shared ../shared --work WORK_DIR \
        [--pixel-set DIR] [--npr-minutes 12] [--dinov2-minutes 5]

1. Pixel set: reuses ``--pixel-set`` (a ``tiny-ae`` builder output with manifest.csv) or builds one from
   SHARED/data/real with the real tiny FLUX.2 autoencoder in SHARED/weights (resumable).
2. Split by source photo (pair_id), ~70 % train / 30 % test; no photo is on both sides.
3. Trains npr (with and without format-aligned JPEG augmentation), spectrum (with and without), and
   a DINOv2-architecture ViT-S from scratch (no pretrained weights exist offline) — each resumable.
4. Reports held-out AUC / AP / balanced accuracy on reconstructions of unseen photos, the same after
   re-encoding both classes as JPEG q90, and per-generator results on SHARED/data/fake (AI images
   from generators never seen in training; their formats differ from the reals' — see the caveat).

Writes benchmarks/results/pixel_expert.md and .json. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.environ.get("ALIGNCORE_SHARED"), help="The shared folder (data/, weights/); or $ALIGNCORE_SHARED.")
    ap.add_argument("--work", required=True, help="Scratch folder for checkpoints and (if built here) the pixel set.")
    ap.add_argument("--pixel-set", help="An existing tiny-ae pixel set (folder with manifest.csv); default WORK/pixelset (built if missing).")
    ap.add_argument("--builder-option", action="append", default=[], help="KEY=VALUE for the tiny-ae builder when building here.")
    ap.add_argument("--npr-minutes", type=float, default=12.0, help="Training budget per npr model (CPU minutes).")
    ap.add_argument("--dinov2-minutes", type=float, default=5.0, help="Training budget for the from-scratch DINOv2-architecture ViT.")
    ap.add_argument("--only", help="Comma-separated subset of models to run (npr,npr-jpeg,spectrum,spectrum-jpeg,dinov2-scratch).")
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "pixel_expert.md"))
    return ap.parse_args()


# ---------------------------------------------------------------------- data


def ensure_pixel_set(args, shared: Path) -> Path:
    ps = Path(args.pixel_set) if args.pixel_set else Path(args.work) / "pixelset"
    if (ps / "manifest.csv").exists():
        log(f"reusing pixel set {ps}")
        return ps / "manifest.csv"
    from aligncore.registry import create_builder

    opts = {}
    for kv in args.builder_option:
        k, v = kv.split("=", 1)
        import yaml

        opts[k] = yaml.safe_load(v)
    opts.setdefault("encoder_path", str(shared / "weights" / "taef2_encoder.pth"))
    opts.setdefault("decoder_path", str(shared / "weights" / "taef2_decoder.pth"))
    log(f"building the tiny-ae pixel set into {ps} (resumable) with {opts}")
    builder = create_builder("tiny-ae", opts)
    return Path(builder.build([str(shared / "data" / "real")], str(ps), progress=True))


def jpeg_bytes_image(img, quality: int):
    from PIL import Image

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def score_images(branch, paths: list[str], jpeg_q: int | None = None, batch: int = 16) -> np.ndarray:
    """Score files as the runner would (the branch's own preprocessing), optionally after a JPEG re-encode."""
    import torch

    from aligncore.data import load_image

    branch.ensure_loaded()
    out: list[float] = []
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            ims = [load_image(p) for p in paths[i : i + batch]]
            if jpeg_q is not None:
                ims = [jpeg_bytes_image(im, jpeg_q) for im in ims]
            out += [float(s) for s in branch.score_batch(branch.collate([branch.preprocess(im) for im in ims]))]
    return np.array(out)


def metrics(labels, scores) -> dict:
    from aligncore.metrics import binary_metrics

    labels = np.asarray(labels, dtype=int)
    m = binary_metrics(labels, scores, np.asarray(scores) >= 0.5)
    return {k: m.get(k) for k in ("auc", "ap", "balanced_accuracy", "real_accuracy", "fake_accuracy", "n")}


# ---------------------------------------------------------------------- models


def model_specs(args) -> dict[str, dict]:
    npr_branch = {"crop_size": 128, "width": 16, "device": "cpu"}
    npr_train = {"epochs": 1000, "max_minutes": args.npr_minutes, "lr": 2e-3, "batch_size": 16, "val_fraction": 0.15,
                 "warmup_steps": 20, "seed": args.seed, "save_every_steps": 50}
    return {
        "npr": {"branch": "npr", "opts": npr_branch, "train": npr_train},
        "npr-jpeg": {"branch": "npr", "opts": npr_branch,
                     "train": {**npr_train, "jpeg_aug_prob": 0.5, "jpeg_quality_min": 70, "jpeg_quality_max": 100}},
        "spectrum": {"branch": "spectrum", "opts": {}, "train": {"val_fraction": 0.15, "seed": args.seed}},
        "spectrum-jpeg": {"branch": "spectrum", "opts": {},
                          "train": {"val_fraction": 0.15, "seed": args.seed, "jpeg_aug_prob": 0.5,
                                    "jpeg_quality_min": 70, "jpeg_quality_max": 100}},
        "dinov2-scratch": {"branch": "dinov2",
                           "opts": {"model": "vit_small_patch14_dinov2.lvd142m", "crop_size": 112, "inference_crops": 4, "device": "cpu"},
                           "train": {"epochs": 1000, "max_minutes": args.dinov2_minutes, "lr": 3e-4, "batch_size": 16,
                                     "val_fraction": 0.15, "warmup_steps": 20, "seed": args.seed, "from_scratch": True,
                                     "save_every_steps": 50}},
    }


def main() -> None:
    args = parse_args()
    if not args.shared or not (Path(args.shared) / "data" / "real").is_dir():
        sys.exit("pass --shared DIR (or set ALIGNCORE_SHARED) pointing at the folder holding data/real and weights/")
    import torch

    torch.set_num_threads(args.threads)
    from aligncore import create_branch
    from aligncore.train import train_branch
    from aligncore.train.pixel_data import load_training_set, split_by_group
    from aligncore.train.pixel_trainer import read_metrics

    shared, work = Path(args.shared), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    manifest = ensure_pixel_set(args, shared)
    records = load_training_set(manifest)
    train, test = split_by_group(records, args.test_fraction, seed=args.seed)
    psnr = _mean_psnr(manifest)
    log(f"pixel set: {len(records)} images, {len({r.group for r in records})} photos; train {len(train)}, test {len(test)} "
        f"({len({r.group for r in test})} unseen photos); mean PSNR {psnr}")
    fakes = sorted((shared / "data" / "fake").rglob("*"))
    fakes = [p for p in fakes if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")]
    fake_gen = [p.relative_to(shared / "data" / "fake").parts[0] for p in fakes]

    specs = model_specs(args)
    wanted = args.only.split(",") if args.only else list(specs)
    results_path = Path(args.results).with_suffix(".json")
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("models", {})
    results["pixel_set"] = {"n_images": len(records), "n_photos": len({r.group for r in records}), "n_train": len(train),
                            "n_test": len(test), "test_photos": len({r.group for r in test}), "mean_psnr_db": psnr,
                            "decoder": _decoders(manifest)}
    for name in wanted:
        spec = specs[name]
        out = work / name
        done = out / "benchmark.json"
        if done.exists():
            results["models"][name] = json.loads(done.read_text())
            log(f"{name}: reusing finished result")
            continue
        t0 = time.monotonic()
        log(f"{name}: training ({spec['train']})")
        ckpt = train_branch(spec["branch"], train, out, branch_options=spec["opts"], train_options=dict(spec["train"])).checkpoint
        train_s = time.monotonic() - t0
        hist = read_metrics(out)
        scorer = create_branch(spec["branch"], checkpoint=str(ckpt), **{k: v for k, v in spec["opts"].items() if k in ("device", "inference_crops")})
        log(f"{name}: scoring {len(test)} held-out images (clean, JPEG q90) and {len(fakes)} AI images")
        paths, labels = [r.path for r in test], [r.label for r in test]
        clean = score_images(scorer, paths)
        q90 = score_images(scorer, paths, jpeg_q=90)
        real_paths = [r.path for r in test if r.label == 0]
        real_clean, real_q90 = clean[np.array(labels) == 0], q90[np.array(labels) == 0]
        gen_clean = score_images(scorer, [str(p) for p in fakes])
        gen_q90 = score_images(scorer, [str(p) for p in fakes], jpeg_q=90)
        per_gen = {}
        for g in sorted(set(fake_gen)):
            idx = np.array([k for k, x in enumerate(fake_gen) if x == g])
            per_gen[g] = {
                "n": int(len(idx)),
                "fake_accuracy": float((gen_clean[idx] >= 0.5).mean()),
                "auc_vs_test_reals": metrics([0] * len(real_paths) + [1] * len(idx), np.r_[real_clean, gen_clean[idx]])["auc"],
                "fake_accuracy_q90": float((gen_q90[idx] >= 0.5).mean()),
                "auc_vs_test_reals_q90": metrics([0] * len(real_paths) + [1] * len(idx), np.r_[real_q90, gen_q90[idx]])["auc"],
            }
        res = {
            "branch": spec["branch"], "branch_options": spec["opts"], "train_config": spec["train"],
            "train_seconds": round(train_s, 1), "epochs_logged": len(hist),
            "steps": int(hist[-1]["step"]) if hist else None, "last_val_auc": hist[-1].get("val_auc") if hist else None,
            "test_clean": metrics(labels, clean), "test_jpeg90": metrics(labels, q90),
            "ai_images": {"all": metrics([0] * len(real_paths) + [1] * len(fakes), np.r_[real_clean, gen_clean]),
                          "all_q90": metrics([0] * len(real_paths) + [1] * len(fakes), np.r_[real_q90, gen_q90]),
                          "per_generator": per_gen},
        }
        done.write_text(json.dumps(res, indent=2) + "\n")
        results["models"][name] = res
        log(f"{name}: clean AUC {res['test_clean']['auc']}  JPEG-q90 AUC {res['test_jpeg90']['auc']}  "
            f"AI-images AUC {res['ai_images']['all']['auc']}  ({train_s / 60:.1f} min)")
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    Path(args.results).write_text(render(results, args))
    print(render(results, args))


def _mean_psnr(manifest: Path):
    import csv

    vals = [float(r["psnr"]) for r in csv.DictReader(open(manifest)) if r.get("psnr") not in (None, "")]
    return round(float(np.mean(vals)), 2) if vals else None


def _decoders(manifest: Path):
    import csv

    return sorted({r.get("decoder") or "" for r in csv.DictReader(open(manifest)) if r.get("label") == "1"})


def render(results: dict, args) -> str:
    def f(v):
        return "n/a" if v is None else f"{float(v):.3f}"

    ps = results["pixel_set"]
    lines = [
        "# Pixel experts on real photos vs tiny-autoencoder reconstructions",
        "",
        f"Command: `nice -n 10 python benchmarks/pixel_expert.py --shared SHARED --work WORK --npr-minutes {args.npr_minutes:g} "
        f"--dinov2-minutes {args.dinov2_minutes:g}` on a shared 2-core CPU (other jobs running; times are wall-clock).",
        "",
        f"Pixel set: {ps['n_images']} images from {ps['n_photos']} real photos and their reconstructions through "
        f"{', '.join(ps['decoder']) or 'the tiny autoencoder'} (mean PSNR {ps['mean_psnr_db']} dB). Split by source photo: "
        f"train {ps['n_train']} images, test {ps['n_test']} images of {ps['test_photos']} photos never seen in training "
        "(each model also holds out 15 % of its training photos for checkpoint selection).",
        "",
        "## Held-out photos vs their reconstructions",
        "",
        "| model | train | clean AUC | clean AP | clean bacc | JPEG q90 AUC | JPEG q90 AP | JPEG q90 bacc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        c, j = r["test_clean"], r["test_jpeg90"]
        train = f"{r['train_seconds'] / 60:.1f} min" + (f", {r['steps']} steps" if r.get("steps") and r["branch"] != "spectrum" else "")
        lines.append(f"| {name} | {train} | {f(c['auc'])} | {f(c['ap'])} | {f(c['balanced_accuracy'])} | "
                     f"{f(j['auc'])} | {f(j['ap'])} | {f(j['balanced_accuracy'])} |")
    lines += [
        "",
        "JPEG q90: both classes of the test set re-encoded identically (4:2:0) before scoring. bacc at threshold 0.5.",
        "`-jpeg` models were trained with format-aligned JPEG augmentation (p=0.5, both images of a pair at one quality in 70–100).",
        "",
        "## AI-generated images from unseen generators (shared/data/fake) vs the held-out real crops",
        "",
        "Fake accuracy = share scored ≥ 0.5. AUC against the test split's real photos. **Format caveat:** the fakes are "
        "JPEG/WebP/PNG files re-saved by their publishers, the reals are PNG crops, so the as-is columns mix format with "
        "content; the q90 columns re-encode both sides identically. These generators' decoders were never seen in "
        "training: this measures transfer, not the pipeline.",
        "",
    ]
    gens = sorted({g for r in results["models"].values() for g in r["ai_images"]["per_generator"]})
    names = list(results["models"])
    lines.append("| generator | n | " + " | ".join(f"{n} acc / AUC (q90 AUC)" for n in names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for g in gens:
        cells = []
        n = None
        for name in names:
            pg = results["models"][name]["ai_images"]["per_generator"].get(g)
            n = pg["n"] if pg else n
            cells.append("n/a" if pg is None else f"{f(pg['fake_accuracy'])} / {f(pg['auc_vs_test_reals'])} ({f(pg['auc_vs_test_reals_q90'])})")
        lines.append(f"| {g} | {n} | " + " | ".join(cells) + " |")
    alls = [results["models"][n]["ai_images"] for n in names]
    lines.append("| **all** (test reals + fakes) | " + str(alls[0]["all"]["n"]) + " | " + " | ".join(
        f"bacc {f(a['all']['balanced_accuracy'])} / {f(a['all']['auc'])} ({f(a['all_q90']['auc'])})" for a in alls) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
