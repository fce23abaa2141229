"""Leave-one-generator-out generalisation protocol on the shared test images (CPU).

    nice -n 10 python benchmarks/generalization.py --shared SHARED --work WORK_DIR [--quick]
        [--experts NAME,...|default|all] [--jobs 2]

Folds (``benchmarks/logo_folds.py``): one per generator family with ≥ 10 fakes plus a pooled ``rare``
fold, crossed with four real folds (whole photo collections left out); training never sees the
test fold's families, the publishers of its fakes, or the test real collections. Every image is
decoded to pixels (no metadata), cut to its centre ≤512 window and analysed on a ≤256 region, as is,
re-encoded as JPEG q90, and through a "social media" chain (×0.5 bicubic + JPEG q75), both classes
identically (``benchmarks/logo_features.py``). Features are cached under WORK, so a rerun or a new
expert costs only the fits.

Experts are fixed feature extractors with a logistic-regression head (fitted per cell), training-
free scores (``aerecon``: reconstruction error through the tiny FLUX.2 autoencoder), and stacked
fusions of them. Reports per fold and mean AUC, AP and TPR at 5 % FPR for each condition.

The full run writes benchmarks/results/generalization.md and .json; ``--quick`` (a stratified subset:
8 fakes per fold, 12 photos per collection, fewer experts) prints its table and writes it under WORK.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import logo_features as fe  # noqa: E402
import logo_folds as lf  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# =========================================================================== experts


@dataclass
class Expert:
    """One detector under test.

    ``kind``: ``lr`` (standardised features → logistic regression fitted on the cell's training
    images), ``free`` (a fixed score of the features, nothing fitted), ``stack`` (logistic regression
    on the members' out-of-fold scores, inner folds grouped by family / real collection), ``cnn``
    (the ``npr`` branch's network trained from scratch on random native-resolution crops of the
    cell's training regions; scored as the mean logit of a 2×2 grid of crops).
    """

    name: str
    kind: str = "lr"
    doc: str = ""
    fsets: tuple[str, ...] = ()
    columns: Callable[[list[str]], list[int]] | None = None  # which columns of the (concatenated) features
    train_conditions: tuple[str, ...] = ("asis", "aug")
    recon: bool = False  # add the training photos' reconstructions through taef2 as fakes
    C: float = 0.1
    balance: bool = False  # weight training fakes so every family counts the same
    free_score: Callable[[np.ndarray, list[str]], np.ndarray] | None = None
    members: tuple[str, ...] = ()
    cnn: dict = field(default_factory=dict)  # kind "cnn": width, crop, steps, batch, lr

    def needs(self, experts: dict[str, "Expert"]) -> set[tuple[str, str]]:
        """(feature set, source) pairs and the conditions they are needed in."""
        if self.kind == "stack":
            out: set = set()
            for m in self.members:
                out |= experts[m].needs(experts)
            return out
        if self.kind == "cnn":
            return set()  # trains on pixels, not cached features
        conds = set(fe.CONDITIONS) | (set(self.train_conditions) if self.kind == "lr" else set())
        out = {(f, source_of(f), c) for f in self.fsets for c in conds}
        if self.recon:
            out |= {(f, "recon", c) for f in self.fsets for c in self.train_conditions}
        return out


def source_of(fset: str) -> str:
    return "thumb" if fset in fe.THUMB_SETS else "orig"


def names_for(fset: str) -> list[str]:
    if fset in ("ae", "ae-texture"):
        from types import SimpleNamespace

        from aligncore_plugins.aerecon_model import feature_names
        from aligncore_plugins.tiny_ae_model import standard_layout

        taef2 = SimpleNamespace(layout=standard_layout(latent_channels=32, width=64, levels=3, gn_mid=True))
        return feature_names(taef2, fe.AE_SCALES)
    return []


def cols(pred: Callable[[str], bool]):
    return lambda names: [i for i, n in enumerate(names) if pred(n)]


def col(name: str, sign: float = -1.0):
    def score(x: np.ndarray, names: list[str]) -> np.ndarray:
        return sign * x[:, names.index(name)]

    return score


def mean_cols(keys: tuple[str, ...], sign: float = -1.0):
    def score(x: np.ndarray, names: list[str]) -> np.ndarray:
        return sign * np.mean([x[:, names.index(k)] for k in keys], axis=0)

    return score


def diff_cols(a: str, b: str, sign: float = -1.0):
    def score(x: np.ndarray, names: list[str]) -> np.ndarray:
        return sign * (x[:, names.index(a)] - x[:, names.index(b)])

    return score


ERR = ("_l2", "_hp", "_feat", "_tex")


AUG = ("asis", "aug")


def build_experts() -> dict[str, Expert]:
    """Every expert tried. Linear heads are standardised-feature logistic regressions with class- and
    family-balanced weights; unless named ``-aug`` they train on the as-is condition only."""
    err = cols(lambda n: n.endswith(ERR))
    enc = cols(lambda n: not n.endswith(ERR))
    lr = {"kind": "lr", "train_conditions": ("asis",), "C": 0.01, "balance": True}
    ex = [
        # ---- training-free reconstruction distance through taef2 (AEROBLADE-style)
        Expert("aerecon-l2", "free", "−log MSE of the 128 px centre window vs its taef2 reconstruction",
               fsets=("ae",), free_score=col("s1_l2")),
        Expert("aerecon-feat", "free", "−log distance in taef2's first-block features (a perceptual distance)",
               fsets=("ae",), free_score=col("s1_feat")),
        Expert("aerecon-norm", "free", "−(log MSE − log high-pass energy of the window): error relative to texture",
               fsets=("ae",), free_score=diff_cols("s1_l2", "s1_tex")),
        Expert("aerecon-texture", "free", "aerecon-l2 on the most textured 128 px window of a 3×3 grid",
               fsets=("ae-texture",), free_score=col("s1_l2")),
        # ---- linear heads on the frozen taef2 encoder / reconstruction features of the native region
        Expert("ae-errors-lr", doc="LR on the 4 reconstruction errors (l2/hp/feat/tex)", fsets=("ae",), columns=err, **lr),
        Expert("ae-latent-lr", doc="LR on taef2 latent channel means/log-stds at scales 1, 2, 4", fsets=("ae",),
               columns=cols(lambda n: "_z_" in n), **lr),
        Expert("ae-enc-s1-lr", doc="LR on taef2 encoder statistics (4 levels + latent) at scale 1 only", fsets=("ae",),
               columns=cols(lambda n: n.startswith("s1_") and not n.endswith(ERR)), **lr),
        Expert("ae-enc-lr", doc="LR on taef2 encoder statistics at scales 1, 2, 4 (no reconstruction)", fsets=("ae",),
               columns=enc, **lr),
        Expert("ae-lr", doc="LR on the aerecon feature vector: encoder statistics at 3 scales + reconstruction errors",
               fsets=("ae",), **lr),
        Expert("ae-lr-aug", doc="ae-lr trained on as-is + one random degradation of every image (aug chain)",
               fsets=("ae",), **{**lr, "train_conditions": AUG}),
        Expert("ae-lr-C0.1", doc="ae-lr with weaker regularisation (C=0.1)", fsets=("ae",), **{**lr, "C": 0.1}),
        Expert("ae-lr-unbalanced", doc="ae-lr without family-balanced weights", fsets=("ae",), **{**lr, "balance": False}),
        Expert("ae-lr-recon", doc="ae-lr with the training photos' taef2 reconstructions added as fakes",
               fsets=("ae",), recon=True, **lr),
        Expert("ae-texture-lr", doc="ae-lr on the most textured windows instead of the centre", fsets=("ae-texture",), **lr),
        # ---- the canonical-size view (whole image resized to 128 px)
        Expert("thumb-enc-lr", doc="LR on taef2 encoder statistics of the canonical view (whole image resized to 128 px, "
               "and 64 px)", fsets=("thumb-enc",), **lr),
        Expert("thumb-stats-lr", doc="imgstats of the canonical 128 px view + LR", fsets=("thumb-stats",), **lr),
        # ---- other fixed features
        Expert("spectrum-lr", doc="the spectrum branch's features (blur-residual log-FFT, 64 px tiles) + LR",
               fsets=("spectrum",), **lr),
        Expert("spectrum-lr-aug", doc="spectrum-lr trained on as-is + aug", fsets=("spectrum",), **{**lr, "train_conditions": AUG}),
        Expert("spectrum-lr-recon", doc="spectrum-lr with the training photos' taef2 reconstructions as extra fakes",
               fsets=("spectrum",), recon=True, **lr),
        Expert("spectrum-recon-only", doc="spectrum-lr trained only on photos vs their taef2 reconstructions "
               "(the README's pixel-set recipe, no generator fakes)", fsets=("spectrum",), recon=True, **lr),
        Expert("phase-lr", doc="multi-scale NPR statistics (periodic difference profile, NPR residual energy) + LR",
               fsets=("phase",), **lr),
        Expert("imgstats-lr", doc="global colour/sharpness statistics of the native region + LR", fsets=("imgstats",), **lr),
        # ---- the npr branch's network, trained per cell on pixels (expensive: run with --cells diagonal)
        Expert("npr-cnn", "cnn", "NPRNet (width 8) from scratch on 96 px native crops, 300 steps × 32, as is + aug",
               train_conditions=AUG, cnn={"width": 8, "crop": 96, "steps": 300, "batch": 32, "lr": 2e-3}),
        # ---- fusions
        Expert("ae+thumb-lr", doc="early fusion: one LR on the ae-lr and thumb-enc-lr features (the shipped detector's recipe)",
               fsets=("ae", "thumb-enc"), **lr),
        Expert("ae+thumb-lr-aug", doc="ae+thumb-lr trained on as-is + aug", fsets=("ae", "thumb-enc"),
               **{**lr, "train_conditions": AUG}),
        Expert("ae+thumb-lr-C0.003", doc="ae+thumb-lr with stronger regularisation (C=0.003)", fsets=("ae", "thumb-enc"),
               **{**lr, "C": 0.003}),
        Expert("ae+thumb-lr-C0.03", doc="ae+thumb-lr with weaker regularisation (C=0.03)", fsets=("ae", "thumb-enc"),
               **{**lr, "C": 0.03}),
        Expert("ae+thumb+imgstats-lr", doc="early fusion of ae, thumb-enc and imgstats features",
               fsets=("ae", "thumb-enc", "imgstats"), **lr),
        Expert("concat-all-lr", doc="early fusion of ae, thumb-enc, imgstats, phase and spectrum features",
               fsets=("ae", "thumb-enc", "imgstats", "phase", "spectrum"), **lr),
        Expert("fusion-stack", "stack", "stacked LR over ae-lr, thumb-enc-lr, aerecon-feat, imgstats-lr, spectrum-lr "
               "(out-of-fold member scores, 4 inner folds by family / collection)",
               members=("ae-lr", "thumb-enc-lr", "aerecon-feat", "imgstats-lr", "spectrum-lr")),
    ]
    return {e.name: e for e in ex}


#: the expert whose fit on every image ships as the built-in detector (benchmarks/build_builtin.py, `Detector()`)
SHIPPED = "ae+thumb-lr"

DEFAULT_EXPERTS = ("aerecon-l2", "aerecon-feat", "spectrum-lr", "phase-lr", "imgstats-lr", "ae-lr", "thumb-enc-lr",
                   "ae+thumb-lr")
QUICK_EXPERTS = ("aerecon-feat", "spectrum-lr", "ae-lr", "thumb-enc-lr", "ae+thumb-lr")



# =========================================================================== fitting


class Data:
    """Feature matrices by (expert, source, condition) over the item list."""

    def __init__(self, items: list[lf.Item], store: fe.FeatureStore, ctx: fe.Context | None = None):
        self.items, self.store, self.ctx = items, store, ctx
        self.shas = [it.sha256 for it in items]
        self._cache: dict = {}
        self._regions: dict = {}

    def region(self, i: int, cond: str) -> np.ndarray:
        key = (i, cond)
        if key not in self._regions:
            it = self.items[i]
            self._regions[key] = self.ctx.region(it.sha256, it.file, "orig", cond)
        return self._regions[key]

    def X(self, ex: Expert, source: str, cond: str, idx: list[int]) -> tuple[np.ndarray, list[str]]:
        key = (ex.fsets, ex.name if ex.columns else "", source, cond)
        if key not in self._cache:
            mats, names = [], []
            for f in ex.fsets:
                src = source_of(f) if source == "orig" else source
                d = self.store.table(f, src, cond)
                if src != "recon":
                    mats.append(np.stack([d[s] for s in self.shas]))
                else:  # reconstructions exist for real photos only
                    dim = len(next(iter(d.values())))
                    mats.append(np.stack([d.get(s, np.full(dim, np.nan, np.float32)) for s in self.shas]))
                n = names_for(f)
                names += n if n else [f"{f}{i}" for i in range(mats[-1].shape[1])]
            x = np.concatenate(mats, axis=1).astype(np.float64)
            if ex.columns is not None:
                keep = ex.columns(names)
                x, names = x[:, keep], [names[i] for i in keep]
            self._cache[key] = (x, names)
        x, names = self._cache[key]
        return x[idx], names


def _lr_fit(x: np.ndarray, y: np.ndarray, C: float, w: np.ndarray | None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(x)
    xs = np.nan_to_num(sc.transform(x))
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=3000).fit(xs, y, sample_weight=w)
    return sc, clf


def _lr_score(model, x: np.ndarray) -> np.ndarray:
    sc, clf = model
    return clf.decision_function(np.nan_to_num(sc.transform(x)))


def train_rows(ex: Expert, data: Data, idx: list[int], recon_only: bool = False):
    xs, ys, ws = [], [], []
    items = data.items
    reals = [i for i in idx if not items[i].label]
    fam_counts: dict[str, int] = {}
    for i in idx:
        if items[i].label:
            fam_counts[items[i].family] = fam_counts.get(items[i].family, 0) + 1
    n_fake = sum(fam_counts.values())
    for cond in ex.train_conditions:
        if not recon_only:
            x, _ = data.X(ex, "orig", cond, idx)
            xs.append(x)
            ys.append(np.array([items[i].label for i in idx]))
            if ex.balance:
                ws.append(np.array([n_fake / (len(fam_counts) * fam_counts[items[i].family]) if items[i].label else 1.0
                                    for i in idx]))
            else:
                ws.append(np.ones(len(idx)))
        else:
            x, _ = data.X(ex, "orig", cond, reals)
            xs.append(x)
            ys.append(np.zeros(len(reals), int))
            ws.append(np.ones(len(reals)))
        if ex.recon and reals:
            x, _ = data.X(ex, "recon", cond, reals)
            xs.append(x)
            ys.append(np.ones(len(reals), int))
            ws.append(np.ones(len(reals)))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)


def fit_expert(ex: Expert, data: Data, idx: list[int], experts: dict[str, Expert], seed: int = 0):
    """Fit on the items ``idx``; returns a scoring function (source, condition, indices) → scores."""
    if ex.kind == "free":
        def score(cond, tidx):
            x, names = data.X(ex, "orig", cond, tidx)
            return ex.free_score(x, names)
        return score
    if ex.kind == "lr":
        x, y, w = train_rows(ex, data, idx, recon_only=ex.name.endswith("recon-only"))
        model = _lr_fit(x, y, ex.C, w)

        def score(cond, tidx):
            x, _ = data.X(ex, "orig", cond, tidx)
            return _lr_score(model, x)
        return score
    if ex.kind == "stack":
        members = [experts[m] for m in ex.members]
        inner = inner_folds(data.items, idx, k=4)
        conds = ("asis",)
        oof = {c: np.zeros((len(idx), len(members))) for c in conds}
        pos = {i: k for k, i in enumerate(idx)}
        for held in inner:
            rest = [i for i in idx if i not in set(held)]
            for j, m in enumerate(members):
                f = fit_expert(m, data, rest, experts, seed)
                for c in conds:
                    s = f(c, held)
                    for i, v in zip(held, s):
                        oof[c][pos[i], j] = v
        xs = np.concatenate([oof[c] for c in conds])
        ys = np.concatenate([[data.items[i].label for i in idx]] * len(conds))
        head = _lr_fit(xs, ys, 1.0, None)
        fitted = [fit_expert(m, data, idx, experts, seed) for m in members]

        def score(cond, tidx):
            z = np.stack([f(cond, tidx) for f in fitted], axis=1)
            return _lr_score(head, z)
        return score
    if ex.kind == "cnn":
        return fit_cnn(ex, data, idx, seed)
    raise ValueError(f"unknown expert kind {ex.kind!r}")


def _crop(arr: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    from aligncore.data.crops import crop

    return crop(arr, top, left, size, "reflect")


def fit_cnn(ex: Expert, data: Data, idx: list[int], seed: int):
    """Train the npr branch's network from scratch on this cell's training regions (self-contained loop)."""
    import torch

    from aligncore.data.crops import grid_positions, random_position
    from aligncore.torchutil import seeded
    from aligncore_plugins.npr_model import NPRNet

    c = {"width": 8, "crop": 96, "steps": 300, "batch": 32, "lr": 2e-3, **ex.cnn}
    size = c["crop"]
    pool = [(i, cond) for i in idx for cond in ex.train_conditions]
    labels = np.array([data.items[i].label for i, _ in pool])
    by_class = [np.flatnonzero(labels == k) for k in (0, 1)]
    rng = np.random.default_rng([seed, len(idx), sum(idx)])
    with seeded(seed):
        model = NPRNet(c["width"])
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    for step in range(c["steps"]):
        half = c["batch"] // 2
        pick = np.concatenate([rng.choice(by_class[0], half), rng.choice(by_class[1], c["batch"] - half)])
        xs = []
        for k in pick:
            arr = data.region(*pool[k])
            t, l = random_position(arr.shape[0], arr.shape[1], size, rng, 8)
            xs.append(_crop(arr, t, l, size))
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div_(255)
        y = torch.from_numpy(labels[pick].astype(np.float32))
        for g in opt.param_groups:  # linear warm-up, cosine decay
            g["lr"] = c["lr"] * min(1.0, (step + 1) / 20) * 0.5 * (1 + np.cos(np.pi * step / c["steps"]))
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    def score(cond, tidx):
        out = []
        with torch.inference_mode():
            for i in tidx:
                arr = data.region(i, cond)
                pos = grid_positions(arr.shape[0], arr.shape[1], size, 4, 8)
                x = torch.from_numpy(np.stack([_crop(arr, t, l, size) for t, l in pos])).permute(0, 3, 1, 2).float().div_(255)
                out.append(float(model(x).mean()))
        return np.array(out)
    return score


def inner_folds(items: list[lf.Item], idx: list[int], k: int = 4) -> list[list[int]]:
    """Split training indices into k folds grouped by fake family and real collection (greedy by size)."""
    groups: dict[str, list[int]] = {}
    for i in idx:
        it = items[i]
        groups.setdefault(("f:" + it.family) if it.label else ("r:" + it.real_group), []).append(i)
    folds: list[list[int]] = [[] for _ in range(k)]
    for side in ("f:", "r:"):  # spread fakes and reals separately so every inner fold has both classes
        load = [0] * k
        for g in sorted((g for g in groups if g.startswith(side)), key=lambda g: (-len(groups[g]), g)):
            j = int(np.argmin(load))
            folds[j] += groups[g]
            load[j] += len(groups[g])
    return [sorted(f) for f in folds if f]


# =========================================================================== evaluation


def cell_metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    from aligncore.metrics import binary_metrics

    m = binary_metrics(labels, scores, scores >= 0)
    return {"auc": m["auc"], "ap": m["ap"], "tpr5": m["tpr_at_5fpr"], "n_real": m["n_real"], "n_fake": m["n_fake"]}


def evaluate(ex: Expert, data: Data, cells: list[lf.Cell], experts: dict[str, Expert], seed: int) -> dict:
    t0 = time.monotonic()
    per_cell = []
    for k, cell in enumerate(cells):
        if ex.kind in ("cnn", "stack"):
            log(f"{ex.name}: cell {k + 1}/{len(cells)} ({cell.name})")
        f = fit_expert(ex, data, cell.train, experts, seed)
        y = np.array([data.items[i].label for i in cell.test])
        row = {"gen_fold": cell.gen_fold, "real_fold": cell.real_fold}
        for cond in fe.CONDITIONS:
            row[cond] = cell_metrics(y, np.asarray(f(cond, cell.test), dtype=float))
        per_cell.append(row)
    return {"cells": per_cell, "summary": summarise(per_cell), "fit_seconds": round(time.monotonic() - t0, 1)}


def summarise(per_cell: list[dict]) -> dict:
    out: dict = {}
    gfolds = list(dict.fromkeys(r["gen_fold"] for r in per_cell))
    rfolds = list(dict.fromkeys(r["real_fold"] for r in per_cell))
    for cond in fe.CONDITIONS:
        by_gen = {g: {k: float(np.mean([r[cond][k] for r in per_cell if r["gen_fold"] == g])) for k in ("auc", "ap", "tpr5")}
                  for g in gfolds}
        by_real = {rf: {k: float(np.mean([r[cond][k] for r in per_cell if r["real_fold"] == rf])) for k in ("auc", "ap", "tpr5")}
                   for rf in rfolds}
        mean = {k: float(np.mean([v[k] for v in by_gen.values()])) for k in ("auc", "ap", "tpr5")}
        worst = min(by_gen.items(), key=lambda kv: kv[1]["auc"])
        out[cond] = {"mean": mean, "by_gen_fold": by_gen, "by_real_fold": by_real,
                     "worst_fold": {"fold": worst[0], "auc": worst[1]["auc"]},
                     "auc_std_over_folds": float(np.std([v["auc"] for v in by_gen.values()]))}
    return out


# =========================================================================== report


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def render(res: dict) -> str:
    run = res["run"]
    lines = [
        "# Leave-one-generator-out generalisation (shared test images)",
        "",
        f"Command: `{run['command']}` — wall time {run['wall_minutes']:.1f} min on {run['cpus']} shared CPU cores "
        f"({run['jobs']} feature workers, 1 thread each; other jobs were running), Python {run['python']}. "
        f"Data: SHARED/data ({run['n_fakes']} fakes, {run['n_reals']} real photos{', quick subset' if run['quick'] else ''}); "
        f"seed {run['seed']}."
        + (f" Features computed in this run: {run['feature_stats']['features']} ({run['feature_stats']['images']} images, "
           f"{run['feature_stats']['seconds']:.0f} s); the rest came from WORK's cache of earlier runs with the same code."
           if run.get("feature_stats") else ""),
        "",
        "Protocol (`benchmarks/logo_folds.py`, `benchmarks/logo_features.py`): one fold per generator family with ≥ 10 "
        "fakes plus a pooled `rare` fold, crossed with 4 real folds (whole photo collections held out) = "
        + (f"{run['n_cells']} cells" if run.get("cells", "all") == "all" else
           f"{run['n_cells']} cells (`--cells diagonal`: generator fold k only against real fold k mod 4)")
        + ". Training never sees the test fold's families, any fake from the publishers of its "
        "images, or the test photo collections. Metrics per cell on the test fold's fakes vs the held-out collections' "
        "photos; a fold's figure is the mean over its real folds, **mean** is over generator folds. Pixels only (no "
        "metadata), centre ≤512 window, ≤256 analysis region. Conditions applied to both classes identically: "
        "**as is**; **JPEG q90**; **social** = ×0.5 bicubic + JPEG q75. `lr` experts are standardised-feature logistic "
        "regressions (C = 0.01, class- and generator-family-balanced weights) trained on the as-is training images; "
        "those named `-aug` add a random degradation (JPEG / resize / blur / noise) of every training image. "
        f"**{SHIPPED}** is exactly the recipe of the shipped detector (`alignctl detect`, `Detector()`: the same fit "
        "on every image, `benchmarks/build_builtin.py`); Δ is an expert's mean as-is AUC minus the shipped one's.",
        "",
        "## Summary: mean over generator folds (AUC / AP / TPR@5%FPR)",
        "",
        "| expert | kind | as is | JPEG q90 | social | Δ | worst fold (as is AUC) | what it is |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ref = res["experts"].get(SHIPPED, {}).get("summary", {}).get("asis", {}).get("mean", {}).get("auc")
    for name, r in res["experts"].items():
        s = r["summary"]
        cells = []
        for cond in fe.CONDITIONS:
            m = s[cond]["mean"]
            cells.append(f"{fmt(m['auc'])} / {fmt(m['ap'])} / {fmt(m['tpr5'])}")
        w = s["asis"]["worst_fold"]
        delta = "—" if ref is None or name == SHIPPED else f"{s['asis']['mean']['auc'] - ref:+.3f}"
        label = f"**{name}** (shipped)" if name == SHIPPED else name
        lines.append(f"| {label} | {r['kind']} | " + " | ".join(cells) + f" | {delta} | {w['fold']} {fmt(w['auc'])} | {r['doc']} |")
    lines += ["", "## Per generator fold (AUC as is / JPEG q90 / social)", ""]
    names = list(res["experts"])
    folds = res["folds"]
    lines.append("| fold | fakes | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for fold in folds:
        cells = []
        for n in names:
            s = res["experts"][n]["summary"]
            cells.append(" / ".join(fmt(s[c]["by_gen_fold"].get(fold["fold"], {}).get("auc")) for c in fe.CONDITIONS))
        lines.append(f"| {fold['fold']} | {fold['n_test_fakes']} | " + " | ".join(cells) + " |")
    lines += ["", "## Per real fold (AUC as is / JPEG q90 / social, mean over generator folds)", ""]
    rnames = list(next(iter(res["experts"].values()))["summary"]["asis"]["by_real_fold"])
    lines.append("| expert | " + " | ".join(rnames) + " |")
    lines.append("|---|" + "---|" * len(rnames))
    for n in names:
        s = res["experts"][n]["summary"]
        lines.append(f"| {n} | " + " | ".join(" / ".join(fmt(s[c]["by_real_fold"][rf]["auc"]) for c in fe.CONDITIONS)
                                               for rf in rnames) + " |")
    lines += ["", "## Folds", "", "| fold | generators | publishers left out of training | test fakes | training fakes |",
              "|---|---|---|---|---|"]
    for f in folds:
        lines.append(f"| {f['fold']} | {', '.join(f['generators'])} | {', '.join(f['publishers'])} | {f['n_test_fakes']} | "
                     f"{f['n_train_fakes']} |")
    lines.append("")
    return "\n".join(lines)


# =========================================================================== export


def export_head(ex: Expert, data: Data, shared: Path, out: Path, seed: int,
                fitted_by: str = "benchmarks/generalization.py --export") -> dict:
    """Fit ``ex`` (an lr expert over ae [+ thumb-enc] features) on every image and write it as an
    ``aerecon`` head checkpoint; also record a threshold at 5 % FPR on real photos, read off
    out-of-fold scores (each real fold scored by a fit that never saw its collections)."""
    if ex.kind != "lr" or ex.fsets not in (("ae",), ("ae", "thumb-enc")) or ex.columns is not None or ex.recon:
        raise SystemExit(f"--export needs an lr expert over ae or ae+thumb-enc features (all columns), not {ex.name}")
    from aligncore import create_branch
    from aligncore_plugins.aerecon import save_head

    idx = list(range(len(data.items)))
    x, y, w = train_rows(ex, data, idx)
    sc, clf = _lr_fit(x, y, ex.C, w)
    oof = []
    for rf, groups in lf.real_folds(data.items).items():
        held = [i for i in idx if not data.items[i].label and data.items[i].real_group in groups]
        rest = [i for i in idx if i not in set(held)]
        xr, yr, wr = train_rows(ex, data, rest)
        model = _lr_fit(xr, yr, ex.C, wr)
        oof += list(_lr_score(model, data.X(ex, "orig", "asis", held)[0]))
    threshold = float(np.quantile(oof, 0.95))
    branch = create_branch("aerecon", encoder_path=str(shared / "weights" / "taef2_encoder.pth"),
                           decoder_path=str(shared / "weights" / "taef2_decoder.pth"), device="cpu",
                           scales=list(fe.AE_SCALES), crop_size=fe.AE_CROP,
                           canonical_size=fe.THUMB if "thumb-enc" in ex.fsets else None)
    info = {
        "fitted_by": fitted_by, "expert": ex.name,
        "data": f"SHARED/data: {int(y.sum())} fakes and {int((1 - y).sum())} real photos, as-is condition",
        "head": {"C": ex.C, "class_weight": "balanced", "family_balanced": ex.balance, "train_conditions": list(ex.train_conditions)},
        "threshold_logit_5fpr": threshold,
        "threshold_note": "95th percentile of out-of-fold logits of the real photos (4 real folds, each scored by a fit without it)",
        "seed": seed,
    }
    save_head(branch, out, sc.mean_, sc.scale_, clf.coef_[0], clf.intercept_, info=info)
    from aligncore.hashing import sha256_file

    return {"out": str(out), "head_sha256": sha256_file(out / "head.safetensors"), "threshold_logit_5fpr": threshold,
            "n_features": int(x.shape[1])}


# =========================================================================== main


def default_shared() -> str | None:
    """``../shared`` beside the checkout, when it holds the data."""
    cand = REPO.parent / "shared"
    return str(cand) if (cand / "data" / "MANIFEST.csv").is_file() else None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.environ.get("ALIGNCORE_SHARED") or default_shared(),
                    help="The shared folder holding data/ and weights/ (default: $ALIGNCORE_SHARED, else ../shared "
                    "beside the checkout when it exists).")
    ap.add_argument("--work", help="Cache folder for decoded pixels and features (outside the repository); "
                    "default: a folder under the system temp dir.")
    ap.add_argument("--quick", action="store_true", help="Stratified subset and fewer experts (a few minutes).")
    ap.add_argument("--experts", default="default",
                    help="Comma-separated expert names, 'default' or 'all' (every expert but the slow cnn and texture-window ones).")
    ap.add_argument("--jobs", type=int, default=2, help="Feature-extraction worker processes (1 thread each).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", help="Markdown output (default benchmarks/results/generalization.md; quick: WORK/).")
    ap.add_argument("--cells", choices=("all", "diagonal"), default="all",
                    help="'diagonal': one real fold per generator fold (fold k with real fold k mod 4), for expensive experts.")
    ap.add_argument("--cnn-steps", type=int, help="Override the training steps of cnn experts (smoke runs).")
    ap.add_argument("--export", metavar="DIR", help="Instead of evaluating: fit --export-expert on every image and write "
                    "an aerecon head checkpoint to DIR.")
    ap.add_argument("--export-expert", default="ae+thumb-lr", help="The expert --export fits (default ae+thumb-lr).")
    ap.add_argument("--render", metavar="JSON", help="Re-render the markdown of an earlier run's .json and exit.")
    ap.add_argument("--list", action="store_true", help="List the experts and exit.")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    experts = build_experts()
    if args.list:
        for e in experts.values():
            print(f"{e.name:22s} {e.kind:6s} {e.doc}")
        return
    if args.render:
        src = Path(args.render)
        md = render(json.loads(src.read_text()))
        src.with_suffix(".md").write_text(md)
        print(md)
        return
    if not args.shared or not (Path(args.shared) / "data" / "MANIFEST.csv").is_file():
        sys.exit("pass --shared DIR (or set ALIGNCORE_SHARED) pointing at the folder holding data/MANIFEST.csv and weights/")
    shared = Path(args.shared)
    if not (shared / "weights" / "taef2_encoder.pth").is_file():
        sys.exit(f"{shared / 'weights'} lacks taef2_encoder.pth / taef2_decoder.pth")
    work = Path(args.work) if args.work else Path(os.environ.get("TMPDIR", "/tmp")) / "aligncore-generalization"
    work.mkdir(parents=True, exist_ok=True)
    if args.cnn_steps:
        for e in experts.values():
            if e.kind == "cnn":
                e.cnn = {**e.cnn, "steps": args.cnn_steps}
    if args.export:
        args.experts = args.export_expert
    if args.experts == "default":
        wanted = list(QUICK_EXPERTS if args.quick else DEFAULT_EXPERTS)
    elif args.experts == "all":
        # the cnn experts (per-cell training) and the texture-window ones (their own features) only by name: slow
        wanted = [n for n, e in experts.items() if e.kind != "cnn" and "ae-texture" not in e.fsets]
    else:
        wanted = [e.strip() for e in args.experts.split(",") if e.strip()]
        unknown = [e for e in wanted if e not in experts]
        if unknown:
            sys.exit(f"unknown expert(s) {unknown}; known: {', '.join(experts)}")
    import torch

    torch.set_num_threads(1)
    t_start = time.monotonic()

    all_items = lf.load_items(shared / "data" / "MANIFEST.csv")
    gfolds = lf.generator_folds(all_items)
    items = lf.subsample(all_items, 8, 12, seed=args.seed) if args.quick else all_items
    cells = lf.build_cells(items, gfolds)
    if args.cells == "diagonal":
        rnames = list(lf.real_folds(items))
        gnames = list(dict.fromkeys(c.gen_fold for c in cells))
        cells = [c for c in cells if rnames.index(c.real_fold) == gnames.index(c.gen_fold) % len(rnames)]
    for c in cells:
        lf.check_cell(items, c)
    log(f"{len(items)} images ({sum(it.label for it in items)} fakes), {len(gfolds)} generator folds × "
        f"{len(lf.real_folds(items))} real folds = {len(cells)} cells; experts: {', '.join(wanted)}")

    # ---- features
    needs: set = set()
    for name in wanted:
        needs |= experts[name].needs(experts)
    spec = []
    for fset, source, cond in sorted(needs):
        for it in items:
            if source == "recon" and it.label:
                continue
            spec.append((it.sha256, it.file, fset, source, cond))
    store = fe.FeatureStore(work)
    stats = fe.extract(store, spec, {"data": shared / "data", "weights": shared / "weights", "work": work, "seed": args.seed},
                       jobs=args.jobs, progress=not args.no_progress)
    log(f"features: {stats['features']} computed for {stats['images']} images in {stats['seconds']} s "
        f"(the rest from the cache)")

    # ---- fits
    data = Data(items, store, fe.Context(shared / "data", shared / "weights", work, args.seed))
    if args.export:
        if args.quick:
            sys.exit("--export fits on every image; drop --quick")
        res = export_head(experts[args.export_expert], data, shared, Path(args.export), args.seed)
        print(json.dumps(res, indent=1))
        return
    out = {"experts": {}}
    for name in wanted:
        ex = experts[name]
        r = evaluate(ex, data, cells, experts, args.seed)
        out["experts"][name] = {"kind": ex.kind, "doc": ex.doc, **r}
        s = r["summary"]
        log(f"{name}: mean AUC as is {s['asis']['mean']['auc']:.3f}, JPEG q90 {s['jpeg90']['mean']['auc']:.3f}, "
            f"social {s['social']['mean']['auc']:.3f} ({r['fit_seconds']} s)")
    wall = (time.monotonic() - t_start) / 60
    cmd = "python benchmarks/generalization.py --shared SHARED --work WORK" + (" --quick" if args.quick else "")
    if args.experts != "default":
        cmd += f" --experts {args.experts}"
    if args.cells != "all":
        cmd += f" --cells {args.cells}"
    if args.cnn_steps:
        cmd += f" --cnn-steps {args.cnn_steps}"
    if args.results:
        rp = Path(args.results).resolve()
        cmd += f" --results {rp.relative_to(REPO) if rp.is_relative_to(REPO) else 'OUT.md'}"
    out["run"] = {
        "command": f"nice -n 10 {cmd} --jobs {args.jobs}", "wall_minutes": round(wall, 2), "quick": args.quick,
        "cpus": os.cpu_count(), "jobs": args.jobs, "python": platform.python_version(), "seed": args.seed,
        "n_fakes": sum(it.label for it in items), "n_reals": sum(1 - it.label for it in items), "n_cells": len(cells), "cells": args.cells,
        "feature_stats": stats,
    }
    out["folds"] = [f for f in lf.describe(all_items) if f["fold"] in {c.gen_fold for c in cells}]
    if args.quick:
        for f in out["folds"]:
            f["n_test_fakes"] = sum(1 for it in items if it.label and it.family in gfolds[f["fold"]])
    md = render(out)
    results = Path(args.results) if args.results else (
        work / "generalization-quick.md" if args.quick else REPO / "benchmarks" / "results" / "generalization.md")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(md)
    results.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    print(md)
    log(f"wrote {results} (+ .json); wall time {wall:.1f} min")


if __name__ == "__main__":
    main()
