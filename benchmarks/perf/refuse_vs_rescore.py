"""Re-fusing a finished run from the score store vs scoring it again.

Builds a synthetic 0_real/1_fake set of N images, runs `alignctl run` once (scores every
image into a fresh store), then times `alignctl fuse RUN --fusion weighted` (no model,
stored scores) and the same `alignctl run` into an empty store (what a re-fusion costs
without the store). Prints both wall times (whole processes) and their ratio.

    python benchmarks/perf/refuse_vs_rescore.py --n 1000 --branches npr,dinov2 --preset tiny
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd, env) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="images (half real, half fake)")
    ap.add_argument("--branches", default="fake")
    ap.add_argument("--preset", default=None)
    args = ap.parse_args()
    from aligncore.testing import make_image_folder

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_image_folder(tmp / "ds", n_real=args.n // 2, n_fake=args.n - args.n // 2, size=(96, 96))
        env = {**os.environ, "ALIGNCORE_STORE": str(tmp / "store.sqlite")}
        cli = [sys.executable, "-m", "aligncore"]
        run = cli + ["run", "--branches", args.branches, "--data", str(data), "-q"]
        run += ["--preset", args.preset] if args.preset else []
        first = timed(run + ["--out", str(tmp / "run")], env)
        fuse = timed(cli + ["fuse", str(tmp / "run"), "--fusion", "weighted"], env)
        rescore = timed(run + ["--out", str(tmp / "run2")], {**env, "ALIGNCORE_STORE": str(tmp / "empty.sqlite")})
        print(f"images: {args.n}; branches {args.branches} (preset {args.preset})")
        print(f"first run (score + fuse):        {first:6.2f} s")
        print(f"alignctl fuse (stored scores):   {fuse:6.2f} s")
        print(f"re-scoring into an empty store:  {rescore:6.2f} s")
        print(f"re-scoring / re-fusion ratio:    {rescore / fuse:6.1f}x")


if __name__ == "__main__":
    main()
