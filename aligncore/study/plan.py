"""From a validated study file to the cells that compute it, in dependency order.

Every name, option and reference is checked here, against the registry and the data, before any
cell runs; every problem is reported with the line of the study file it comes from. Identical cells
(same key) are planned once: a zero-shot model scored for three seeds is one cell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..component import close_matches
from ..errors import AlignCoreError, ConfigError
from .cells import Cell, without_execution_only
from .data import OFFLINE_SPLITS, find_part, listing_digest, offline_photos_spec, TINY_PER_GROUP
from .spec import (DATA_VAR, FIELDS, FUSION_METRICS, SCORE_METRICS, Study, StudyError, StudyFile,
                   StudyIssue, Path_, substitute)

SCALES = ("full", "tiny")
PREFIX_RE = re.compile(r"^([A-Za-z]+)=(.+)$")


@dataclass(frozen=True)
class Ref:
    """Where a set lies: ``rel`` inside the output of ``cell``."""

    cell: Cell
    rel: str


@dataclass
class ResultRef:
    """One row of the study's results: a cell and what the tables call it."""

    source: str  # scores | fusions | audits
    cell: Cell
    attrs: dict[str, Any]


@dataclass
class StudyPlan:
    study: Study
    file: StudyFile
    scale: str
    seeds: list[int]
    cells: list[Cell]
    results: list[ResultRef]
    data_root: Path | None
    device: str
    tags: dict[str, set[str]] = field(default_factory=dict)  # source → tag names its rows carry

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cells:
            out[c.kind] = out.get(c.kind, 0) + 1
        return out


def plan_study(sf: StudyFile, study: Study, scale: str = "full", data_root: str | Path | None = None,
               variables: dict[str, str] | None = None, device: str = "auto") -> StudyPlan:
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale!r}: choose one of {', '.join(SCALES)}.")
    planner = _Planner(sf, study, scale, Path(data_root).expanduser() if data_root else None, variables or {}, device)
    return planner.plan()


class _Planner:
    def __init__(self, sf: StudyFile, study: Study, scale: str, data_root: Path | None, variables: dict[str, str],
                 device: str):
        from ..registry import get_registry

        self.sf, self.study, self.scale, self.data_root, self.device = sf, study, scale, data_root, device
        self.tiny = scale == "tiny"
        self.reg = get_registry()
        self.issues: list[StudyIssue] = []
        self.cells: dict[str, Cell] = {}
        self.results: list[ResultRef] = []
        self.sets: dict[str, Ref | None] = {}
        self._visiting: list[str] = []
        unknown = sorted(set(variables) - set(study.vars))
        for name in unknown:
            self.issue(("vars",), f"--var {name}: the study declares no variable {name!r}"
                       f" (declared: {', '.join(study.vars) or 'none'})")
        self.vars: dict[str, str | None] = {n: variables.get(n, v.default) for n, v in study.vars.items()}
        if DATA_VAR in study.vars:
            self.issue(("vars", DATA_VAR), "'data' is the data root (--data-root), not a variable to declare")
        self.vars[DATA_VAR] = str(data_root) if data_root else ("(offline photos)" if self.tiny else None)
        self.data_parts: dict[str, list[Path_]] = {}  # ${data} split → where it is referenced
        self.data_cell: Cell | None = None

    def issue(self, path: Path_, message: str) -> None:
        self.issues.append(StudyIssue(tuple(path), message))

    def add(self, cell: Cell) -> Cell:
        return self.cells.setdefault(cell.key, cell)

    # ------------------------------------------------------------------ the whole plan
    def plan(self) -> StudyPlan:
        st = self.study
        if self.data_root is not None and not self.data_root.is_dir():
            raise ConfigError(f"--data-root {self.data_root}: no such folder.")
        self._collect_data_parts()
        self._make_data_cell()
        for name in st.sets:
            self.set_ref(name, ("sets", name))
        seeds = st.seeds_at(self.scale)
        models = {name: self._model(name, m) for name, m in st.models.items()}
        self._evaluate(models, seeds)
        self._fusions(models, seeds)
        self._audits()
        self._check_tables()
        self._check_shadowed_overrides()
        if self.issues:
            raise StudyError(self.sf, self.issues)
        order = {k: i for i, k in enumerate(("data", "set", "train", "score", "fuse", "audit"))}
        cells = sorted(self.cells.values(), key=lambda c: order[c.kind])  # stable: inputs stay before users
        return StudyPlan(st, self.sf, self.scale, seeds, cells, self.results, self.data_root, self.device,
                         self._tag_names())

    # ------------------------------------------------------------------ data
    def _collect_data_parts(self) -> None:
        for name, s in self.study.sets.items():
            for i, src in enumerate(s.sources):
                self._note_data(src, ("sets", name, "sources", i))
            if s.path is not None:
                self._note_data(s.path, ("sets", name, "path"))

    def _note_data(self, text: str, path: Path_) -> None:
        m = PREFIX_RE.match(text)
        body = m.group(2) if m else text
        if body.startswith("${data}"):
            part = body[len("${data}"):].lstrip("/").split("/", 1)[0]
            if not part:
                self.issue(path, "name a split of the data root, e.g. ${data}/train or ${data}/test")
            else:
                self.data_parts.setdefault(part, []).append(path)

    def _make_data_cell(self) -> None:
        if not self.data_parts:
            return
        first = next(iter(self.data_parts.values()))[0]
        if self.data_root is None and not self.tiny:
            self.issue(first, "${data} needs --data-root DIR (or --scale tiny, which brings its own offline photos)")
            return
        if self.data_root is None:
            for part, where in self.data_parts.items():
                if part not in OFFLINE_SPLITS:
                    self.issue(where[0], f"the offline photos of --scale tiny provide ${{data}}/{' and ${data}/'.join(OFFLINE_SPLITS)}"
                               f", not ${{data}}/{part}; pass --data-root DIR")
            self.data_cell = self.add(Cell("data", "offline photos (tiny)", offline_photos_spec()))
            return
        found: dict[str, Path] = {}
        for part, where in self.data_parts.items():
            p = find_part(self.data_root, part)
            if p is None:
                self.issue(where[0], f"--data-root {self.data_root} has no {part}/ (nor {part}.csv, {part}.jsonl); a data "
                           "root holds train/ and test/ with real/<source>/ and fake/<generator>/ folders, or manifests")
            else:
                found[part] = p
        if len(found) != len(self.data_parts):
            return
        self.data_cell = self.add(self._data_cell_over(found, f"data root {self.data_root}"))

    def _data_cell_over(self, parts: dict[str, Path], what: str) -> Cell:
        try:
            digests = {name: listing_digest(p) for name, p in parts.items()}
        except AlignCoreError as exc:
            raise ConfigError(f"{what}: {exc}") from None
        if self.tiny:
            spec = {"mode": "sample", "per_group": TINY_PER_GROUP, "seed": 0, "parts": digests}
            return Cell("data", f"sample of {what} (tiny)", spec, run={"sources": {n: str(p) for n, p in parts.items()}})
        spec = {"mode": "as-is", "parts": digests}
        return Cell("data", what, spec, run={"sources": {n: str(p) for n, p in parts.items()}})

    def source_ref(self, text: str, path: Path_) -> tuple[str, Ref | None]:
        """(prefix, where it lies) of one source: a set's name, ``${data}/...`` or a folder/manifest."""
        m = PREFIX_RE.match(text)
        prefix, body = (m.group(1) + "=", m.group(2)) if m else ("", text)
        if body in self.study.sets:
            return prefix, self.set_ref(body, ("sets", body))
        if body.startswith("${data}"):
            if self.data_cell is None:
                return prefix, None
            rest = body[len("${data}"):].lstrip("/")
            part, _, below = rest.partition("/")
            if self.data_cell.spec["mode"] == "as-is":
                base = Path(self.data_cell.run["sources"][part])
                if below and not (base / below).exists():
                    self.issue(path, f"{base / below} does not exist")
            return prefix, Ref(self.data_cell, f"{part}/{below}".rstrip("/"))
        resolved = substitute(body, self.vars, path, self.issues)
        if "${" in resolved:
            return prefix, None
        p = Path(resolved).expanduser()
        if not p.is_absolute() and self.sf.folder is not None:
            p = self.sf.folder / p
        if not p.exists():
            close = close_matches(body, self.study.sets)
            hint = f"; did you mean the set {close[0]!r}?" if close else ""
            self.issue(path, f"{body!r} is neither a set of this study nor an existing folder or manifest{hint}")
            return prefix, None
        return prefix, Ref(self.add(self._data_cell_over({"part": p.resolve()}, str(p))), "part")

    # ------------------------------------------------------------------ sets
    def set_ref(self, name: str, path: Path_) -> Ref | None:
        if name in self.sets:
            return self.sets[name]
        if name in self._visiting:
            cycle = " -> ".join([*self._visiting[self._visiting.index(name):], name])
            self.issue(path, f"sets refer to each other in a cycle: {cycle}")
            return None
        self._visiting.append(name)
        try:
            ref = self._make_set(name, self.study.sets[name], ("sets", name))
        finally:
            self._visiting.pop()
        self.sets[name] = ref
        return ref

    def _make_set(self, name: str, s, path: Path_) -> Ref | None:
        if s.path is not None:
            _, ref = self.source_ref(s.path, path + ("path",))
            return ref
        if s.mix is not None:
            refs = []
            for i, member in enumerate(s.mix):
                if member not in self.study.sets:
                    self.issue(path + ("mix", i), f"unknown set {member!r}{_hint(member, self.study.sets)}")
                    continue
                refs.append((member, self.set_ref(member, path + ("mix", i))))
            if len(refs) != len(s.mix) or any(r is None for _, r in refs):
                return None
            inputs = {f"m{i}": r.cell for i, (_, r) in enumerate(refs)}
            spec = {"mode": "mix", "members": [{"name": m, "input": f"m{i}", "rel": r.rel} for i, (m, r) in enumerate(refs)]}
            return Ref(self.add(Cell("set", f"set {name} (mix of {', '.join(s.mix)})", spec, inputs)), "set")
        # a builder set
        reg = self._registered("builder", s.builder, path + ("builder",))
        sources, inputs = [], {}
        for i, src in enumerate(s.sources):
            prefix, ref = self.source_ref(src, path + ("sources", i))
            if ref is None:
                continue
            inputs[f"s{i}"] = ref.cell
            sources.append({"prefix": prefix, "input": f"s{i}", "rel": ref.rel})
        if reg is None or len(sources) != len(s.sources):
            return None
        cls = reg.cls
        options = dict(s.options)
        if self.tiny and "tiny" in cls.presets and "preset" in cls.config_class.model_fields and "preset" not in options:
            options["preset"] = "tiny"
        options = self._merge_tiny(options, s.tiny)
        options = substitute(options, self.vars, path + ("options",), self.issues)
        if "device" in cls.config_class.model_fields and "device" not in options:
            options["device"] = self.device
        if not self._check_component(cls, options, path, s.tiny):
            return None
        spec = {"mode": "builder", "builder": s.builder, "plugin": reg.plugin, "version": getattr(cls, "version", None),
                "options": without_execution_only(options), "sources": sources}
        return Ref(self.add(Cell("set", f"set {name} ({s.builder})", spec, inputs, run={"options": options})), "set")

    def _merge_tiny(self, options: dict, tiny: dict) -> dict:
        return {**options, **tiny} if self.tiny else options

    # ------------------------------------------------------------------ models
    def _model(self, name: str, m) -> dict[str, Any] | None:
        """What scoring a model needs: its branch, options and (per seed) its train cell or checkpoint digest."""
        path = ("models", name)
        reg = self._registered("branch", m.branch, path + ("branch",))
        if reg is None:
            return None
        cls = reg.cls
        options = dict(m.options)
        if self.tiny and "tiny" in cls.presets and "preset" in cls.config_class.model_fields and "preset" not in options:
            options["preset"] = "tiny"
        options = {**options, **(m.tiny.options if self.tiny else {})}
        options = substitute(options, self.vars, path + ("options",), self.issues)
        if "device" in cls.config_class.model_fields and "device" not in options:
            options["device"] = self.device
        ok = self._check_component(cls, options, path, m.tiny.options, tiny_path=path + ("tiny", "options"))
        info: dict[str, Any] = {"branch": m.branch, "options": options, "tags": dict(m.tags), "train": {},
                                "train_set": None, "checkpoint": None, "plugin": reg.plugin,
                                "version": getattr(cls, "version", None)}
        if m.checkpoint is not None:
            ck = substitute(m.checkpoint, self.vars, path + ("checkpoint",), self.issues)
            p = Path(ck).expanduser()
            if not p.is_absolute() and self.sf.folder is not None:
                p = self.sf.folder / p
            if not p.is_dir():
                self.issue(path + ("checkpoint",), f"checkpoint folder {ck} does not exist")
                return None
            from ..hashing import hash_directory

            info["checkpoint"] = {"path": str(p.resolve()), "digest": hash_directory(p)}
            info["train_set"] = "checkpoint"
        elif m.zero_shot:
            info["train_set"] = "zero-shot"
        else:
            known_set = m.train_on in self.study.sets
            if not known_set:
                self.issue(path + ("train_on",), f"unknown set {m.train_on!r}{_hint(m.train_on, self.study.sets)}")
                ok = False
            if cls.trainer_class is None or cls.train_config_class is None:
                able = [n for n in self.reg.names("branch") if self.reg.get("branch", n).cls.trainer_class is not None]
                self.issue(path + ("branch",), f"branch {m.branch!r} cannot be trained (trainable: {', '.join(able)}); "
                           "use checkpoint or zero_shot")
                return None
            topts = {**m.train, **(m.tiny.train if self.tiny else {})}
            topts = substitute(topts, self.vars, path + ("train",), self.issues)
            if "seed" in topts:
                self.issue(path + ("train", "seed"), "set seeds with the study's top-level seeds list (each trained "
                           "model is trained once per seed)")
                ok = False
            info["train"] = topts
            info["train_set"] = m.train_on
            ok = self._check_train(cls, topts, path, m.tiny.train) and ok
            info["set_ref"] = self.set_ref(m.train_on, path + ("train_on",)) if known_set else None
            if info["set_ref"] is None:
                return None
        return info if ok else None

    def _train_cell(self, name: str, info: dict, seed: int) -> Cell:
        ref: Ref = info["set_ref"]
        seeded = {**info["train"], "seed": seed} if "seed" in self._train_fields(info["branch"]) else dict(info["train"])
        spec = {"branch": info["branch"], "plugin": info["plugin"], "version": info["version"],
                "branch_options": without_execution_only(info["options"]), "train_options": seeded, "set_rel": ref.rel}
        return self.add(Cell("train", f"train {name} on {info['train_set']} (seed {seed})", spec, {"set": ref.cell},
                             run={"branch_options": info["options"]}))

    def _train_fields(self, branch: str) -> set[str]:
        return set(self.reg.get("branch", branch).cls.train_config_class.model_fields)

    def _member(self, name: str, info: dict, seed: int) -> tuple[dict, Cell | None]:
        """A model's scoring identity (part of a score or fuse cell's spec) and its train cell, if any."""
        member = {"branch": info["branch"], "plugin": info["plugin"], "version": info["version"],
                  "branch_options": without_execution_only(info["options"])}
        train = None
        if info["checkpoint"] is not None:
            member["checkpoint_digest"] = info["checkpoint"]["digest"]
        elif info["train_set"] != "zero-shot":
            train = self._train_cell(name, info, seed)
        return member, train

    # ------------------------------------------------------------------ evaluation
    def _dataset(self, name: str, path: Path_) -> Ref | None:
        if name not in self.study.sets:
            self.issue(path, f"unknown set {name!r}{_hint(name, self.study.sets)}")
            return None
        return self.set_ref(name, ("sets", name))

    def _evaluate(self, models: dict[str, dict | None], seeds: list[int]) -> None:
        ev = self.study.evaluate
        if ev is None:
            if self.study.models:
                self.issue(("evaluate",), "models are listed but nothing evaluates them: add evaluate.datasets")
            return
        names = ev.models if ev.models is not None else list(self.study.models)
        for i, n in enumerate(names):
            if n not in self.study.models:
                self.issue(("evaluate", "models", i), f"unknown model {n!r}{_hint(n, self.study.models)}")
        datasets = {d: self._dataset(d, ("evaluate", "datasets", i)) for i, d in enumerate(ev.datasets)}
        for name in names:
            m = self.study.models.get(name)
            info = models.get(name)
            if m is None:
                continue
            own = m.evaluate_on if m.evaluate_on is not None else ev.datasets
            for i, d in enumerate(m.evaluate_on or []):
                if d not in self.study.sets:
                    self.issue(("models", name, "evaluate_on", i), f"unknown set {d!r}{_hint(d, self.study.sets)}")
            if info is None:
                continue
            for d in own:
                if d not in self.study.sets:
                    continue  # reported above
                ref = datasets[d] if d in datasets else self.set_ref(d, ("sets", d))
                if ref is None:
                    continue
                for perturb in ev.perturbations:
                    for seed in seeds:
                        cell = self._score_cell(name, info, d, ref, perturb, seed)
                        attrs = {"model": name, "branch": info["branch"], "train_set": info["train_set"], "dataset": d,
                                 "perturb": perturb or "none", "seed": seed,
                                 **self.study.sets[d].tags, **info["tags"]}
                        self.results.append(ResultRef("scores", cell, attrs))

    def _score_cell(self, name: str, info: dict, dataset: str, ref: Ref, perturb: str | None, seed: int) -> Cell:
        member, train = self._member(name, info, seed)
        inputs = {"data": ref.cell, **({"model": train} if train is not None else {})}
        spec = {"member": member, "dataset_rel": ref.rel, "dataset_name": dataset, "suite": self.study.name,
                "perturb": perturb}
        what = f"score {name} on {dataset}" + (f" [{perturb}]" if perturb else "") + (f" (seed {seed})" if train else "")
        run = {"branch_options": info["options"],
               "checkpoint": info["checkpoint"]["path"] if info["checkpoint"] else None}
        return self.add(Cell("score", what, spec, inputs, run=run))

    # ------------------------------------------------------------------ fusions
    def _fusions(self, models: dict[str, dict | None], seeds: list[int]) -> None:
        ev = self.study.evaluate
        for fname, f in self.study.fusions.items():
            path = ("fusions", fname)
            ok = True
            branches: dict[str, str] = {}
            for i, mname in enumerate(f.models):
                if mname not in self.study.models:
                    self.issue(path + ("models", i), f"unknown model {mname!r}{_hint(mname, self.study.models)}")
                    ok = False
                    continue
                b = self.study.models[mname].branch
                if b in branches:
                    self.issue(path + ("models", i), f"models {branches[b]!r} and {mname!r} are both branch {b!r}; "
                               "a fusion combines different branches")
                    ok = False
                branches[b] = mname
            regs = [self._registered("fusion", r, path + ("rules", i)) for i, r in enumerate(f.rules)]
            for rule, opts in f.options.items():
                if rule not in f.rules:
                    self.issue(path + ("options", rule), f"options for {rule!r}, which is not among the rules {f.rules}")
                    ok = False
            for r, reg in zip(f.rules, regs):
                if reg is None:
                    ok = False
                elif not self._check_component(reg.cls, f.options.get(r, {}), path, {}, options_path=path + ("options", r)):
                    ok = False
            plain = [r for r, reg in zip(f.rules, regs) if reg is not None and not reg.cls.needs_fit]
            if ok and not plain:
                self.issue(path + ("rules",), "list at least one rule that needs no fitting (e.g. or): the fused run "
                           "is written with it before the others are fitted")
                ok = False
            datasets = f.datasets if f.datasets is not None else (ev.datasets if ev else [])
            perturbs = f.perturbations if f.perturbations is not None else (ev.perturbations if ev else [None])
            if not datasets:
                self.issue(path + ("datasets",), "no datasets: list them here or under evaluate.datasets")
                ok = False
            refs = {d: self._dataset(d, path + ("datasets", i) if f.datasets else ("evaluate", "datasets"))
                    for i, d in enumerate(datasets)}
            infos = [models.get(m) for m in f.models]
            if not ok or any(i is None for i in infos) or any(r is None for r in refs.values()):
                continue
            for d, ref in refs.items():
                for perturb in perturbs:
                    for seed in seeds:
                        members, inputs = [], {"data": ref.cell}
                        for k, (mname, info) in enumerate(zip(f.models, infos)):
                            member, train = self._member(mname, info, seed)
                            members.append(member)
                            if train is not None:
                                inputs[f"model{k}"] = train
                        spec = {"members": members, "rules": list(f.rules), "options": f.options,
                                "target_fpr": f.target_fpr, "cal_fraction": f.cal_fraction, "seed": seed,
                                "run_fusion": plain[0], "dataset_rel": ref.rel, "dataset_name": d,
                                "suite": self.study.name, "perturb": perturb}
                        run = {"members": [{"branch": i["branch"], "branch_options": i["options"],
                                            "checkpoint": i["checkpoint"]["path"] if i["checkpoint"] else None,
                                            "input": f"model{k}" if f"model{k}" in inputs else None}
                                           for k, i in enumerate(infos)]}
                        what = f"fuse {fname} on {d}" + (f" [{perturb}]" if perturb else "") + f" (seed {seed})"
                        cell = self.add(Cell("fuse", what, spec, inputs, run=run))
                        attrs = {"fusion": fname, "dataset": d, "perturb": perturb or "none", "seed": seed,
                                 **self.study.sets[d].tags, **f.tags}
                        self.results.append(ResultRef("fusions", cell, attrs))

    # ------------------------------------------------------------------ audits
    def _audits(self) -> None:
        for name, a in self.study.audits.items():
            path = ("audits", name)
            reg = self._registered("audit", a.audit, path + ("audit",))
            ref = self._dataset(a.set, path + ("set",))
            if reg is None or ref is None:
                continue
            options = self._merge_tiny(dict(a.options), a.tiny)
            options = substitute(options, self.vars, path + ("options",), self.issues)
            if not self._check_component(reg.cls, options, path, a.tiny):
                continue
            spec = {"audit": a.audit, "plugin": reg.plugin, "version": getattr(reg.cls, "version", None),
                    "options": options, "set_rel": ref.rel}
            cell = self.add(Cell("audit", f"audit {name} ({a.audit} on {a.set})", spec, {"set": ref.cell}))
            attrs = {"audit": name, "set": a.set, **self.study.sets[a.set].tags, **a.tags}
            self.results.append(ResultRef("audits", cell, attrs))

    def _check_shadowed_overrides(self) -> None:
        """At --scale tiny an entry's ``tiny:`` values win: a --set of the same option would be silently lost."""
        if not self.tiny:
            return
        st = self.study
        for path, arg in self.sf.overridden.items():
            if len(path) != 4:
                continue
            section, name, part, key = path
            entry = {"models": st.models, "sets": st.sets, "audits": st.audits}.get(section, {}).get(name)
            if entry is None:
                continue
            if section == "models" and part in ("train", "options"):
                tiny, where = getattr(entry.tiny, part), (section, name, "tiny", part, key)
            elif section in ("sets", "audits") and part == "options":
                tiny, where = entry.tiny, (section, name, "tiny", key)
            else:
                continue
            if key in tiny:
                self.issue(path, f"has no effect at --scale tiny, where {'.'.join(map(str, where))} = {tiny[key]!r} "
                           f"wins; set that instead (--set {'.'.join(map(str, where))}=...)")

    # ------------------------------------------------------------------ report tables
    def _tag_names(self) -> dict[str, set[str]]:
        st = self.study
        set_tags = {k for s in st.sets.values() for k in s.tags}
        return {"scores": set_tags | {k for m in st.models.values() for k in m.tags},
                "fusions": set_tags | {k for f in st.fusions.values() for k in f.tags},
                "audits": set_tags | {k for a in st.audits.values() for k in a.tags}}

    def _check_tables(self) -> None:
        tags = self._tag_names()
        for source, names in tags.items():
            clash = sorted(names & set(FIELDS[source]))
            if clash:
                self.issue(("report",), f"tag name(s) {clash} shadow the {source} fields {list(FIELDS[source])}; rename the tags")
        for i, t in enumerate(self.study.report.tables):
            path = ("report", "tables", i)
            known = [*FIELDS[t.source], *sorted(tags[t.source])]
            for key, value in (("rows", t.rows), ("cols", t.cols)):
                if value not in known and not (key == "cols" and value == "metric"):
                    self.issue(path + (key,), f"unknown field {value!r} for {t.source}{_hint(value, known)} (known: {', '.join(known)})")
            for j, s in enumerate(t.split):
                if s not in known:
                    self.issue(path + ("split", j), f"unknown field {s!r}{_hint(s, known)}")
            for w in t.where:
                if w not in known:
                    self.issue(path + ("where", w), f"unknown field {w!r}{_hint(w, known)}")
            allowed = {"scores": SCORE_METRICS, "fusions": FUSION_METRICS}.get(t.source)
            for m in ([t.metric] if t.metric else []) + list(t.metrics or []):
                if allowed is not None and m not in allowed:
                    self.issue(path + ("metric" if t.metric else "metrics",),
                               f"unknown metric {m!r}{_hint(m, allowed)} (known: {', '.join(allowed)})")

    # ------------------------------------------------------------------ helpers
    def _registered(self, kind: str, name: str | None, path: Path_):
        try:
            return self.reg.get(kind, name)
        except AlignCoreError as exc:
            self.issue(path, str(exc).rstrip("."))
            return None

    def _check_component(self, cls, options: dict, path: Path_, tiny: dict, options_path: Path_ | None = None,
                         tiny_path: Path_ | None = None) -> bool:
        """Validate ``options`` against the component's config (its preset applied); issues point at the field."""
        options_path = options_path or path + ("options",)
        tiny_path = tiny_path or path + ("tiny",)
        try:
            full = {**cls.preset_values(options.get("preset")), **options}
        except ConfigError as exc:
            self.issue(options_path + ("preset",), str(exc).rstrip("."))
            return False
        return self._validate(cls.config_class, full, options_path, tiny if self.tiny else {}, tiny_path) and \
            self._construct(cls, options, options_path)

    def _check_train(self, cls, options: dict, path: Path_, tiny: dict) -> bool:
        return self._validate(cls.train_config_class, options, path + ("train",), tiny if self.tiny else {},
                              path + ("tiny", "train"))

    def _validate(self, model: type[BaseModel], data: dict, path: Path_, tiny: dict, tiny_path: Path_) -> bool:
        try:
            model(**data)
            return True
        except ValidationError as err:
            for e in err.errors():
                loc = tuple(e["loc"])
                base = tiny_path if loc and loc[0] in tiny else path
                if e["type"] == "extra_forbidden" and loc:
                    hint = _hint(str(loc[-1]), model.model_fields)
                    self.issue(base + loc, "unknown option" + (hint or f" (known: {', '.join(model.model_fields)})"))
                else:
                    self.issue(base + loc, e["msg"].removeprefix("Value error, "))
            return False
        except TypeError as exc:
            self.issue(path, str(exc))
            return False

    def _construct(self, cls, options: dict, path: Path_) -> bool:
        """Checks a component makes when it is built (e.g. a required weight file), still before any work."""
        from ..branch import Branch

        if issubclass(cls, Branch):  # building a branch may read a checkpoint's record: its config check is enough
            return True
        try:
            component = cls(options)
            check = getattr(component, "check", None)  # audits: the components they name, their options
            if callable(check):
                check()
            return True
        except AlignCoreError as exc:
            self.issue(path, str(exc).rstrip("."))
            return False


def _hint(word: str, known) -> str:
    close = close_matches(str(word), list(known))
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
