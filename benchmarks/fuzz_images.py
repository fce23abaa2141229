"""Longer fuzz run of the image loader: mutated seed images, tricky corpus and (optionally) real photos.

    python benchmarks/fuzz_images.py --count 100000 [--shared DIR | $ALIGNCORE_SHARED] [--seed 0]

Every input must load as RGB or raise ImageLoadError with a reason within the per-input
bound; the script prints counts, timing percentiles and peak memory, writes
benchmarks/results/fuzz_images.md, and exits non-zero on the first contract failure.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
TRICKY = TESTS / "fixtures" / "tricky"
sys.path.insert(0, str(TESTS))  # the fuzzing helpers are the suite's (tests/fuzzing.py); the package ships none

from fuzzing import FUZZ_MAX_PIXELS, MAX_SECONDS, SLACK_SECONDS, FuzzFailure, check_input, mutate, seed_images  # noqa: E402


def bases(shared: Path | None, n_real: int) -> dict[str, bytes]:
    out = {f"seed:{k}": v for k, v in seed_images().items()}
    out.update({f"tricky:{p.name}": p.read_bytes() for p in sorted(TRICKY.iterdir()) if p.suffix != ".json"})
    if shared is not None:
        photos = sorted(p for p in (shared / "data").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        step = max(1, len(photos) // max(n_real, 1))
        for p in photos[::step][:n_real]:
            out[f"real:{p.relative_to(shared)}"] = p.read_bytes()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=20000, help="number of mutated inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shared", type=Path, default=os.environ.get("ALIGNCORE_SHARED"), help="shared folder with data/")
    ap.add_argument("--real", type=int, default=24, help="real photos from the shared data to mutate")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fuzz_images.md")
    args = ap.parse_args()
    shared = Path(args.shared) if args.shared and (Path(args.shared) / "data").is_dir() else None
    pool = bases(shared, args.real)
    names = sorted(pool)
    rng = np.random.default_rng(args.seed)
    times: list[float] = []
    outcomes: Counter[str] = Counter()
    by_op: Counter[str] = Counter()
    t0 = time.perf_counter()
    for i in range(args.count):
        name = names[int(rng.integers(len(names)))]
        op, data = mutate(pool[name], rng)
        try:
            out = check_input(data, f"#{i} {name}/{op}")
        except FuzzFailure as exc:
            print(f"FAILURE: {exc}", file=sys.stderr)
            return 1
        times.append(out.seconds)
        outcomes["rgb" if out.ok else ("deadline" if "took longer" in (out.reason or "") else "ImageLoadError")] += 1
        by_op[op] += 1
    wall = time.perf_counter() - t0
    t = np.array(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "# Image loader fuzz run",
        "",
        f"Command: `python benchmarks/fuzz_images.py --count {args.count} --seed {args.seed}"
        + (" --shared SHARED`" if shared else "`"),
        "",
        f"- inputs: {args.count} mutations of {len(pool)} base files "
        f"({sum(n.startswith('real:') for n in names)} real photos, {sum(n.startswith('tricky:') for n in names)} tricky, "
        f"{sum(n.startswith('seed:') for n in names)} generated seeds)",
        f"- outcomes: {dict(outcomes)}; contract failures (crash, hang, non-RGB): 0",
        f"- per-input time: median {np.median(t) * 1e3:.2f} ms, p99 {np.percentile(t, 99) * 1e3:.2f} ms, "
        f"max {t.max() * 1e3:.1f} ms (decode deadline {MAX_SECONDS:g} s + {SLACK_SECONDS:g} s slack; "
        f"images capped at {FUZZ_MAX_PIXELS / 1e6:g} Mpx)",
        f"- wall: {wall:.1f} s; peak RSS of the process: {peak:.0f} MiB",
        f"- mutations: {dict(sorted(by_op.items()))}",
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
