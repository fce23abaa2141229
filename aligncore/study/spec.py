"""The study file: a pydantic schema, read from YAML with the line of every field kept for errors.

A study names ``sets`` (built by a registered builder from sources, an existing folder or manifest,
or the union of other sets), ``models`` (a branch trained on a set, a checkpoint, or zero-shot),
``evaluate`` (datasets and perturbations every model is scored on), ``fusions`` (fusion rules
compared on two or more models' scores), ``audits`` (registered checks of a set) and ``seeds``.
Every error names the file, the line and the field, and all of them are reported before any work:
the schema here, then the names and options (:func:`check_study`) against the registry.

Strings in sources, paths and options may use ``${data}`` (the data root, see :mod:`.data`) and
``${NAME}`` for a variable declared under ``vars`` (``--var NAME=VALUE`` on the command line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..component import close_matches
from ..errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
DATA_VAR = "data"
#: what a table row knows besides tags, per source
SCORE_FIELDS = ("model", "branch", "train_set", "dataset", "perturb", "seed")
FUSION_FIELDS = ("fusion", "method", "dataset", "perturb", "group", "seed")
AUDIT_FIELDS = ("audit", "set")
FIELDS = {"scores": SCORE_FIELDS, "fusions": FUSION_FIELDS, "audits": AUDIT_FIELDS}
SCORE_METRICS = ("accuracy", "real_accuracy", "fake_accuracy", "balanced_accuracy", "ap", "auc", "tpr_at_1fpr",
                 "tpr_at_5fpr")
FUSION_METRICS = ("accuracy", "real_accuracy", "fake_accuracy", "balanced_accuracy", "ap", "auc", "tpr_at_5fpr")


class StudyModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Var(StudyModel):
    default: str | None = Field(None, description="Value when --var does not set it (None: must be given where used).")
    help: str = Field("", description="What the variable holds (shown in errors and `alignctl study show`).")


class SetSpec(StudyModel):
    builder: str | None = Field(None, description="A registered builder (alignctl builders) that makes the set from sources.")
    sources: list[str] = Field(default_factory=list, description="Builder sources: '${data}/train', another set's name, "
                               "or a folder/manifest; a 'real=' / 'fake=' prefix is passed on to the builder.")
    options: dict[str, Any] = Field(default_factory=dict, description="Builder options.")
    path: str | None = Field(None, description="An existing labelled folder or manifest (instead of a builder).")
    mix: list[str] | None = Field(None, description="The union of these sets (instead of a builder).")
    tiny: dict[str, Any] = Field(default_factory=dict, description="Builder options merged in at --scale tiny.")
    tags: dict[str, str] = Field(default_factory=dict, description="Labels for the report's tables (e.g. decoder: vae-1).")

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("builder", "path", "mix") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of builder (+ sources), path or mix"
                             + (f" (found {', '.join(kinds)})" if kinds else ""))
        if self.builder is not None and not self.sources:
            raise ValueError("a builder set needs sources")
        if self.builder is None and (self.sources or self.options or self.tiny):
            raise ValueError("sources, options and tiny belong to a builder set")
        if self.mix is not None and len(self.mix) < 2:
            raise ValueError("mix needs at least two sets")
        return self


class TinyModel(StudyModel):
    options: dict[str, Any] = Field(default_factory=dict, description="Branch options merged in at --scale tiny.")
    train: dict[str, Any] = Field(default_factory=dict, description="Training options merged in at --scale tiny.")


class ModelSpec(StudyModel):
    branch: str = Field(..., description="A registered branch (alignctl branches).")
    train_on: str | None = Field(None, description="The set that trains it.")
    checkpoint: str | None = Field(None, description="A trained checkpoint folder (instead of train_on).")
    zero_shot: bool = Field(False, description="Score with the branch as configured (instead of train_on).")
    options: dict[str, Any] = Field(default_factory=dict, description="Branch options.")
    train: dict[str, Any] = Field(default_factory=dict, description="Training options (alignctl train BRANCH --options).")
    tiny: TinyModel = Field(default_factory=TinyModel, description="Options merged in at --scale tiny.")
    evaluate_on: list[str] | None = Field(None, description="Score it on these datasets only (default: evaluate.datasets).")
    tags: dict[str, str] = Field(default_factory=dict, description="Labels for the report's tables (e.g. supervision: pixel).")

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k, v in (("train_on", self.train_on), ("checkpoint", self.checkpoint), ("zero_shot", self.zero_shot))
                 if v]
        if len(given) != 1:
            raise ValueError("give exactly one of train_on, checkpoint or zero_shot: true"
                             + (f" (found {', '.join(given)})" if given else ""))
        if self.train and not self.train_on:
            raise ValueError("training options need train_on")
        return self


def _perturbation(v: Any) -> str | None:
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "clean")):
        return None
    from ..perturb import normalize_perturb

    try:
        return normalize_perturb(str(v))
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


#: one perturbation of a list (none/clean/null for the images as they are), normalised, its error at its index
Perturbation = Annotated[str | None, BeforeValidator(_perturbation)]


class EvaluateSpec(StudyModel):
    datasets: list[str] = Field(..., min_length=1, description="Sets every model is scored on.")
    perturbations: list[Perturbation] = Field([None], min_length=1, description="Perturbations applied at scoring "
                                              "(none, jpeg:75, blur:1.0, ... chained with '+').")
    models: list[str] | None = Field(None, description="Models to score (default: every model).")

    @field_validator("perturbations")
    @classmethod
    def _perturbations(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("a perturbation is listed twice")
        return v


class FusionSpec(StudyModel):
    models: list[str] = Field(..., min_length=2, description="Models whose scores are fused (different branches).")
    rules: list[str] = Field(["or", "and", "max", "weighted", "learned"], min_length=1,
                             description="Fusion rules compared (alignctl fusions).")
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Options per rule.")
    target_fpr: float | None = Field(0.05, ge=0.0, lt=1.0, description="Calibrate every threshold on the calibration "
                                     "reals to this false-positive rate (None: configured thresholds).")
    cal_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="Share of images (by content hash) used to fit and calibrate.")
    datasets: list[str] | None = Field(None, description="Datasets (default: evaluate.datasets).")
    perturbations: list[Perturbation] | None = Field(None, description="Perturbations (default: evaluate.perturbations).")
    tags: dict[str, str] = Field(default_factory=dict, description="Labels for the report's tables.")


class AuditSpec(StudyModel):
    audit: str = Field(..., description="A registered audit (e.g. leakage).")
    set: str = Field(..., description="The set it checks.")
    options: dict[str, Any] = Field(default_factory=dict, description="Audit options.")
    tiny: dict[str, Any] = Field(default_factory=dict, description="Audit options merged in at --scale tiny.")
    tags: dict[str, str] = Field(default_factory=dict, description="Labels for the report's tables.")


class TableSpec(StudyModel):
    title: str = Field(..., description="Heading of the table.")
    source: Literal["scores", "fusions", "audits"] = Field("scores", description="Which results it shows.")
    rows: str = Field(..., description="The field (or tag) whose values are the rows.")
    cols: str = Field(..., description="The field (or tag) whose values are the columns, or 'metric'.")
    split: list[str] = Field(default_factory=list, description="Fields with one table per value combination.")
    metric: str | None = Field(None, description="The metric in every cell (when cols is not 'metric').")
    metrics: list[str] | None = Field(None, description="The metric columns when cols is 'metric'.")
    where: dict[str, str | list[str]] = Field(default_factory=dict, description="Keep rows whose field has this value "
                                              "(or one of these values).")

    @model_validator(mode="after")
    def _metric(self):
        if self.cols == "metric":
            if not self.metrics:
                raise ValueError("with cols: metric, list the metrics")
        elif not self.metric:
            raise ValueError("name the metric (or use cols: metric with metrics: [...])")
        return self


class ReportSpec(StudyModel):
    tables: list[TableSpec] = Field(default_factory=list, description="The report's tables (default: model x dataset).")
    note: str | None = Field(None, description="A paragraph printed above the tables.")


class TinySpec(StudyModel):
    seeds: list[int] | None = Field(None, min_length=1, description="Seeds at --scale tiny.")


class Study(StudyModel):
    name: str = Field(..., pattern=NAME_PATTERN, description="The study's name (the leaderboard suite).")
    title: str = ""
    description: str = ""
    vars: dict[str, Var] = Field(default_factory=dict, description="Variables used as ${NAME} (set with --var NAME=VALUE).")
    sets: dict[str, SetSpec] = Field(..., min_length=1)
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    evaluate: EvaluateSpec | None = None
    fusions: dict[str, FusionSpec] = Field(default_factory=dict)
    audits: dict[str, AuditSpec] = Field(default_factory=dict)
    seeds: list[int] = Field([0], min_length=1, description="Training seeds: every trained model is trained once per seed.")
    tiny: TinySpec = Field(default_factory=TinySpec)
    report: ReportSpec = Field(default_factory=ReportSpec)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("a seed is listed twice")
        return v

    @field_validator("sets", "models", "fusions", "audits", "vars")
    @classmethod
    def _names(cls, v):
        bad = [k for k in v if not re.match(NAME_PATTERN, str(k))]
        if bad:
            raise ValueError(f"names must be letters, digits, '.', '_' or '-' (not {', '.join(map(repr, bad))})")
        return v

    def seeds_at(self, scale: str) -> list[int]:
        return list(self.tiny.seeds) if scale == "tiny" and self.tiny.seeds else list(self.seeds)


# ---------------------------------------------------------------------- reading, with line numbers

Path_ = tuple  # a field's place: ("models", "npr", "train", "lr") or ("sets", "x", "sources", 0)


@dataclass
class StudyIssue:
    path: Path_
    message: str


@dataclass
class StudyFile:
    """A study file's text, its data after ``--set`` overrides, and where each field lies."""

    display: str  # what errors call it: the file path, or "recipe NAME (PATH)"
    text: str
    data: dict[str, Any]
    lines: dict[Path_, int] = field(default_factory=dict)
    overridden: dict[Path_, str] = field(default_factory=dict)  # path → the --set argument that gave it
    folder: Path | None = None  # relative paths in the file are read from here

    def where(self, path: Path_) -> str:
        for n in range(len(path), -1, -1):
            if path[:n] in self.overridden:
                return f"--set {self.overridden[path[:n]]}"
            if path[:n] in self.lines:
                below = [v for k, v in self.overridden.items() if k[:len(path)] == tuple(path)]
                return f"line {self.lines[path[:n]]}" + "".join(f" (with --set {v})" for v in below)
        return "line 1"


def dotted(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


class StudyError(ConfigError):
    """A study file that cannot run; lists every problem with its file, line and field."""

    def __init__(self, file: StudyFile, issues: list[StudyIssue]):
        issues = sorted(issues, key=lambda i: _line_number(file, i.path))
        self.file, self.issues = file, issues
        lines = [f"{file.display}, {file.where(i.path)}: {dotted(i.path)}: {i.message}" for i in issues]
        head = f"the study file {file.display} is invalid ({len(issues)} problem{'s' if len(issues) > 1 else ''}); "
        head += "nothing was run:" if len(issues) > 1 else "nothing was run."
        super().__init__(head + ("\n  " + "\n  ".join(lines) if len(issues) > 1 else "\n  " + lines[0]))


def _line_number(file: StudyFile, path: Path_) -> int:
    where = file.where(path)
    return int(where.split()[1].rstrip(",")) if where.startswith("line ") else 0


def yaml_lines(text: str, display: str) -> dict[Path_, int]:
    """Line (1-based) of every key and item of a YAML document; duplicate keys are errors."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _parse_error(display, exc) from None
    lines: dict[Path_, int] = {}
    dups: list[str] = []

    def walk(node, path: Path_) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
                line = k.start_mark.line + 1
                if key in seen:
                    dups.append(f"{display}, line {line}: {dotted(path + (key,))}: duplicate key (first at line {seen[key]}).")
                seen[key] = line
                lines[path + (key,)] = line
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    if dups:
        raise ConfigError(f"the study file {display} is invalid; nothing was run:\n  " + "\n  ".join(dups))
    return lines


def _parse_error(display: str, exc) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return ConfigError(f"the study file {display} cannot be parsed{where}: {what}; nothing was run.")


def read_study_file(source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudyFile:
    """A study file (a path, or the name of a shipped recipe) with ``--set PATH=VALUE`` overrides applied."""
    import yaml

    from .recipes import find_recipe

    p = Path(source).expanduser()
    if p.is_file():
        display = str(source)
    else:
        p = find_recipe(str(source))
        display = f"recipe {source} ({p.name})"
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the study file {display}: {exc}") from None
    lines = yaml_lines(text, display)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _parse_error(display, exc) from None
    if not isinstance(data, dict):
        raise ConfigError(f"the study file {display} must hold a mapping (name, sets, models, ...), "
                          f"not {type(data).__name__}; nothing was run.")
    sf = StudyFile(display, text, data, lines, folder=p.resolve().parent)
    for item in overrides:
        _apply_override(sf, item)
    return sf


def _apply_override(sf: StudyFile, item: str) -> None:
    """``models.npr.train.lr=0.01``: set one field (the value read as YAML); mappings on the way are created."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected PATH=VALUE, e.g. models.npr-pixel.train.lr=0.002.")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: the path is empty.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: Any = sf.data
    path: list[Any] = []
    for part in parts[:-1]:
        step: Any = int(part) if isinstance(node, list) and part.isdigit() else part
        path.append(step)
        if isinstance(node, list):
            if not isinstance(step, int) or step >= len(node):
                raise ConfigError(f"--set {item!r}: {dotted(tuple(path))} is not an item of the list.")
            node = node[step]
        elif isinstance(node, dict):
            node = node.setdefault(step, {})
        else:
            raise ConfigError(f"--set {item!r}: {dotted(tuple(path[:-1]))} is not a mapping.")
    last: Any = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
        last = int(last)
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {item!r}: {dotted(tuple(path))} is not a mapping.")
    sf.overridden[tuple(path) + (last,)] = item


def parse_study(sf: StudyFile) -> Study:
    """The schema check: every problem at once, each with its line."""
    try:
        return Study(**sf.data)
    except ValidationError as err:
        raise StudyError(sf, [_issue(e) for e in err.errors()]) from None


def _issue(e: dict) -> StudyIssue:
    loc = tuple(e["loc"])
    if e["type"] == "extra_forbidden" and loc:
        known = _known_fields(loc[:-1])
        close = close_matches(str(loc[-1]), known)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f" (known: {', '.join(known)})" if known else ""
        return StudyIssue(loc, f"unknown field{hint}")
    if e["type"] == "missing":
        return StudyIssue(loc, "required field is missing")
    msg = e["msg"].removeprefix("Value error, ")
    return StudyIssue(loc, msg)


def _known_fields(parent: Path_) -> list[str]:
    """The fields allowed at ``parent`` (for 'did you mean')."""
    model: Any = Study
    i = 0
    while i < len(parent):
        f = model.model_fields.get(parent[i]) if isinstance(parent[i], str) else None
        if f is None:
            return []
        ann = f.annotation
        nxt = _model_in(ann)
        if nxt is None:
            return []
        if _is_container(ann):
            i += 1  # skip the entry's name or the item's index
        model = nxt
        i += 1
    return list(model.model_fields)


def _model_in(ann) -> Any:
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in typing.get_args(ann):
        m = _model_in(a)
        if m is not None:
            return m
    return None


def _is_container(ann) -> bool:
    import typing

    if typing.get_origin(ann) in (dict, list):
        return True
    return any(_is_container(a) for a in typing.get_args(ann))


def substitute(value: Any, variables: dict[str, str | None], path: Path_, issues: list[StudyIssue] | None = None) -> Any:
    """``${NAME}`` replaced in every string of ``value``; an undefined or unset variable is an issue at ``path``."""
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            name = m.group(1)
            if name not in variables:
                msg = f"unknown variable ${{{name}}} (declare it under vars; known: {', '.join(sorted(variables)) or 'none'})"
            elif variables[name] is None:
                msg = (f"variable ${{{name}}} has no value: pass --var {name}=VALUE" if name != DATA_VAR
                       else "${data} needs --data-root DIR (or --scale tiny, which brings its own photos)")
            else:
                return str(variables[name])
            if issues is None:
                raise ConfigError(msg)
            issues.append(StudyIssue(path, msg))
            return m.group(0)

        return VAR_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: substitute(v, variables, path + (k,), issues) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables, path + (i,), issues) for i, v in enumerate(value)]
    return value


def uses_var(value: Any, name: str) -> bool:
    if isinstance(value, str):
        return any(m.group(1) == name for m in VAR_RE.finditer(value))
    if isinstance(value, dict):
        return any(uses_var(v, name) for v in value.values())
    if isinstance(value, list):
        return any(uses_var(v, name) for v in value)
    return False
