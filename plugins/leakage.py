"""``alignctl audit leakage``: does a semantic set still carry pixel traces?

A pixel-only detector (any trainable branch, e.g. ``npr`` or ``spectrum``) is trained and
evaluated with k-fold cross-validation, split by item, twice on the same items: on the
aligned but unprocessed copies (the control) and on the post-processed images. The control
must separate the classes — otherwise the detector learns nothing here and the audit proves
nothing. A near-chance AUC on the processed images then shows that the chain removed the
traces this detector can learn, which is the semantic set's purity assumption, checked.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import click
from pydantic import Field

from aligncore import hookimpl
from aligncore.audit import Audit, AuditConfig, AuditOutcome
from aligncore.text import csv_cell

VARIANTS = (("control", "clean_path", "unprocessed (aligned) copies"), ("processed", "path", "post-processed images"))


def _read_set(set_path: str | Path) -> tuple[Path, list[dict]]:
    """The set's folder and one row per item: ``path`` and ``clean_path`` as the manifest writes them, ``label``."""
    from aligncore.data import load_dataset
    from aligncore.data.datasets import MANIFEST_NAME
    from aligncore.errors import DataError

    p = Path(set_path)
    manifest = p / MANIFEST_NAME if p.is_dir() else p
    if not manifest.exists():
        raise DataError(f"{set_path}: no {MANIFEST_NAME} (build one with `alignctl build semantic-set`).")
    records = load_dataset(manifest).records
    if not records or any(not r.extra.get("clean_path") for r in records):
        raise DataError(f"{manifest}: the set has no unprocessed copies (clean_path column); rebuild it with "
                        "`alignctl build semantic-set ... -o keep_clean=true`.")
    labels = {r.label for r in records}
    if labels != {0, 1}:
        raise DataError(f"{manifest}: the audit needs real and fake images; found labels {sorted(labels, key=str)}.")
    root = manifest.parent
    rows = [{"path": Path(r.path).relative_to(root.resolve()).as_posix(), "clean_path": r.extra["clean_path"],
             "label": str(r.label)} for r in records]
    return root, rows


def assign_folds(rows: list[dict], folds: int, seed: int) -> list[int]:
    """Stratified by label, items ordered by a seeded hash of their path: fold of each row."""
    from aligncore.supervision import item_seed

    out = [0] * len(rows)
    for label in (0, 1):
        idx = sorted((i for i, r in enumerate(rows) if int(r["label"]) == label),
                     key=lambda i: item_seed(seed, rows[i]["path"]))
        for rank, i in enumerate(idx):
            out[i] = rank % folds
    return out


def _link_folder(root: Path, items: list[tuple[str, int]]) -> Path:
    """A 0_real/1_fake folder of hard links to ``items`` (so any branch's trainer reads it as a labelled set;
    symlinks would point outside that folder, which a folder scan refuses)."""
    if root.exists():
        shutil.rmtree(root)
    for k, (path, label) in enumerate(items):
        d = root / ("0_real" if label == 0 else "1_fake")
        d.mkdir(parents=True, exist_ok=True)
        target = d / f"{k:05d}_{Path(path).name}"
        try:
            os.link(os.path.abspath(path), target)
        except OSError:  # another file system, or no hard links
            shutil.copyfile(path, target)
    return root


def _score(branch, paths: list[str], chunk: int = 64) -> list[float]:
    """Scores of every image through the scoring path (score contract included); a failure is an error."""
    from aligncore.data import load_image
    from aligncore.errors import AlignCoreError
    from aligncore.scoring import score_images

    out: list[float] = []
    for i in range(0, len(paths), chunk):
        for p, r in zip(paths[i:i + chunk], score_images([branch], [load_image(p) for p in paths[i:i + chunk]])[branch.name]):
            if r.score is None:
                raise AlignCoreError(f"leakage audit: branch {branch.name!r} could not score {p}: {r.error}")
            out.append(r.score)
    return out


def _metrics(labels: list[int], scores: list[float]) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = np.asarray(labels), np.asarray(scores, dtype=float)
    return {
        "auc": round(float(roc_auc_score(y, s)), 4),
        "ap": round(float(average_precision_score(y, s)), 4),
        "accuracy": round(float(((s >= 0.5).astype(int) == y).mean()), 4),
    }


def verdict(control_auc: float, processed_auc: float, min_control_auc: float, chance_margin: float) -> tuple[str, str]:
    if control_auc < min_control_auc:
        return "inconclusive", (f"the pixel detector does not separate the unprocessed images (control AUC "
                                f"{control_auc:.3f} < {min_control_auc}), so the processed-set AUC proves nothing.")
    if abs(processed_auc - 0.5) <= chance_margin:
        return "pass", (f"the detector separates the unprocessed images (AUC {control_auc:.3f}) but is near chance on "
                        f"the processed ones (AUC {processed_auc:.3f}): the chain removed the pixel traces it learns.")
    return "leak", (f"the detector still separates the processed images (AUC {processed_auc:.3f}, control "
                    f"{control_auc:.3f}): pixel traces survive the chain; strengthen the post-processing.")


def leakage_audit(set_path: str | Path, pixel_branch: str, out_dir: str | Path, branch_options: dict | None = None,
                  train_options: dict | None = None, folds: int = 3, seed: int = 0, min_control_auc: float = 0.75,
                  chance_margin: float = 0.1, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Cross-validated AUC of ``pixel_branch`` on the unprocessed and the processed images of a semantic set."""
    from aligncore.errors import ConfigError
    from aligncore.registry import create_branch, get_registry
    from aligncore.train import train_branch

    get_registry().get("branch", pixel_branch)  # unknown names fail before any work
    if folds < 2:
        raise ConfigError("--folds must be at least 2 (every item is scored by a model that did not train on it).")
    root, rows = _read_set(set_path)
    n_real = sum(1 for r in rows if int(r["label"]) == 0)
    if min(n_real, len(rows) - n_real) < folds:
        raise ConfigError(f"each class needs at least {folds} images for {folds}-fold cross-validation.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fold_of = assign_folds(rows, folds, seed)
    labels = [int(r["label"]) for r in rows]
    bopts = dict(branch_options or {})
    result: dict[str, Any] = {
        "set": str(root), "pixel_branch": pixel_branch, "branch_options": bopts, "train_options": train_options or {},
        "folds": folds, "seed": seed, "n": len(rows), "n_real": n_real, "n_fake": len(rows) - n_real,
    }
    for variant, column, what in VARIANTS:
        paths = [str((root / r[column]).resolve()) for r in rows]
        scores: list[float] = [math.nan] * len(rows)
        fold_aucs = []
        for k in range(folds):
            train = [(paths[i], labels[i]) for i in range(len(rows)) if fold_of[i] != k]
            test = [i for i in range(len(rows)) if fold_of[i] == k]
            if log:
                log(f"{variant}: fold {k + 1}/{folds}: training {pixel_branch} on {len(train)} {what}")
            data = _link_folder(out / variant / f"fold{k}" / "train", train)
            ckpt = train_branch(pixel_branch, str(data), out / variant / f"fold{k}" / "checkpoint",
                                branch_options=bopts, train_options=dict(train_options or {}), progress=False).checkpoint
            scorer = create_branch(pixel_branch, None, **{**bopts, "checkpoint": str(ckpt)})
            fs = _score(scorer, [paths[i] for i in test])
            for i, s in zip(test, fs):
                scores[i] = float(s)
            y = [labels[i] for i in test]
            if len(set(y)) == 2:
                fold_aucs.append(_metrics(y, fs)["auc"])
        result[variant] = {**_metrics(labels, scores), "fold_auc": fold_aucs}
        with open(out / variant / "scores.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["path", "label", "fold", "score"])
            for i in range(len(rows)):
                # a manifest's path is anyone's name: escaped, never a spreadsheet formula (read_csv_cell reverses it)
                w.writerow([csv_cell(rows[i][column]), labels[i], fold_of[i], f"{scores[i]:.6f}"])
    status, note = verdict(result["control"]["auc"], result["processed"]["auc"], min_control_auc, chance_margin)
    result["verdict"], result["note"] = status, note
    (out / "leakage.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def format_report(res: dict[str, Any]) -> str:
    lines = [
        f"pixel-leakage audit: branch {res['pixel_branch']}, {res['folds']}-fold cross-validation split by item, "
        f"{res['n']} images ({res['n_real']} real, {res['n_fake']} fake)",
        f"{'':<28}{'AUC':>8}{'AP':>8}{'acc':>8}   per-fold AUC",
    ]
    for variant, _, what in VARIANTS:
        m = res[variant]
        folds = ", ".join(f"{a:.3f}" for a in m["fold_auc"])
        lines.append(f"{variant + ' (' + what.split()[0] + ')':<28}{m['auc']:>8.3f}{m['ap']:>8.3f}{m['accuracy']:>8.3f}   {folds}")
    lines.append(f"verdict: {res['verdict']} - {res['note']}")
    return "\n".join(lines)


class LeakageAuditConfig(AuditConfig):
    pixel_branch: str = Field(..., description="A trainable pixel-only branch trained and scored in every fold.")
    branch_options: dict[str, Any] = Field(default_factory=dict, description="Options of the pixel branch (e.g. preset).")
    train_options: dict[str, Any] = Field(default_factory=dict, description="Training options of the pixel branch.")
    folds: int = Field(3, ge=2, description="Cross-validation folds (split by item).")
    seed: int = Field(0, description="Seed of the fold assignment.")
    min_control_auc: float = Field(0.75, ge=0.0, le=1.0, description="Below this control AUC the audit is inconclusive.")
    chance_margin: float = Field(0.1, ge=0.0, le=0.5, description="A processed-set AUC within 0.5 +/- this counts as chance.")


class LeakageAudit(Audit):
    """``alignctl audit leakage`` as a registered audit (studies run it by name on a semantic set)."""

    name = "leakage"
    help = "Cross-validated AUC of a pixel-only detector on a semantic set's unprocessed vs processed images."
    config_class = LeakageAuditConfig
    config: LeakageAuditConfig

    def check(self) -> None:
        """The pixel branch is trainable and accepts the branch and training options."""
        from aligncore.train import train_config_for, trainable_branch

        cls = trainable_branch(self.config.pixel_branch)
        cls.make_config(self.config.branch_options)
        train_config_for(cls, self.config.train_options)

    def run(self, target, out_dir, log=None) -> AuditOutcome:
        c = self.config
        res = leakage_audit(target, c.pixel_branch, out_dir, c.branch_options, c.train_options, c.folds, c.seed,
                            c.min_control_auc, c.chance_margin, log=log)
        metrics = {"control_auc": res["control"]["auc"], "processed_auc": res["processed"]["auc"],
                   "control_ap": res["control"]["ap"], "processed_ap": res["processed"]["ap"],
                   "verdict": res["verdict"], "n": res["n"]}
        return AuditOutcome(metrics, res)


@hookimpl
def register_audits(register):
    register(LeakageAudit)


@hookimpl
def register_commands(cli):
    audit = cli.commands.get("audit")
    if not isinstance(audit, click.Group):
        @cli.group("audit")
        def audit() -> None:
            """Checks of training sets and models (e.g. pixel leakage in a semantic set)."""

    @audit.command("leakage")
    @click.option("--set", "set_path", required=True, help="A semantic-set folder (or its manifest.csv) built with keep_clean.")
    @click.option("--pixel-branch", required=True, help="A trainable pixel-only branch, e.g. npr or spectrum.")
    @click.option("--out", type=click.Path(file_okay=False), help="Work folder (default: SET-leakage-<branch> beside the set).")
    @click.option("--folds", type=int, default=3, show_default=True, help="Cross-validation folds (split by item).")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fold assignment.")
    @click.option("--preset", help="Branch preset, e.g. tiny.")
    @click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
    @click.option("-b", "--branch-option", "branch_options", multiple=True, help="Branch option KEY=VALUE.")
    @click.option("-o", "--option", "options", multiple=True, help="Training option KEY=VALUE.")
    @click.option("--min-control-auc", type=float, default=0.75, show_default=True,
                  help="Below this control AUC the audit is inconclusive.")
    @click.option("--chance-margin", type=float, default=0.1, show_default=True,
                  help="A processed-set AUC within 0.5 +/- this counts as chance.")
    def leakage_cmd(set_path, pixel_branch, out, folds, seed, preset, device, branch_options, options,
                    min_control_auc, chance_margin) -> None:
        """Train a pixel-only detector on the unprocessed and on the processed images; compare the AUCs."""
        from aligncore.cli_options import echo_err, parse_kv

        bopts = parse_kv(branch_options, "--branch-option")
        if preset is not None:
            bopts["preset"] = preset
        if device is not None:
            bopts["device"] = device
        root = Path(set_path) if Path(set_path).is_dir() else Path(set_path).parent
        default_out = root.parent / f"{root.name}-leakage-{pixel_branch}"  # never inside the set's folder
        res = leakage_audit(set_path, pixel_branch, out or default_out, bopts,
                            parse_kv(options, "--option"), folds, seed, min_control_auc, chance_margin, log=echo_err)
        click.echo(format_report(res))
