"""Scoring runs: dataset → branch preprocessing → batched scores → store → fusion → report.

Every branch score goes to the SQLite store as soon as its batch is done, keyed by
(image sha256, branch fingerprint). A run that is killed and started again, a second
run on overlapping data, or a re-fusion scores only what is missing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .config import RunConfig
from .data import Record, load_dataset
from .data.images import ImageLoadError, load_image
from .errors import AlignCoreError
from .metrics import compute_metrics
from .registry import get_registry
from .distributed import DistContext, merge_shards
from .store import ScoreStore, sha256_file

PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
RUN_INFO = "run.json"
SKIPPED = "skipped.csv"


@dataclass
class BranchStats:
    fingerprint: str
    scored: int = 0
    reused: int = 0
    failed: int = 0


@dataclass
class RunResult:
    run_id: str
    out_dir: Path
    metrics: dict
    branches: dict[str, BranchStats]
    skipped: list[tuple[str, str]]
    predictions: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------- data loading


class _ImageDataset:
    """(index, path) items → (index, preprocessed input or None, error or None). Never raises."""

    def __init__(self, items: Sequence[tuple[int, str]], preprocess: Callable, perturb: Callable | None = None):
        self.items = list(items)
        self.preprocess = preprocess
        self.perturb = perturb

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        idx, path = self.items[i]
        try:
            img = load_image(path)
        except ImageLoadError as exc:
            return idx, None, exc.reason
        try:
            if self.perturb is not None:
                img = self.perturb(img)
        except Exception as exc:
            return idx, None, f"perturbation failed: {type(exc).__name__}: {exc}"
        try:
            return idx, self.preprocess(img), None
        except Exception as exc:
            return idx, None, f"preprocessing failed: {type(exc).__name__}: {exc}"


class _Collate:
    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, items):
        ok = [(i, x) for i, x, e in items if e is None]
        errors = [(i, e) for i, x, e in items if e is not None]
        xs = [x for _, x in ok]
        return [i for i, _ in ok], xs, (self.collate(xs) if xs else None), errors


def iter_batches(branch, items: Sequence[tuple[int, str]], batch_size: int, workers: int, pin: bool,
                 perturb: Callable | None = None):
    """Yield (indices, raw items, collated batch, [(index, error)]) through a torch DataLoader."""
    from torch.utils.data import DataLoader

    ds = _ImageDataset(items, branch.preprocess, perturb)
    loader = DataLoader(
        ds,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_Collate(branch.collate),
        pin_memory=pin,
        persistent_workers=False,
    )
    yield from loader


def _size_bucket(path: str) -> tuple[float, int]:
    """(aspect ratio to 0.1, pixel count) from the image header only, so a batch holds like-sized images.

    Branches whose inputs vary in length with the image (a VLM's visual tokens) set
    ``bucket_by_size`` and pad far less; scores do not depend on the order.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:  # unreadable here: the loader reports it in its turn
        return (0.0, 0)
    return (round(w / max(h, 1), 1), w * h)


def score_with_fallback(branch, xs: list, batch) -> tuple[list[float | None], list[str | None]]:
    """Score a batch; if the batch raises, score image by image so one bad image fails alone.

    A score that is not a number in [0, 1] (NaN, inf, a logit) is that image's error, never stored.
    """
    try:
        scores = [float(s) for s in branch.score_batch(batch)]
        if len(scores) != len(xs):
            raise AlignCoreError(f"branch {branch.name!r} returned {len(scores)} scores for {len(xs)} images")
        return _checked(scores, [None] * len(xs))
    except Exception as batch_exc:
        if len(xs) == 1:
            return [None], [f"{type(batch_exc).__name__}: {batch_exc}"]
        out_s: list[float | None] = []
        out_e: list[str | None] = []
        for x in xs:
            try:
                out_s.append(float(branch.score_batch(branch.collate([x]))[0]))
                out_e.append(None)
            except Exception as exc:
                out_s.append(None)
                out_e.append(f"{type(exc).__name__}: {exc}")
        return _checked(out_s, out_e)


def _checked(scores: list[float | None], errors: list[str | None]) -> tuple[list[float | None], list[str | None]]:
    for k, s in enumerate(scores):
        if s is not None and not (math.isfinite(s) and 0.0 <= s <= 1.0):
            scores[k], errors[k] = None, f"invalid score {s!r} (a branch must return P(fake) in [0, 1])"
    return scores, errors


# ---------------------------------------------------------------------- the run


def make_run_id(config: RunConfig) -> str:
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return time.strftime("%Y%m%d-%H%M%S") + "-" + hashlib.sha256(blob + str(time.time_ns()).encode()).hexdigest()[:6]


def branch_overrides(config: RunConfig, name: str) -> dict[str, Any]:
    ov: dict[str, Any] = {"device": config.device}
    if config.preset is not None:
        ov["preset"] = config.preset
    if config.batch_size is not None:
        ov["batch_size"] = config.batch_size
    ov.update(config.branch_options.get(name, {}))
    return ov


def hash_records(records: Sequence[Record]) -> tuple[list[str | None], list[tuple[str, str]]]:
    hashes: list[str | None] = []
    unreadable = []
    for r in records:
        try:
            hashes.append(sha256_file(r.path))
        except OSError as exc:
            hashes.append(None)
            unreadable.append((r.path, f"cannot read file ({exc.strerror or exc})"))
    return hashes, unreadable


def score_branch(branch, records: Sequence[Record], hashes: Sequence[str | None], store: ScoreStore,
                 workers: int = 0, explain: bool = False, progress: bool = True,
                 perturb: str | None = None, write_store: ScoreStore | None = None,
                 shard: tuple[int, int] = (0, 1)) -> tuple[BranchStats, dict[str, str]]:
    """Score every image whose (hash, fingerprint) is not in the store; returns stats and load errors by hash.

    With ``perturb`` (a spec such as ``jpeg:75``) every image is perturbed before preprocessing and
    the scores are stored under the fingerprint plus the spec, never mixed with clean scores.
    With ``shard=(rank, world)`` this process takes every ``world``-th missing image and
    writes to ``write_store`` (its shard); the missing list is the same on every rank.
    """
    import torch

    from .perturb import parse_perturb, perturbed_fingerprint

    chain = parse_perturb(perturb)
    fp = perturbed_fingerprint(branch.fingerprint(), chain.spec if chain else None)
    stats = BranchStats(fp)
    unique: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h is not None and h not in unique:
            unique[h] = i
    have = store.known(fp, unique)
    missing = [(i, records[i].path) for h, i in unique.items() if h not in have]
    stats.reused = len(unique) - len(missing)
    rank, world = shard
    todo = missing[rank::world]
    if write_store is not None and write_store is not store:
        done_here = write_store.known(fp, [hashes[i] for i, _ in todo])  # a resumed rank's own earlier work
        todo = [(i, p) for i, p in todo if hashes[i] not in done_here]
    target = write_store or store
    load_errors: dict[str, str] = {}
    if not todo:
        return stats, load_errors
    if getattr(branch, "bucket_by_size", False):
        todo = sorted(todo, key=lambda item: _size_bucket(item[1]))
    branch.ensure_loaded()
    pin = str(branch.device).startswith("cuda")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"score {branch.name}", unit="img", dynamic_ncols=True, leave=False)
    want_explain = explain and getattr(branch, "supports_explain", False)
    with torch.inference_mode():
        for idxs, xs, batch, errors in iter_batches(branch, todo, branch.config.batch_size, workers, pin, chain):
            for i, err in errors:
                load_errors[hashes[i]] = err  # type: ignore[index]
            rows = []
            if idxs:
                scores, errs = score_with_fallback(branch, xs, batch)
                expl = branch.explain_batch(batch) if want_explain else None
                for k, i in enumerate(idxs):
                    if errs[k] is None:
                        rows.append((hashes[i], scores[k], expl[k] if expl else None, None))
                        stats.scored += 1
                    else:
                        load_errors[hashes[i]] = f"branch {branch.name!r} failed: {errs[k]}"  # type: ignore[index]
                        stats.failed += 1
            if rows:
                target.put_scores(fp, branch.name, rows)
            if bar is not None:
                bar.update(len(idxs) + len(errors))
    if bar is not None:
        bar.close()
    return stats, load_errors


def run(config: RunConfig, progress: bool = True, log: Callable[[str], None] | None = None) -> RunResult:
    """Score ``config.data`` with every branch, fuse, and write the run directory."""
    reg = get_registry()
    # Resolve every name before any work, so a typo fails in a second, not after scoring.
    for b in config.branches:
        reg.get("branch", b)
    fusion = reg.create("fusion", config.fusion, config.fusion_options)
    branches = [reg.create("branch", b, None, **branch_overrides(config, b)) for b in config.branches]
    dataset = load_dataset(config.data, allow_outside=config.allow_outside_paths)
    dist = DistContext.from_env()
    if dist.enabled and not config.out:
        raise AlignCoreError("a distributed run needs --out (alignctl run --num-processes sets it for you).")
    out = Path(config.out or Path("runs") / make_run_id(config))
    # every rank must agree on the id, so a distributed run is named after its directory
    run_id = make_run_id(config) if (config.out and not dist.enabled) else out.name
    if dist.is_main:
        _prepare_out_dir(out)
    records = dataset.records
    hashes, unreadable = hash_records(records)
    store = ScoreStore(config.store)
    shard_dir = out / "shards"
    rank_store = None
    try:
        if dist.enabled:
            if dist.is_main:
                merge_shards(shard_dir, store)  # what a killed earlier attempt left behind
                shard_dir.mkdir(parents=True, exist_ok=True)
            dist.barrier()
            rank_store = ScoreStore(shard_dir / f"rank{dist.rank}.sqlite")
        stats: dict[str, BranchStats] = {}
        errors_by_hash: dict[str, dict[str, str]] = {}
        for br in branches:
            if log and dist.is_main:
                log(f"branch {br.name}: fingerprint {br.fingerprint()}")
            st, errs = score_branch(br, records, hashes, store, config.workers, config.explain,
                                    progress and dist.is_main, config.perturb, rank_store, (dist.rank, dist.world))
            stats[br.name] = st
            for h, e in errs.items():
                errors_by_hash.setdefault(h, {})[br.name] = e
        if dist.enabled:
            rank_store.close()  # type: ignore[union-attr]
            _write_json(shard_dir / f"rank{dist.rank}.json",
                        {"stats": {k: vars(v) for k, v in stats.items()}, "errors": errors_by_hash})
            dist.barrier()
            if not dist.is_main:
                return RunResult(run_id, out, {}, stats, [], [])
            stats, errors_by_hash = _gather_rank_reports(shard_dir, stats)
            merge_shards(shard_dir, store)
        fingerprints = {b.name: stats[b.name].fingerprint for b in branches}
        resolved = config.model_dump(mode="json")
        resolved.update(
            run_id=run_id,
            out=str(out),
            store=str(store.path),
            fingerprints=fingerprints,
            checkpoints={b.name: b.config.checkpoint for b in branches if b.config.checkpoint},
            branch_configs={b.name: b.config.model_dump(mode="json") for b in branches},
            dataset={"root": dataset.root, "layout": dataset.layout, "n_records": len(records)},
        )
        table = build_score_table(records, hashes, store, fingerprints, errors_by_hash, unreadable)
        metrics = fuse_and_report(table, fusion, out, resolved, store, run_id)
        _write_json(out / RUN_INFO, {
            "run_id": run_id,
            "config": resolved,
            "branches": {k: vars(v) for k, v in stats.items()},
            "skipped": len(table["skipped"]),
        })
        store.add_run(run_id, "run", str(out), resolved, {"branches": {k: vars(v) for k, v in stats.items()}})
        return RunResult(run_id, out, metrics, stats, table["skipped"], table["rows"])
    finally:
        store.close()


def _gather_rank_reports(shard_dir: Path, mine: dict[str, BranchStats]) -> tuple[dict[str, BranchStats], dict]:
    """Sum every rank's counts and collect every rank's per-image errors (rank 0 only)."""
    total = {k: BranchStats(v.fingerprint, 0, v.reused, 0) for k, v in mine.items()}
    errors: dict[str, dict[str, str]] = {}
    for rep in sorted(shard_dir.glob("rank*.json")):
        data = json.loads(rep.read_text())
        for name, st in data["stats"].items():
            total[name].scored += st["scored"]
            total[name].failed += st["failed"]
        for h, errs in data["errors"].items():
            errors.setdefault(h, {}).update(errs)
        rep.unlink()
    return total, errors


def build_score_table(records, hashes, store: ScoreStore, fingerprints: dict[str, str],
                      errors_by_hash: dict[str, dict[str, str]] | None = None,
                      unreadable: Sequence[tuple[str, str]] = ()) -> dict:
    """Rows of (record, per-branch score) for every image that at least one branch scored."""
    errors_by_hash = errors_by_hash or {}
    per_branch = {b: store.get_scores(fp, [h for h in hashes if h]) for b, fp in fingerprints.items()}
    rows, skipped = [], list(unreadable)
    for r, h in zip(records, hashes):
        if h is None:
            continue
        scores = {b: (per_branch[b].get(h, (None,))[0]) for b in fingerprints}
        errs = errors_by_hash.get(h, {})
        if all(s is None for s in scores.values()):
            reason = "; ".join(sorted(set(errs.values()))) or "not scored"
            skipped.append((r.path, reason))
            continue
        rows.append({
            "path": r.path, "sha256": h, "label": r.label, "generator": r.generator, "subset": r.subset,
            "scores": {b: (math.nan if s is None else float(s)) for b, s in scores.items()},
            "error": "; ".join(f"{b}: {e}" for b, e in sorted(errs.items())) or None,
        })
    return {"rows": rows, "skipped": skipped, "branches": list(fingerprints)}


def fuse_and_report(table: dict, fusion, out: Path, resolved: dict, store: ScoreStore | None, run_id: str) -> dict:
    """Apply ``fusion`` to the score table and write predictions, metrics, config and skipped files."""
    rows, names = table["rows"], table["branches"]
    scores = {b: np.array([r["scores"][b] for r in rows], dtype=float) for b in names}
    if getattr(fusion, "needs_fit", False) and not resolved.get("fusion_state"):
        raise AlignCoreError(
            f"fusion {fusion.name!r} must be fitted on labelled scores first; "
            "fit it on a calibration split (alignctl ablate) and pass its state, or choose a rule such as 'or'."
        )
    if resolved.get("fusion_state"):
        fusion.load_state_dict(resolved["fusion_state"])
    fused = fusion.predict(scores) if rows else None
    pred_rows = []
    for k, r in enumerate(rows):
        row = {"path": r["path"], "sha256": r["sha256"], "label": "" if r["label"] is None else r["label"],
               "generator": r["generator"] or "", "subset": r["subset"] or ""}
        for b in names:
            s = r["scores"][b]
            row[f"score_{b}"] = "" if math.isnan(s) else f"{s:.6f}"
        fs = float(fused.score[k])
        row["fused_score"] = "" if math.isnan(fs) else f"{fs:.6f}"
        row["verdict"] = "fake" if fused.verdict[k] else "real"
        row["error"] = r["error"] or ""
        pred_rows.append(row)
    _write_csv(out / PREDICTIONS, pred_rows, ["path", "sha256", "label", "generator", "subset",
                                              *[f"score_{b}" for b in names], "fused_score", "verdict", "error"])
    _write_csv(out / SKIPPED, [{"path": p, "reason": why} for p, why in table["skipped"]], ["path", "reason"])
    metrics = compute_metrics(
        [r["label"] for r in rows],
        fused.score if fused is not None else [],
        fused.verdict if fused is not None else [],
        [r["generator"] for r in rows],
        [r["subset"] for r in rows],
    )
    metrics["fusion"] = {"name": fusion.name, "config": fusion.config.model_dump(mode="json"), "state": fusion.state_dict()}
    metrics["skipped"] = len(table["skipped"])
    metrics["per_branch"] = {
        b: compute_metrics([r["label"] for r in rows], scores[b], scores[b] >= 0.5)["overall"] for b in names
    }
    _write_json(out / METRICS, metrics)
    _write_yaml(out / "config.yaml", resolved)
    if store is not None:
        store.add_leaderboard_row(
            run_id=run_id,
            dataset=resolved.get("dataset_name") or Path(resolved["dataset"]["root"]).name,
            branches=names,
            fusion=fusion.name,
            metrics=metrics,
            checkpoints=resolved.get("checkpoints"),
            fusion_config=fusion.config.model_dump(mode="json"),
            suite=resolved.get("suite"),
            perturb=resolved.get("perturb"),
        )
    return metrics


def refuse(run_dir: str | Path, fusion_name: str, fusion_options: dict | None = None,
           store_path: str | None = None, fusion_state: dict | None = None) -> tuple[Path, dict]:
    """Re-fuse a finished run from its stored scores (no model is loaded); writes RUN/fusions/<name>/."""
    run_dir = Path(run_dir)
    info_path = run_dir / RUN_INFO
    if not info_path.exists():
        raise AlignCoreError(f"{run_dir} is not a finished run directory (no {RUN_INFO}).")
    info = json.loads(info_path.read_text())
    resolved = dict(info["config"])
    fusion = get_registry().create("fusion", fusion_name, fusion_options or {})
    rows = _read_csv(run_dir / PREDICTIONS)
    records = [Record(r["path"], int(r["label"]) if r["label"] != "" else None, r["generator"] or None, r["subset"] or None)
               for r in rows]
    hashes = [r["sha256"] for r in rows]
    store = ScoreStore(store_path or resolved.get("store"))
    try:
        table = build_score_table(records, hashes, store, resolved["fingerprints"])
        missing = len(records) - len(table["rows"])
        if missing:
            raise AlignCoreError(f"{missing} images of run {info['run_id']} have no stored scores in {store.path}; "
                                 "re-run `alignctl run` with the same config to restore them.")
        table["skipped"] = [(r["path"], r["reason"]) for r in _read_csv(run_dir / SKIPPED)] if (run_dir / SKIPPED).exists() else []
        out = run_dir / "fusions" / fusion_name
        out.mkdir(parents=True, exist_ok=True)
        resolved.update(fusion=fusion_name, fusion_options=fusion_options or {}, fusion_state=fusion_state)
        sub_id = f"{info['run_id']}+{fusion_name}"
        metrics = fuse_and_report(table, fusion, out, resolved, store, sub_id)
        store.add_run(sub_id, "fuse", str(out), resolved)
        return out, metrics
    finally:
        store.close()


# ---------------------------------------------------------------------- small file helpers


def _prepare_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise AlignCoreError(f"cannot write to the run directory {out}: {exc.strerror or exc}. Choose another with --out.") from None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise AlignCoreError(
            f"cannot write {path}: {exc.strerror or exc}. Free disk space or choose another --out; "
            "the scores are already in the store, so a re-run only rewrites the reports."
        ) from None


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _write_yaml(path: Path, obj: Any) -> None:
    import yaml

    _atomic_write(path, yaml.safe_dump(json.loads(json.dumps(obj, default=_json_default)), sort_keys=True))


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _atomic_write(path, buf.getvalue())


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
