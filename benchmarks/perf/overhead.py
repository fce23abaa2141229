"""Framework overhead: `alignctl run` throughput vs a bare loop over the same model.

The bare loop gets pre-decoded, pre-preprocessed tensors and only calls
``branch.score_batch`` under ``torch.inference_mode``. The framework path is the real
``aligncore.run`` (decode with the robust loader in DataLoader workers, hash, score, write
the SQLite store, fuse, write predictions and metrics) on the same images into a fresh
store, after one warm-up run (imports and model construction are start-up, not
throughput). Also timed: decoding + the branch's preprocessing alone, and the bound
they set together with the model (1 / (1/bare + 1/decode)) when both share the cores.
Prints the throughputs and the ratios (framework / bare: target >= 0.9).

    python benchmarks/perf/overhead.py --branch npr --preset tiny --n 256 --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--branch", default="fake")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=256, help="side of the generated images")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="bare-loop repeats (best is kept)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for both paths (default: torch's)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from aligncore import RunConfig, create_branch, load_dataset, load_image, run
    from aligncore.testing import make_image_folder

    overrides = {"device": "cpu", "batch_size": args.batch_size, **({"preset": args.preset} if args.preset else {})}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_image_folder(tmp / "ds", n_real=args.n // 2, n_fake=args.n - args.n // 2, size=(args.size, args.size))
        branch = create_branch(args.branch, **overrides).ensure_loaded()
        records = load_dataset(data).records
        xs = [branch.preprocess(load_image(r.path)) for r in records]
        batches = [branch.collate(xs[i : i + args.batch_size]) for i in range(0, len(xs), args.batch_size)]
        bare = float("inf")
        with torch.inference_mode():
            branch.score_batch(batches[0])  # warm-up
            for _ in range(args.repeats):
                t = time.perf_counter()
                for b in batches:
                    branch.score_batch(b)
                bare = min(bare, time.perf_counter() - t)
        t = time.perf_counter()
        for r in records:
            branch.preprocess(load_image(r.path))
        decode = time.perf_counter() - t

        def cfg(name):
            return RunConfig(branches=[args.branch], data=str(data), out=str(tmp / name), store=str(tmp / f"{name}.sqlite"),
                             workers=args.workers, batch_size=args.batch_size, device="cpu", preset=args.preset)

        run(cfg("warmup"), progress=False)
        t = time.perf_counter()
        run(cfg("timed"), progress=False)
        framework = time.perf_counter() - t
    n = len(records)
    print(f"branch {args.branch} (preset {args.preset}), {n} images {args.size}px, batch {args.batch_size}, "
          f"workers {args.workers}, torch threads {torch.get_num_threads()}")
    print(f"bare loop (pre-decoded tensors):    {n / bare:8.1f} img/s")
    print(f"decode + preprocess only (1 core):  {n / decode:8.1f} img/s")
    print(f"bound with both on one core:        {n / (bare + decode):8.1f} img/s")
    print(f"alignctl run (end to end):          {n / framework:8.1f} img/s")
    print(f"framework / bare throughput:        {bare / framework:8.2f}")
    print(f"framework / (bare + decode) bound:  {(bare + decode) / framework:8.2f}")


if __name__ == "__main__":
    main()
