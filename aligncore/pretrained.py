"""Detectors as folders: what ``Detector.save_pretrained`` and ``alignctl push`` write, and what
``Detector.from_pretrained`` and ``--checkpoint DIR | hf:OWNER/NAME[@REV]`` read.

A pretrained folder (a Hub model repository holds the same files)::

    aligncore.json   {"format": 1, "branches": {NAME: {"path": ".", "options": {...}, "fingerprint": ...}},
                      "fusion": {"name": ..., "options": {...}, "state": {...}}}
    README.md        the model card (branch, fingerprint, training data and command, metrics, license, limits)
    training_run.json  how the weights were trained (when they were): data, command, options, summary
    metrics.csv      the training's per-epoch validation metrics (when there were any)
    <weights>        one branch: its checkpoint files at the top, so ``--checkpoint DIR`` works as is;
    NAME/...         several branches: one folder each, holding the same files

Loading goes through the one Hub resolver (:func:`aligncore.hub.resolve_weights`: local path, then
the Hugging Face cache, a download only when allowed) and each branch's own loader, which reads
weights only through :mod:`aligncore.safeio`. A checkpoint inside the cache carries the
repository's commit into the branch fingerprint (:meth:`aligncore.Branch.fingerprint`).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from .errors import AlignCoreError, ConfigError
from .hub import HUB_PREFIX, parse_hub_ref, resolve_weights
from .parsing import read_structured
from .text import md_cell

LAYOUT_FILE = "aligncore.json"
CARD_FILE = "README.md"
TRAINING_RECORD = "training_run.json"  # written by aligncore.train.train_branch beside a trainer's output
TRAINING_METRICS = "metrics.csv"
#: what a trainer records beside the weights about their training data (digest, counts) and configs
TRAINING_DATA = "training.json"
#: files of a checkpoint folder that describe it and never decide a score
RECORD_FILES = (LAYOUT_FILE, CARD_FILE, TRAINING_RECORD, TRAINING_METRICS, TRAINING_DATA)
#: top-level entries of a checkpoint folder that are never part of the weights (resumable trainer state)
NOT_WEIGHTS = ("trainer", "state", "last", "best")
FORMAT = 1
#: branch options that say how to run, not what the detector is: never saved
RUNTIME_OPTIONS = ("checkpoint", "device", "batch_size", "allow_download")


# ---------------------------------------------------------------------- reading


def read_layout(folder: str | Path) -> dict[str, Any] | None:
    """The folder's ``aligncore.json`` (checked), or None when it has none."""
    f = Path(folder) / LAYOUT_FILE
    if not f.is_file():
        return None
    try:
        layout = read_structured(f, "checkpoint layout", "json", max_bytes=1 << 20)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{f} cannot be read ({exc}).") from None
    branches = layout.get("branches") if isinstance(layout, dict) else None
    if not isinstance(branches, dict) or not branches or not all(
            isinstance(v, dict) and (v.get("path", ".") is None or isinstance(v.get("path", "."), str))
            and isinstance(v.get("options", {}), dict)
            for v in branches.values()):
        raise ConfigError(f"{f} is not an aligncore detector description (expected a 'branches' mapping).")
    if int(layout.get("format", FORMAT)) > FORMAT:
        raise ConfigError(f"{f} was written by a newer aligncore (format {layout['format']}); upgrade aligncore.")
    return layout


def _entry_folder(folder: Path, entry: dict[str, Any]) -> Path:
    sub = (folder / entry.get("path", ".")).resolve()
    if not sub.is_relative_to(folder.resolve()):
        raise ConfigError(f"{folder / LAYOUT_FILE}: branch path {entry.get('path')!r} points outside the folder.")
    return sub


def fetch(source: str | Path, revision: str | None = None, allow_download: bool = False) -> Path:
    """A local folder for ``source``: a path, ``OWNER/NAME`` or ``hf:OWNER/NAME[@REV]`` (cache, then download if allowed)."""
    text = str(source)
    how = "(Python: allow_download=True; command line: --allow-download.)"
    if text.startswith(HUB_PREFIX):
        repo, rev = parse_hub_ref(text)
        if revision and rev and revision != rev:
            raise ConfigError(f"{text} names revision {rev!r} and revision={revision!r} was also given; give one.")
        return resolve_weights(repo, allow_download=allow_download, revision=rev or revision, how=how)
    local = Path(text).expanduser()
    if local.exists():
        return local
    repo, rev = parse_hub_ref(text)
    return resolve_weights(repo, allow_download=allow_download, revision=rev or revision, how=how)


def locate_checkpoint(spec: str, branch: str, allow_download: bool = False) -> tuple[str, dict[str, Any]]:
    """A branch's ``checkpoint`` value → (the local folder to load, the options saved with it).

    ``hf:OWNER/NAME[@REV]`` is fetched through the Hugging Face cache; a pretrained folder
    (one with ``aligncore.json``) gives the folder of ``branch`` and its saved options. Any
    other value is returned as given (the branch reports a missing or wrong folder itself).
    """
    if spec.startswith(HUB_PREFIX):
        folder = fetch(spec, allow_download=allow_download)
    else:
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            return spec, {}
    layout = read_layout(folder)
    if layout is None:
        return str(folder), {}
    entries = layout["branches"]
    if branch not in entries:
        raise ConfigError(f"{spec} holds the detector branch(es) {', '.join(sorted(entries))}, not {branch!r}: "
                          f"score it with --branches {','.join(sorted(entries))}.")
    if entries[branch].get("path", ".") is None:
        raise ConfigError(f"{spec} holds no weights for branch {branch!r} (it has none to save): score it without "
                          "--checkpoint.")
    return str(_entry_folder(folder, entries[branch])), dict(entries[branch].get("options") or {})


def detector_spec(folder: str | Path) -> dict[str, Any]:
    """{"branches": {name: {"checkpoint": dir, **saved options}}, "fusion": {...}} of a pretrained folder.

    A bare checkpoint folder (no ``aligncore.json``) names its branch in ``branch.json`` (pixel
    branches) or the branch's metadata; otherwise it is an error asking for the branch name.
    """
    folder = Path(folder)
    layout = read_layout(folder)
    if layout is None:
        name = _branch_of_checkpoint(folder)
        return {"branches": {name: {"checkpoint": str(folder)}}, "fusion": {}}
    branches = {b: {**(e.get("options") or {}),
                    **({"checkpoint": str(_entry_folder(folder, e))} if e.get("path", ".") is not None else {})}
                for b, e in layout["branches"].items()}
    return {"branches": branches, "fusion": layout.get("fusion") or {}}


def _branch_of_checkpoint(folder: Path) -> str:
    for cand in (folder, folder / "best"):
        for meta in sorted(cand.glob("*.json")) if cand.is_dir() else []:
            if meta.name in (LAYOUT_FILE, TRAINING_RECORD) or meta.name.startswith(("config", "adapter", "tokenizer",
                                                                                     "preprocessor", "processor")):
                continue
            try:
                name = read_structured(meta, "checkpoint metadata", "json", max_bytes=1 << 20).get("branch")
            except (OSError, UnicodeDecodeError, ValueError, AttributeError, ConfigError):
                continue
            if isinstance(name, str) and name:
                return name
    record = training_record(folder)
    if record.get("branch"):
        return str(record["branch"])
    raise ConfigError(f"{folder} does not say which branch wrote it (no {LAYOUT_FILE}, no branch metadata): "
                      "name the branch (alignctl push --branch NAME; Detector(branches=[NAME], "
                      "branch_options={NAME: {'checkpoint': DIR}})).")


# ---------------------------------------------------------------------- what a checkpoint says about its training


def training_record(folder: str | Path, above: bool = True) -> dict[str, Any]:
    """The ``training_run.json`` beside a checkpoint (in it, or, with ``above``, in the trainer's output folder
    above it); {} if none."""
    for cand in (Path(folder), Path(folder).parent) if above else (Path(folder),):
        f = cand / TRAINING_RECORD
        if f.is_file():
            try:
                data = read_structured(f, "training record", "json")
                return data if isinstance(data, dict) else {}
            except (OSError, UnicodeDecodeError, ValueError, ConfigError):
                return {}
    return {}


def training_metrics(folder: str | Path, above: bool = True) -> list[dict[str, str]]:
    """The rows of the training's ``metrics.csv`` beside a checkpoint ([] if none)."""
    for cand in (Path(folder), Path(folder).parent) if above else (Path(folder),):
        f = cand / TRAINING_METRICS
        if f.is_file():
            with open(f, newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
    return []


def training_data(folder: str | Path) -> dict[str, Any]:
    """The ``data`` entry of the trainer's ``training.json`` beside the weights ({} if none)."""
    f = Path(folder) / TRAINING_DATA
    try:
        data = read_structured(f, "training data record", "json").get("data") if f.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, ConfigError):
        data = None
    return data if isinstance(data, dict) else {}


def _record_paths(folder: Path) -> dict[str, Path]:
    out = {}
    for name in (TRAINING_DATA, TRAINING_RECORD, TRAINING_METRICS):
        for cand in (folder, folder.parent):
            if (cand / name).is_file():
                out[name] = cand / name
                break
    return out


# ---------------------------------------------------------------------- writing


def saved_options(branch) -> dict[str, Any]:
    """The branch options a user set that say what the detector is (no paths, devices or batch sizes)."""
    opts = branch.config.model_dump(mode="json", exclude_unset=True)
    return {k: v for k, v in opts.items() if k not in RUNTIME_OPTIONS}


def checkpoint_files(folder: Path) -> list[Path]:
    """Files of a checkpoint folder that a copy needs (relative), without trainer state and records."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and rel.parts[0] not in NOT_WEIGHTS and rel.as_posix() not in RECORD_FILES \
                and not any(part.startswith(".") for part in rel.parts):
            out.append(rel)
    return out


def write_pretrained(out: str | Path, branches: Sequence, fusion=None, *, repo_id: str | None = None,
                     license: str | None = None, eval_run: str | Path | None = None) -> Path:
    """Write ``branches`` (and ``fusion``) as a pretrained folder at ``out``; returns ``out``.

    A branch with a checkpoint is copied from it (trainer state left out); one without is saved
    from its loaded weights (``Branch.save``), or holds only its options when it has no weights.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise AlignCoreError(f"{out} exists and is not empty; choose an empty or new folder.")
    out.mkdir(parents=True, exist_ok=True)
    single = len(branches) == 1
    entries: dict[str, dict[str, Any]] = {}
    cards = []
    for b in branches:
        dest = out if single else out / b.name
        dest.mkdir(parents=True, exist_ok=True)
        src = b.checkpoint_folder() if b.config.checkpoint else None
        if src is not None:
            for rel in checkpoint_files(src):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, dest / rel)
            for name, p in _record_paths(src).items():
                shutil.copy2(p, dest / name)
            note = None
        else:
            note = _save_loaded(b, dest)
            if note is None and b.random_weights:
                note = (f"RANDOM weights (preset {b.config.preset!r}): saved for tests and demonstrations, "
                        "this detector has learnt nothing")
        # the fingerprint and provenance of the branch as it loads from the written folder
        has_weights = any(p.is_file() and p.name not in RECORD_FILES for p in dest.rglob("*"))
        if not has_weights and not single:
            shutil.rmtree(dest)
        reloaded = type(b)({**saved_options(b), "checkpoint": str(dest)}) if has_weights else b
        entries[b.name] = {"path": ("." if single else b.name) if has_weights else None, "options": saved_options(b),
                           "fingerprint": reloaded.fingerprint(), "weights": reloaded.weights_provenance()}
        cards.append(_branch_card(b.name, entries[b.name], dest, note))
    layout = {"format": FORMAT, "library": "aligncore", "branches": entries}
    from . import __version__

    layout["aligncore_version"] = __version__
    if fusion is not None:
        layout["fusion"] = {"name": fusion.name, "options": fusion.config.model_dump(mode="json", exclude_unset=True),
                            "state": fusion.state_dict()}
    (out / LAYOUT_FILE).write_text(json.dumps(layout, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    evaluation = _eval_metrics(eval_run) if eval_run else None
    (out / CARD_FILE).write_text(model_card(layout, cards, repo_id=repo_id, license=license, evaluation=evaluation),
                                 encoding="utf-8")
    return out


def _save_loaded(branch, dest: Path) -> str | None:
    """Save a branch without a checkpoint from its weights; a note when there are none to save."""
    try:
        branch.ensure_loaded().save(dest)
    except AlignCoreError as exc:
        return f"no weights saved ({exc})"
    return None


def export_checkpoint(checkpoint: str | Path, out: str | Path, branch: str | None = None, *,
                      repo_id: str | None = None, license: str | None = None,
                      eval_run: str | Path | None = None) -> Path:
    """A trained checkpoint (a trainer's ``--out`` or its weights folder) → a pretrained folder at ``out``."""
    from .registry import get_registry

    ck = Path(checkpoint).expanduser()
    if not ck.exists():
        raise AlignCoreError(f"checkpoint {ck} does not exist.")
    layout = read_layout(ck)
    if layout is not None:
        spec = detector_spec(ck)
        names = list(spec["branches"])
        branches = [get_registry().create("branch", n, None, **{**o, "device": "cpu"}) for n, o in spec["branches"].items()]
        if branch and branch not in names:
            raise AlignCoreError(f"{ck} holds branch(es) {', '.join(names)}, not {branch!r}.")
        fusion = None
        if spec["fusion"].get("name"):
            fusion = get_registry().create("fusion", spec["fusion"]["name"], spec["fusion"].get("options") or {})
            if spec["fusion"].get("state"):
                fusion.load_state_dict(spec["fusion"]["state"])
        return write_pretrained(out, branches, fusion, repo_id=repo_id, license=license, eval_run=eval_run)
    name = branch or _branch_of_checkpoint(ck)
    b = get_registry().create("branch", name, None, checkpoint=str(ck), device="cpu")
    return write_pretrained(out, [b], None, repo_id=repo_id, license=license, eval_run=eval_run)


def _eval_metrics(run_dir: str | Path) -> dict[str, Any]:
    from .rundir import RunDir

    rd = RunDir.open(run_dir)
    cfg = rd.config
    return {"run_id": rd.run_id, "dataset": cfg.get("dataset_name") or Path((cfg.get("dataset") or {}).get("root", "")).name,
            "perturb": cfg.get("perturb"), "overall": rd.metrics().get("overall", {}),
            "fusion": cfg.get("fusion"), "branches": cfg.get("branches")}


# ---------------------------------------------------------------------- the model card


METRIC_NAMES = {"val_auc": "ROC-AUC", "val_ap": "AP", "val_balanced_accuracy": "balanced accuracy", "val_loss": "loss",
                "train_loss": "train loss"}
EVAL_METRICS = (("accuracy", "accuracy at the threshold"), ("balanced_accuracy", "balanced accuracy"), ("ap", "AP"),
                ("auc", "ROC-AUC"), ("eer", "EER"), ("tpr_at_5fpr", "TPR at 5% FPR"), ("tpr_at_1fpr", "TPR at 1% FPR"))


def _fmt(v: Any) -> str:
    if v in (None, ""):
        return "n/a"
    try:
        return f"{float(v):.4f}"
    except (TypeError, ValueError):
        return str(v)


def _md(text: Any) -> str:
    """A value inside a code span (`...`) of a table cell: pipes escaped so it cannot break the table, control
    characters shown as escapes, and no backtick, so it cannot close the span and be read as Markdown or HTML
    (names come from the checkpoint's files, which may be anyone's)."""
    from .text import terminal_text

    return terminal_text(str(text)).replace("\\", "\\\\").replace("|", "\\|").replace("`", "'")


def _branch_card(name: str, entry: dict[str, Any], folder: Path, note: str | None) -> dict[str, Any]:
    record = training_record(folder, above=False) if folder.is_dir() else {}
    rows = training_metrics(folder, above=False) if folder.is_dir() else []
    best = None
    if rows:  # the epoch whose weights were kept (the trainer's record says which), else the last
        kept = (record.get("summary") or {}).get("best_epoch")
        best = next((r for r in rows if str(r.get("epoch")) == str(kept)), rows[-1])
    data = training_data(folder) if folder.is_dir() else {}
    return {"name": name, "entry": entry, "record": record, "data": data, "best": best, "epochs": len(rows),
            "note": note}


def model_card(layout: dict[str, Any], branches: list[dict[str, Any]], *, repo_id: str | None = None,
               license: str | None = None, evaluation: dict[str, Any] | None = None) -> str:
    """The README.md of a pretrained folder: Hub metadata, then what the detector is and how it was made."""
    names = list(layout["branches"])
    title = repo_id or "aligncore detector"
    lic = license or "unknown"
    lines = ["---", f"license: {lic}", "library_name: aligncore", "pipeline_tag: image-classification",
             "tags:", "- aligncore", "- ai-generated-image-detection", *[f"- {_md(n)}" for n in names], "---", "",
             f"# {title}", "",
             f"An aligncore detector of AI-generated images: branch"
             f"{'es' if len(names) > 1 else ''} {', '.join(f'`{_md(n)}`' for n in names)}"
             + (f", fused with `{layout['fusion']['name']}`" if layout.get("fusion") else "")
             + ". Each branch gives P(fake) in [0, 1] per image.", "",
             "## Use", "", "```bash"]
    ref = f"hf:{repo_id}" if repo_id else "DIR"
    ck = " ".join(f"--checkpoint {n}={ref}" for n in names) if len(names) > 1 else f"--checkpoint {ref}"
    lines += [f"alignctl run --branches {','.join(names)} {ck} --data IMAGES", "```", "", "```python", "import aligncore", "",
              f'detector = aligncore.Detector.from_pretrained("{repo_id or "DIR"}")',
              'for p in detector.predict(["photo.jpg"]):', "    print(p.source, p.score, p.verdict)", "```", "",
              "Files load offline from the Hugging Face cache (`HF_HUB_OFFLINE=1`); aligncore downloads only when "
              "allowed (`--allow-download`, `allow_download=True`) and reads weights only as safetensors.", ""]
    for b in branches:
        e, rec = b["entry"], b["record"]
        lines += [f"## Branch `{_md(b['name'])}`", "", "| field | value |", "|---|---|",
                  f"| branch | `{_md(b['name'])}` |", f"| fingerprint | `{_md(e.get('fingerprint'))}` |",
                  f"| weights | `{_md(e.get('weights'))}` |",
                  f"| options | `{_md(json.dumps(e.get('options') or {}, sort_keys=True))}` |", ""]
        if b["note"]:
            lines += [f"Note: {b['note']}.", ""]
        lines += ["The fingerprint is the key of this branch's scores in aligncore's score store when the weights "
                  "are loaded from a folder; loaded as `hf:OWNER/NAME`, the repository's commit is added to it.", ""]
        lines += ["### Training", ""]
        data = b["data"]
        if data.get("n_images") is not None:
            source = Path(str(data.get("source") or "")).name or (rec.get("train_set") if rec else None) or "n/a"
            lines += [f"- data: `{_md(source)}`: {data['n_images']} images ({data.get('n_real', '?')} real, "
                      f"{data.get('n_fake', '?')} fake), content digest `{_md(str(data.get('digest', ''))[:16])}`"]
        if rec:
            summary = rec.get("summary") or {}
            lines += ([] if data.get("n_images") is not None else [f"- data: `{_md(rec.get('train_set') or 'n/a')}`"])
            lines += [f"- split: {summary.get('n_train')} training / {summary.get('n_val')} validation images"
                      if summary.get("n_train") is not None else "- split: n/a",
                      f"- command: `{_md(rec.get('command') or 'n/a (trained through the Python API)')}`",
                      f"- method: {md_cell(rec.get('method') or 'n/a')}; options: "
                      f"`{_md(json.dumps(rec.get('train_options') or {}, sort_keys=True))}`",
                      f"- stopped: {md_cell(summary.get('stop_reason') or 'n/a')} after {md_cell(summary.get('steps'))} steps",
                      f"- aligncore {md_cell(rec.get('aligncore_version') or '?')}", ""]
        elif data:
            lines.append("")
        else:
            lines += ["No training record: these weights were not trained with `alignctl train` (or the record was "
                      "not kept)." + (" They are RANDOM (a test preset): the detector has learnt nothing."
                                      if str(e.get("weights")) == "random" else ""), ""]
        lines += ["### Metrics", ""]
        if b["best"]:
            best = b["best"]
            cells = [(METRIC_NAMES[k], _fmt(best.get(k))) for k in ("val_auc", "val_ap", "val_balanced_accuracy", "val_loss")
                     if k in best]
            epoch = int(best["epoch"]) + 1 if str(best.get("epoch", "")).isdigit() else best.get("epoch")
            lines += [f"Validation during training (held-out split of the training data; epoch {epoch} of "
                      f"{b['epochs']}, the weights kept):", "", "| metric | value |", "|---|---|",
                      *[f"| {k} | {v} |" for k, v in cells], ""]
        else:
            lines += ["No validation metrics were recorded with these weights.", ""]
    if evaluation:
        o = evaluation.get("overall") or {}
        lines += ["## Evaluation", "",
                  f"Run `{_md(evaluation.get('run_id'))}` on `{_md(evaluation.get('dataset'))}`"
                  + (f" (perturbation {evaluation['perturb']})" if evaluation.get("perturb") else "")
                  + f": {o.get('n', 'n/a')} images ({o.get('n_real', '?')} real, {o.get('n_fake', '?')} fake), "
                  f"branches {', '.join(evaluation.get('branches') or [])}, fusion {evaluation.get('fusion')}.", "",
                  "| metric | value |", "|---|---|",
                  *[f"| {label} | {_fmt(o.get(k))} |" for k, label in EVAL_METRICS if k in o], ""]
    lines += ["## Limits", "",
              "- Detectors of generated images fail on generators and post-processing (resizing, re-compression, "
              "screenshots) unlike their training data; measure on your own data before trusting a verdict.",
              "- A score is P(fake) from this model, not a calibrated probability; the verdict threshold is 0.5 "
              "unless a fusion was calibrated.",
              "- The metrics above were measured on the data named there only.",
              f"- License: {lic}" + (" (not stated: ask the authors before reuse)." if lic == "unknown" else "."), ""]
    return "\n".join(lines)
