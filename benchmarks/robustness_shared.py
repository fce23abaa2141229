"""Robustness protocol and format-bias audit on the shared test images.

    python benchmarks/robustness_shared.py [SHARED_DIR] [--branches fake] [--preset tiny] [-o BRANCH.KEY=VAL ...]

SHARED_DIR defaults to $ALIGNCORE_SHARED (the folder holding data/). Scores the data as-is and
under every perturbation of the protocol, then the format-bias audit, prints the numbers and
writes benchmarks/results/robustness-<branches>.md. Uses a score store under the results folder
unless $ALIGNCORE_STORE is set.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

PROTOCOL = ["jpeg:75", "jpeg:50", "webp:80", "blur:1.0", "resize:0.5", "crop:0.8"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shared", nargs="?", default=os.environ.get("ALIGNCORE_SHARED"))
    ap.add_argument("--branches", default="fake")
    ap.add_argument("--fusion", default="or")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--checkpoint", action="append", default=[], help="BRANCH=DIR")
    args = ap.parse_args(argv)
    if not args.shared or not (Path(args.shared) / "data").is_dir():
        print("give the shared folder (holding data/) as an argument or in $ALIGNCORE_SHARED", file=sys.stderr)
        return 2
    from aligncore.audit import audit_format
    from aligncore.config import make_run_config
    from aligncore.runner import run

    data = str(Path(args.shared) / "data")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    store = os.environ.get("ALIGNCORE_STORE") or str(results / ".robustness-store.sqlite")
    opts = {"branches": args.branches, "fusion": args.fusion, "store": store, "suite": "robustness-shared",
            "dataset_name": "shared-all", "out": None}
    if args.preset:
        opts["preset"] = args.preset
    if args.checkpoint:
        opts["branch_options"] = {c.split("=", 1)[0]: {"checkpoint": c.split("=", 1)[1]} for c in args.checkpoint}
    lines = [f"# Robustness protocol on the shared test images ({args.branches}, fusion {args.fusion})", "",
             f"Command: `python benchmarks/robustness_shared.py $ALIGNCORE_SHARED --branches {args.branches}`", "",
             "| perturbation | images | acc | real acc | fake acc | AUC | seconds |", "|---|---|---|---|---|---|---|"]
    for spec in [None, *PROTOCOL]:
        t0 = time.time()
        res = run(make_run_config(None, **opts, data=data, perturb=spec), progress=False)
        o = res.metrics["overall"]
        row = f"| {spec or 'none'} | {o['n']} | {o['accuracy']:.4f} | {o['real_accuracy']:.4f} | {o['fake_accuracy']:.4f} | {o['auc']:.4f} | {time.time() - t0:.0f} |"
        print(row, flush=True)
        lines.append(row)
    audit_opts = {k: v for k, v in opts.items() if k not in ("suite", "dataset_name")}
    audit = audit_format(data, audit_opts, ["jpeg:95"], progress=False)
    lines += ["", "## Format-bias audit (both classes re-encoded as JPEG q95)", ""]
    for cls, counts in audit.census.items():
        lines.append(f"- {cls} formats: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lines += ["", "| detector | condition | acc | Δacc | real acc | fake acc | AUC | ΔAUC |", "|---|---|---|---|---|---|---|---|"]
    for r in audit.rows:
        def f(v):
            return "n/a" if v is None else f"{v:.4f}"

        lines.append(f"| {r['detector']} | {r['condition']} | {f(r['accuracy'])} | {r['delta_accuracy']:+.4f} | "
                     f"{f(r['real_accuracy'])} | {f(r['fake_accuracy'])} | {f(r['auc'])} | {r['delta_auc']:+.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = results / f"robustness-{args.branches.replace(',', '+')}.md"
    out.write_text(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
