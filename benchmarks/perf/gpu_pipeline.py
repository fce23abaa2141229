"""Does the data path keep up with DINOv2-L on a GPU? `alignctl run` end to end against the bare model.

1. Writes a few thousand photo-like JPEGs of 1-2 megapixels (quality 90), in parallel on every core.
2. Decode rate per CPU core: ``load_image`` alone, and with the branch's preprocessing (the 336-px
   window), timed in one process (CPU time).
3. Bare model: the ``dinov2`` branch (``--preset random``: DINOv2 ViT-L/14 at 336 with random weights,
   LoRA r=8, bf16 autocast) scoring a ready batch over and over (``score_batch``: the uint8 windows
   cross from page-locked memory, the forward pass, the logits back) — images/s.
4. ``alignctl run --branches dinov2 -o dinov2.preset=random --profile`` on the JPEGs (a subprocess, for
   each ``--workers`` value), images/s over its scoring loop (``RUN/profile.json``), with the share of
   that loop the main process spent waiting for images.

The data path keeps up when the framework reaches ~0.9 of the bare model; when it does not, the
decode rate per core times the cores says how many cores the loader would need. ``--smoke`` runs the
same steps on tiny sizes (preset tiny, small JPEGs, any device) in seconds.

    python benchmarks/perf/gpu_pipeline.py                 # on the GPU machine (~2-4 min)
    python benchmarks/perf/gpu_pipeline.py --smoke         # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np


def _write_jpeg(job: tuple[str, int, int, int]) -> None:
    from PIL import Image

    path, w, h, seed = job
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = rng.uniform(40, 200, 3) + 40 * np.sin(xx[..., None] / rng.uniform(8, 60)) * np.cos(yy[..., None] / rng.uniform(8, 60))
    img += rng.normal(0, 6 if seed % 2 else 2, (h, w, 3)).astype(np.float32)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_jpegs(root: Path, n: int, megapixels: tuple[float, float], processes: int) -> Path:
    rng = np.random.default_rng(0)
    jobs = []
    for k in range(n):
        d = root / ("0_real" if k % 2 == 0 else "1_fake")
        d.mkdir(parents=True, exist_ok=True)
        mp = rng.uniform(*megapixels) * 1e6
        aspect = rng.choice([4 / 3, 3 / 2, 1.0, 3 / 4, 2 / 3])
        w = int(round(np.sqrt(mp * aspect)))
        jobs.append((str(d / f"{k:05d}.jpg"), w, max(1, int(round(mp / w))), k))
    with Pool(processes) as pool:
        pool.map(_write_jpeg, jobs, chunksize=8)
    return root


def decode_rate(paths: list[str], branch) -> tuple[float, float]:
    """(images/s per core: load_image, load_image + the branch's preprocessing), CPU time of this process."""
    from aligncore.data.images import load_image

    rates = []
    for prep in (None, branch.preprocess):
        t = time.process_time()
        for p in paths:
            img = load_image(p)
            if prep is not None:
                prep(img)
        rates.append(len(paths) / (time.process_time() - t))
    return rates[0], rates[1]


def bare_rate(branch, paths: list[str], batch: int, seconds: float) -> float:
    import torch

    from aligncore.data.images import load_image

    xs = [branch.preprocess(load_image(p)) for p in (paths * batch)[:batch]]
    b = branch.collate(xs)
    with torch.inference_mode():
        branch.score_batch(b)  # warm-up
        n, t0 = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t0 < seconds:
            branch.score_batch(b)  # ends with the scores on the host: synchronised
            n += 1
    return n * batch / (time.perf_counter() - t0)


def run_cli(data: Path, out: Path, store: Path, workers: int, batch: int, device: str, preset: str) -> dict:
    cmd = [sys.executable, "-m", "aligncore", "run", "--branches", "dinov2", "-o", f"dinov2.preset={preset}",
           "--data", str(data), "--out", str(out), "--workers", str(workers), "--batch-size", str(batch),
           "--device", device, "--profile", "-q"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "ALIGNCORE_STORE": str(store)}, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"alignctl run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    prof = json.loads((out / "profile.json").read_text())
    prof["process_wall_s"] = wall
    return prof


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks the script in seconds")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--n", type=int, default=None, help="JPEGs to write (default 3000; smoke 24)")
    ap.add_argument("--megapixels", type=float, nargs=2, default=None, help="size range (default 1 2)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 (smoke 8)")
    ap.add_argument("--workers", default=None, help="comma-separated loader worker counts (default: cores-1; smoke 1)")
    ap.add_argument("--seconds", type=float, default=None, help="bare-model timing window (default 10; smoke 0.5)")
    ap.add_argument("--out", default="benchmarks/results/gpu_pipeline", help="results file stem (.md added)")
    args = ap.parse_args()

    import torch

    smoke = args.smoke
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cores = os.cpu_count() or 1
    n = args.n or (24 if smoke else 3000)
    mp = tuple(args.megapixels or ((0.01, 0.03) if smoke else (1.0, 2.0)))
    batch = args.batch_size or (8 if smoke else 64)
    workers = [int(w) for w in (args.workers or ("1" if smoke else str(max(1, cores - 1)))).split(",")]
    seconds = args.seconds or (0.5 if smoke else 10.0)
    preset = "tiny" if smoke else "random"
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dev_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    lines = [f"device: {dev_name}; {cores} CPU cores; torch {torch.__version__}; smoke: {smoke}"]
    print(lines[0], flush=True)

    from aligncore import create_branch

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        data = make_jpegs(tmp / "jpegs", n, mp, cores)
        paths = sorted(str(p) for p in data.rglob("*.jpg"))
        size_mb = sum(os.path.getsize(p) for p in paths) / 2**20
        lines.append(f"data: {n} JPEGs of {mp[0]:g}-{mp[1]:g} MP, quality 90, {size_mb:.0f} MiB, written in "
                     f"{time.perf_counter() - t:.1f} s")
        print(lines[-1], flush=True)
        branch = create_branch("dinov2", preset=preset, device=device, batch_size=batch).ensure_loaded()
        desc = f"dinov2 {branch.config.model if not smoke else 'tiny'} @{branch.config.crop_size}, " \
               f"{branch.resolved_precision()}, batch {batch}"
        sample = paths[: min(len(paths), 24 if smoke else 150)]
        dec, dec_prep = decode_rate(sample, branch)
        lines.append(f"decode per CPU core: {dec:.1f} img/s (load_image), {dec_prep:.1f} img/s with the "
                     f"{branch.config.crop_size}-px window; all {cores} cores decoding: at most "
                     f"~{dec_prep * cores:.0f} img/s")
        print(lines[-1], flush=True)
        bare = bare_rate(branch, paths, batch, seconds)
        lines.append(f"bare model ({desc}): {bare:.1f} img/s")
        print(lines[-1], flush=True)
        del branch
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        rows = []
        for w in workers:
            prof = run_cli(data, tmp / f"run-w{w}", tmp / f"store-w{w}.sqlite", w, batch, device, preset)
            st = prof["stages"]
            loop = next(v for k, v in st.items() if k.startswith("scoring loop"))
            wait = st.get("loader wait", {}).get("wall_s", 0.0)
            ips = prof["counts"]["images_decoded"] / loop["wall_s"]
            rows.append((w, ips, wait / loop["wall_s"], prof))
            verdict = "keeps up" if ips >= 0.9 * bare else "does NOT keep up"
            lines.append(f"alignctl run, {w} loader workers: {ips:.1f} img/s over the scoring loop = {ips / bare:.2f} "
                         f"of the bare model; the main process waited for images {100 * wait / loop['wall_s']:.0f}% of "
                         f"the loop; whole process {prof['process_wall_s']:.1f} s -> the data path {verdict}")
            print(lines[-1], flush=True)
        best = max(rows, key=lambda r: r[1])
        if best[1] < 0.9 * bare:
            need = int(np.ceil(bare / max(dec_prep, 1e-9)))
            lines.append(f"to feed {bare:.0f} img/s the loader needs ~{need} cores decoding at {dec_prep:.1f} img/s each "
                         f"({cores} here): decode JPEGs on the GPU, or give the loader more cores")
            print(lines[-1], flush=True)
    lines.append(f"wall {time.time() - started:.0f} s")
    out = Path(args.out + ("-smoke" if smoke else "") + ".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/perf/gpu_pipeline.py" + (" --smoke" if smoke else "")
    out.write_text("# GPU data-path check\n\n`" + cmd + "`\n\n" + "\n".join(f"- {x}" for x in lines) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
