"""aligncore against a plain evaluation loop, in images per CPU-second, on the same model object.

The baseline is what an evaluation script of a detection paper does, written here from scratch:
a torch ``Dataset`` that opens each file with PIL, converts it to RGB and crops the model's windows
(one centre crop, or the branch's grid of windows), the default ``DataLoader`` collate, and one
forward pass per batch of every window of the batch, mean logit per image, sigmoid. No hashing,
no store, no metrics, no run folder. aligncore is the real ``aligncore.run`` (robust decoding,
sha256 of every file, SQLite store, fusion, metrics, run folder), scoring into a fresh store, on
the very branch object (and so the very model) the baseline calls. Both use the same batch size,
loader workers and torch threads; the scores of the two are compared image by image.

CPU time is the process's plus its finished children's (the loader workers), from ``getrusage``,
so it counts what a busy machine would bill; each measurement is repeated (``--repeats``,
alternating the two sides) and the least CPU time is kept. Reported:

1. aligncore / baseline images per CPU-second for ``npr`` (its default architecture, 16 windows
   of 128 at batch 16, random weights: ``--preset random``), ``dinov2`` ViT-S/14 at crop 224
   (timm's ``vit_small_patch14_dinov2`` built offline with random weights, ``--preset random``)
   and the tiny presets;
2. ``npr`` CPU time per image by batch size through ``aligncore.run`` at the default activation budget:
   ``--sweep-repeats`` runs of every batch size, interleaved, median and spread (with ``--lifted`` also one
   run each with the budget lifted: every window of a batch in one forward pass, as before);
3. a two-branch run against the sum of the two one-branch runs (tiny presets);
4. with ``--budget-sweep``: CPU time per image of the bare forward pass by activation budget.

    OMP_NUM_THREADS=1 python benchmarks/perf/peer_baseline.py            # ~5-10 min on 2 busy cores
    OMP_NUM_THREADS=1 python benchmarks/perf/peer_baseline.py --quick    # fewer images, a smoke check
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


# ---------------------------------------------------------------------- data


def make_jpegs(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> Path:
    """``n`` photo-like JPEGs (quality 90, sides jittered around ``size``) in 0_real/ and 1_fake/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k in range(n):
        d = root / ("0_real" if k % 2 == 0 else "1_fake")
        d.mkdir(parents=True, exist_ok=True)
        w, h = size[0] + int(rng.integers(0, 64)), size[1] + int(rng.integers(0, 64))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(40, 200, 3)
        img = base + 40 * np.sin(xx[..., None] / rng.uniform(8, 40)) * np.cos(yy[..., None] / rng.uniform(8, 40))
        img += rng.normal(0, 12 if k % 2 == 0 else 3, (h, w, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{k:05d}.jpg", quality=90)
    return root


def copy_subset(source: str, n: int, root: Path) -> Path:
    """``n`` images of a dataset (folder or manifest), evenly spread over its sorted records, copied into
    0_real/ and 1_fake/ under ``root`` (so both sides read the same files from the same place)."""
    import shutil

    from aligncore.data import load_dataset

    recs = sorted(load_dataset(source).records, key=lambda r: r.path)
    pick = [recs[round(i * (len(recs) - 1) / max(1, n - 1))] for i in range(min(n, len(recs)))]
    for k, r in enumerate(pick):
        d = root / ("1_fake" if r.label == 1 else "0_real")
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(r.path, d / f"{k:05d}{Path(r.path).suffix.lower()}")
    return root


# ---------------------------------------------------------------------- the plain loop (the baseline)


class PlainWindows:
    """A map-style dataset: file → uint8 (K, 3, S, S) windows, the way a plain evaluation script cuts them."""

    def __init__(self, paths: list[str], size: int, positions):
        self.paths, self.size, self.positions = paths, size, positions

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        img = Image.open(self.paths[i]).convert("RGB")
        s = self.size
        wins = [np.asarray(img.crop((left, top, left + s, top + s))) for top, left in self.positions(img.height, img.width)]
        return torch.from_numpy(np.stack(wins)).permute(0, 3, 1, 2)


def baseline_scores(branch, paths: list[str], batch_size: int, workers: int) -> list[float]:
    """The plain loop: DataLoader (default collate) → all windows of a batch in one forward → mean logit."""
    import torch
    from torch.utils.data import DataLoader

    model_in = branch.logits  # the branch's model, with its own normalisation
    loader = DataLoader(PlainWindows(paths, branch.config.crop_size, branch.window_positions),
                        batch_size=batch_size, num_workers=workers, shuffle=False)
    out: list[float] = []
    with torch.inference_mode():
        for x in loader:
            b, k = x.shape[:2]
            z = model_in(x.reshape(b * k, *x.shape[2:])).float().reshape(b, k).mean(dim=1)
            out += torch.sigmoid(z).tolist()
    return out


# ---------------------------------------------------------------------- aligncore


def aligncore_scores(branch, data: Path, work: Path, tag: str, batch_size: int, workers: int, extra=()) -> dict[str, float]:
    """``aligncore.run`` into a fresh store on the given branch objects; {path: score of the first branch}."""
    import csv

    from aligncore import RunConfig
    from aligncore.runner import run

    branches = [branch, *extra]
    cfg = RunConfig(branches=[b.name for b in branches], data=str(data), out=str(work / f"run-{tag}"),
                    store=str(work / f"store-{tag}-{time.time_ns()}.sqlite"), workers=workers, batch_size=batch_size,
                    device="cpu")
    res = run(cfg, progress=False, branches=branches)
    Path(cfg.store).unlink()
    with open(res.out_dir / "predictions.csv", newline="") as f:
        return {r["path"]: float(r[f"score_{branch.name}"]) for r in csv.DictReader(f)}


# ---------------------------------------------------------------------- timing


def cpu_now() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(fn) -> tuple[float, object]:
    """(CPU seconds of this process and its finished children, result)."""
    c = cpu_now()
    out = fn()
    return cpu_now() - c, out


def best_of(fns: dict, repeats: int) -> dict[str, tuple[float, list[float], object]]:
    """Run each fn ``repeats`` times, alternating; {name: (least CPU s, all CPU s, last result)}."""
    res: dict[str, list] = {k: [] for k in fns}
    last = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            cpu, last[k] = measure(fn)
            res[k].append(cpu)
    return {k: (min(v), v, last[k]) for k, v in res.items()}


def load() -> str:
    return "load average " + " / ".join(f"{x:.1f}" for x in os.getloadavg())


# ---------------------------------------------------------------------- branches


def npr_branch(full: bool, **opts):
    """npr: ``full`` = its default architecture (preset random: width 16, 16 windows of 128), else preset tiny."""
    from aligncore import create_branch

    return create_branch("npr", preset="random" if full else "tiny", device="cpu", **opts).ensure_loaded()


def dinov2_branch(vit_s: bool, **opts):
    """dinov2: ``vit_s`` = timm's ViT-S/14 DINOv2 architecture at crop 224 with random weights (preset random, built
    offline; LoRA r=8 on its attention as the branch scores), else preset tiny."""
    from aligncore import create_branch

    arch = {"preset": "random", "model": "vit_small_patch14_dinov2.lvd142m", "crop_size": 224} if vit_s else {"preset": "tiny"}
    return create_branch("dinov2", device="cpu", **arch, **opts).ensure_loaded()


# ---------------------------------------------------------------------- the report


def compare(label: str, branch, data: Path, work: Path, args) -> float:
    from aligncore.data import load_dataset

    paths = [r.path for r in load_dataset(data).records]
    bs, w = branch.config.batch_size, args.workers
    fns = {"aligncore": lambda: aligncore_scores(branch, data, work, label, bs, w),
           "baseline": lambda: baseline_scores(branch, paths, bs, w)}
    fns["aligncore"]()  # warm-up: imports, first-use costs, file cache
    fns["baseline"]()
    got = best_of(fns, args.repeats)
    ours = got["aligncore"][2]
    diff = max(abs(ours[p] - s) for p, s in zip(paths, got["baseline"][2]))
    n = len(paths)
    a, b = n / got["aligncore"][0], n / got["baseline"][0]
    print(f"{label:<34} aligncore {a:8.1f} img/CPU-s   baseline {b:8.1f} img/CPU-s   ratio {a / b:5.2f}   "
          f"(CPU s aligncore {_fmt(got['aligncore'][1])}, baseline {_fmt(got['baseline'][1])}; max |score diff| {diff:.1e})",
          flush=True)
    return a / b


def _fmt(v: list[float]) -> str:
    return "/".join(f"{x:.2f}" for x in v)


def batch_sweep(data: Path, work: Path, args) -> None:
    """npr's CPU time per image by batch size through ``aligncore.run``: the batch sizes run interleaved (each
    repeat runs every batch size once, in an order rotated per repeat, so a change in the machine's load falls
    on all of them), ``--sweep-repeats`` times; the verdict compares medians, the spread is printed beside them."""
    from aligncore.data import load_dataset

    n = len(load_dataset(data).records)
    reps = args.sweep_repeats
    print(f"\nnpr (default architecture) through aligncore.run: CPU ms per image by batch size ({n} images, "
          f"workers {args.workers}; median of {reps} interleaved runs, min-max in brackets)", flush=True)
    br = npr_branch(True)
    d = br.config.batch_size
    runs: dict[int, list[float]] = {bs: [] for bs in args.batches}
    aligncore_scores(br, data, work, "bs-warm", d, args.workers)  # warm-up
    for r in range(reps):
        order = args.batches[r % len(args.batches):] + args.batches[: r % len(args.batches)]
        for bs in order:
            cpu = measure(lambda bs=bs: aligncore_scores(br, data, work, f"bs{bs}", bs, args.workers))[0]
            runs[bs].append(1e3 * cpu / n)
    med = {bs: float(np.median(v)) for bs, v in runs.items()}
    low = {bs: min(v) for bs, v in runs.items()}
    best = min(med, key=med.get)
    for bs in args.batches:
        mark = " <- default" if bs == d else " <- best" if bs == best else ""
        print(f"  batch {bs:>3}: {med[bs]:6.1f} ms  [{low[bs]:.1f}-{max(runs[bs]):.1f}]  runs {_fmt(runs[bs])}{mark}",
              flush=True)
    if d in med:
        print(f"  default (batch {d}) / best (batch {best}): median {med[d] / med[best]:4.2f}, "
              f"min {low[d] / min(low.values()):4.2f}  [{br.windows_per_forward()} windows per forward pass]", flush=True)
    if args.lifted:  # the unchunked path, for comparison (one run per batch size: it is slow)
        lifted = npr_branch(True, activation_mb=1e6)
        cells = []
        for bs in args.batches:
            cpu = measure(lambda bs=bs: aligncore_scores(lifted, data, work, f"lift{bs}", bs, args.workers))[0]
            cells.append(f"bs {bs}: {1e3 * cpu / n:6.1f}")
        print(f"  budget lifted (all windows of a batch at once; one run each): {'  '.join(cells)}", flush=True)


def two_branch(data: Path, work: Path, args, pair: tuple[str, str]) -> float:
    from aligncore import create_branch

    def make(name):
        return create_branch(name, preset="tiny", device="cpu").ensure_loaded()

    a, b = make(pair[0]), make(pair[1])
    both = "+".join(pair)  # run folders named after their branches: a folder of another pair is never reused
    fns = {"both": lambda: aligncore_scores(a, data, work, both, 16, args.workers, extra=(b,)),
           pair[0]: lambda: aligncore_scores(a, data, work, pair[0], 16, args.workers),
           pair[1]: lambda: aligncore_scores(b, data, work, pair[1], 16, args.workers)}
    for fn in fns.values():
        fn()
    got = best_of(fns, args.repeats)
    both, one, two = got["both"][0], got[pair[0]][0], got[pair[1]][0]
    ratio = both / (one + two)
    print(f"two branches ({'+'.join(pair)}, tiny): one run {both:.2f} CPU-s vs {pair[0]} {one:.2f} + {pair[1]} {two:.2f} "
          f"= {one + two:.2f}: ratio {ratio:.2f}", flush=True)
    return ratio


def budget_sweep(args) -> None:
    import torch

    print("\nbare forward pass, CPU ms per image by activation budget (MB; windows per pass in brackets)")
    rng = np.random.default_rng(0)
    for label, make, n in (("npr default", lambda **o: npr_branch(True, **o), 24),
                           ("dinov2 ViT-S/14 @224", lambda **o: dinov2_branch(True, **o), 24),
                           ("npr --preset tiny", lambda **o: npr_branch(False, **o), 256),
                           ("dinov2 --preset tiny", lambda **o: dinov2_branch(False, **o), 1024)):
        cells = []
        for mb in args.budgets:
            br = make(activation_mb=mb)
            s = br.config.crop_size
            x = torch.from_numpy(rng.integers(0, 255, (n, br.config.inference_crops, 3, s, s), dtype=np.uint8))
            with torch.inference_mode():
                br.score_batch(x[:2])
                cpu = min(measure(lambda: br.score_batch(x))[0] for _ in range(args.repeats))
            cells.append(f"{mb:g}: {1e3 * cpu / n:7.2f} [{br.windows_per_forward()}]")
        print(f"  {label:<22} " + "  ".join(cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="images for the npr and ViT-S comparisons")
    ap.add_argument("--n-tiny", type=int, default=480, help="images for the tiny presets (same size: they cost ms)")
    ap.add_argument("--size", type=int, nargs=2, default=(576, 448), metavar=("W", "H"), help="JPEG size (jittered +64)")
    ap.add_argument("--data", help="use images of this dataset (folder or manifest) instead of generated JPEGs")
    ap.add_argument("--workers", type=int, default=1, help="loader workers of both sides")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of both sides")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--sweep-repeats", type=int, default=5, help="interleaved runs per batch size in the npr sweep")
    ap.add_argument("--lifted", action="store_true", help="the npr sweep also runs once per batch size with the "
                    "activation budget lifted (every window of a batch in one pass: slow)")
    ap.add_argument("--budget-sweep", action="store_true", help="also time the bare forward pass by activation budget")
    ap.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=[0.25, 0.5, 1, 2, 4, 8, 16, 64, 256])
    ap.add_argument("--only", default="", help="comma-separated subset of: models,tiny,batch,two,budget (budget: the "
                    "bare forward pass by activation budget, not run by default)")
    ap.add_argument("--quick", action="store_true", help="a smoke check: few images, one repeat")
    args = ap.parse_args()
    if args.quick:
        args.n, args.n_tiny, args.repeats, args.batches, args.budgets = 8, 16, 1, [2, 16], [1, 64]
        args.sweep_repeats = 2
    import torch

    torch.set_num_threads(args.threads)
    only = set(args.only.split(",")) - {""} or {"models", "tiny", "batch", "two"}
    if args.budget_sweep:
        only.add("budget")
    print(f"{os.cpu_count()} CPUs, {load()} at start; torch {torch.__version__}, {args.threads} thread(s), "
          f"{args.workers} loader worker(s), best of {args.repeats}", flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.data:
            data = copy_subset(args.data, args.n, tmp / "photos")
            many = copy_subset(args.data, args.n_tiny, tmp / "many")
            print(f"data: {args.n} (npr and ViT-S) and {args.n_tiny} (tiny presets) images of the given dataset\n")
        else:
            data = make_jpegs(tmp / "photos", args.n, tuple(args.size))
            many = make_jpegs(tmp / "many", args.n_tiny, tuple(args.size), seed=1)
            print(f"data: JPEGs ~{args.size[0]}x{args.size[1]} (+0..63 px), quality 90: {args.n} for npr and ViT-S, "
                  f"{args.n_tiny} for the tiny presets\n")
        if "models" in only:
            compare("npr (16 windows of 128, batch 16)", npr_branch(True), data, tmp, args)
            compare("dinov2 ViT-S/14 (crop 224, batch 16)", dinov2_branch(True), data, tmp, args)
        if "tiny" in only:
            compare("npr --preset tiny", npr_branch(False), many, tmp, args)
            compare("dinov2 --preset tiny", dinov2_branch(False), many, tmp, args)
        if "batch" in only:
            batch_sweep(data, tmp, args)
        if "two" in only:
            print()
            two_branch(many, tmp, args, ("npr", "dinov2"))
            two_branch(many, tmp, args, ("npr", "spectrum"))
        if "budget" in only:
            budget_sweep(args)
    print(f"\n{load()} at the end; wall {time.time() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
