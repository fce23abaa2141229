"""``alignctl detect``: the built-in detector on images or folders — no checkpoint, no network, no dataset."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from ..cli_options import echo_err
from ..text import terminal_text as _printable  # a file name never drives the terminal
from .run import EXIT_INCOMPLETE


def collect_inputs(paths: tuple[str, ...]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, folders walked for image files (sorted); (path, reason) for arguments that are neither."""
    from ..data.datasets import IMAGE_SUFFIXES

    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append((raw, "folder holds no image files"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            problems.append((raw, "no such file or folder"))
    return files, problems


def _fmt(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.3f}"


@click.command("detect")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_FOLDER...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image: path, score (P(fake)), verdict, "
              "scores (per branch), and error for an image that could not be scored.")
@click.option("--device", default="auto", show_default=True, help="'auto', 'cpu', 'cuda' or 'cuda:N'.")
def detect_cmd(inputs, as_json, device) -> None:
    """Say whether images are AI-generated, with the built-in detector (no checkpoint, no download).

    Folders are searched for image files. Prints path, P(fake), verdict (threshold calibrated to 5 % false
    positives on held-out real photos) and each branch's score. Files that cannot be read or scored are
    listed with the reason, and the exit status is 3 then. The built-in detector, its data and its
    generalisation numbers are described in its model card (see the README, "Out of the box").
    """
    from ..api import Detector

    files, problems = collect_inputs(inputs)
    det = Detector(device=device)
    preds = det.predict([str(f) for f in files]) if files else []
    branches = [b.name for b in det.branches]
    failed = [(p, reason) for p, reason in problems]
    if as_json:
        for p in preds:
            ok = p.verdict is not None
            rec = {"path": p.source, "score": p.score if ok else None, "verdict": p.verdict,
                   "scores": {b: (None if math.isnan(v) else v) for b, v in p.scores.items()}}
            if p.error:
                rec["error"] = p.error
            click.echo(json.dumps(rec, sort_keys=False))
            if not ok:
                failed.append((p.source, p.error or "not scored"))
        for raw, reason in problems:
            click.echo(json.dumps({"path": raw, "score": None, "verdict": None, "scores": {}, "error": reason}))
    else:
        head = ["path", "P(fake)", "verdict", *branches]
        rows = []
        for p in preds:
            ok = p.verdict is not None
            rows.append([_printable(p.source), _fmt(p.score) if ok else "-", p.verdict or "error",
                         *[_fmt(p.scores.get(b)) for b in branches]])
            if not ok:
                failed.append((p.source, p.error or "not scored"))
        if rows:
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
            for r in [head, *rows]:
                click.echo("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if failed:
            echo_err(f"{len(failed)} input(s) could not be scored:")
            for path, reason in failed:
                echo_err(f"  {_printable(str(path))}: {_printable(reason)}")
    if failed:
        sys.exit(EXIT_INCOMPLETE)
