"""Data loading throughput: decode + branch preprocessing with 0, 1 and 2 DataLoader workers.

Runs the same loader the runner uses (robust decoding, the branch's own crop) over a
folder of images and prints images/s per worker count and the ratio to 0 workers.

    python benchmarks/perf/data_loading.py --data DIR [--branch fake] [--preset tiny] [--limit 300]

Default data: $ALIGNCORE_SHARED/data/real when set, else a generated set of 512x512 PNGs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="image folder or manifest")
    ap.add_argument("--branch", default="fake")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", default="0,1,2")
    args = ap.parse_args()

    from aligncore import create_branch, load_dataset
    from aligncore.data.loader import LoadItem, load_images

    tmp = None
    data = args.data
    if data is None and os.environ.get("ALIGNCORE_SHARED"):
        data = str(Path(os.environ["ALIGNCORE_SHARED"]) / "data" / "real")
    if data is None:
        from aligncore.testing import make_image_folder

        tmp = tempfile.TemporaryDirectory()
        data = str(make_image_folder(Path(tmp.name), n_real=args.limit // 2, n_fake=args.limit // 2, size=(512, 512)))
    records = load_dataset(data).records[: args.limit]
    branch = create_branch(args.branch, **({"preset": args.preset} if args.preset else {}), device="cpu")
    items = [LoadItem(i, r.path, (0,)) for i, r in enumerate(records)]
    print(f"{len(items)} images from {data}; branch {args.branch}; batch {args.batch_size}; {os.cpu_count()} CPUs")
    for _ in load_images(items, [branch.preprocess], args.batch_size):  # warm the file cache: time decoding, not disk
        pass
    base = None
    for w in [int(x) for x in args.workers.split(",")]:
        t = time.perf_counter()
        n = 0
        for loaded in load_images(items, [branch.preprocess], args.batch_size, workers=w):
            n += len(loaded)
        dt = time.perf_counter() - t
        rate = n / dt
        base = base or rate
        print(f"workers={w}: {rate:7.1f} img/s  ({dt:.2f} s)  ratio to 0 workers {rate / base:.2f}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
