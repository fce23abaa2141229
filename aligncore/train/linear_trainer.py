"""Fit a linear-model branch (``spectrum``): per-image features → standardisation → logistic regression.

The branch supplies the features and the scoring; the trainer owns the fit. A branch that
uses it implements the :data:`LINEAR_MODEL_PROTOCOL`:

- ``features(arr)``: a uint8 H×W×3 array → a 1-D float feature vector;
- ``set_linear_params(params)``: take ``{"mean", "scale", "coef", "intercept"}`` (float32 arrays);
- ``score_batch(features)``: stacked feature vectors → P(fake) (as when scoring);
- ``save(out)``: write the weights + ``branch.json`` so ``checkpoint=out`` reloads them.

The split is the pixel trainer's (by pair / source photo); JPEG augmentation draws one
quality per group, so both images of a pair get the same one (format-aligned). The fit is
deterministic, so a re-run with the same ``--out`` simply fits again. ``OUT/best`` and
``OUT/last`` hold the same weights (one fit); ``OUT/metrics.csv`` one row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import AlignCoreError
from ..hashing import stable_int
from .base import METRICS_FILE, Trainer, TrainResult, append_metrics, make_summary, write_training_record
from .linear_config import LinearTrainConfig
from .pixel_data import TrainRecord, load_training_set, split_by_group

LINEAR_MODEL_PROTOCOL = ("features", "set_linear_params", "score_batch", "save")


class LinearTrainer(Trainer):
    """Standardise + logistic regression on the branch's features; ``self.branch`` holds the fit afterwards."""

    config_class = LinearTrainConfig
    config: LinearTrainConfig

    def __init__(self, branch_class, branch_config, config: LinearTrainConfig, **kwargs):
        super().__init__(branch_class, branch_config, config, **kwargs)
        missing = [m for m in LINEAR_MODEL_PROTOCOL if not callable(getattr(branch_class, m, None))]
        if missing:
            raise AlignCoreError(f"branch {branch_class.name!r} cannot use the linear trainer: it lacks {', '.join(missing)}.")
        self.branch = self.new_branch()

    def features(self, records: list[TrainRecord], augment: bool) -> np.ndarray:
        from ..data import load_image
        from ..data.crops import jpeg_roundtrip

        cfg = self.config
        rows = []
        for r in self._progress(records, "features"):
            arr = np.asarray(load_image(r.path), dtype=np.uint8)
            if augment and cfg.jpeg_aug_prob:
                # one draw per group: both images of a pair get the same quality (format-aligned)
                rng = np.random.default_rng([cfg.seed, stable_int(r.group)])
                if rng.random() < cfg.jpeg_aug_prob:
                    arr = jpeg_roundtrip(arr, int(rng.integers(cfg.jpeg_quality_min, cfg.jpeg_quality_max + 1)))
            rows.append(self.branch.features(arr))
        return np.stack(rows)

    def train(self, train_set, out_dir) -> TrainResult:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        cfg = self.config
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        train, val = split_by_group(load_training_set(train_set, self.allow_outside_paths), cfg.val_fraction, cfg.seed)
        record = self.training_record(train + val, train_set)
        xtr, ytr = self.features(train, True), np.array([r.label for r in train])
        scaler = StandardScaler().fit(xtr)
        clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter).fit(scaler.transform(xtr), ytr)
        self.branch.set_linear_params({
            "mean": scaler.mean_.astype(np.float32), "scale": scaler.scale_.astype(np.float32),
            "coef": clf.coef_[0].astype(np.float32), "intercept": clf.intercept_.astype(np.float32),
        })
        row = {"epoch": 0, "step": 1, "train_loss": "", "lr": "", "elapsed_s": "", "stopped": ""}
        if val:
            row.update(self.validate(val))
        (out / METRICS_FILE).unlink(missing_ok=True)
        append_metrics(out / METRICS_FILE, row)
        (out / "train_config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
        (out / "split.json").write_text(json.dumps({"n_train": len(train), "n_val": len(val),
                                                    "val_groups": sorted({r.group for r in val})}, indent=2) + "\n")
        write_training_record(self.branch.save(out / "last"), record)
        iterations = int(np.max(clf.n_iter_))
        summary = make_summary(steps=iterations, epochs=None, stop_reason="converged" if iterations < cfg.max_iter else "max_iter",
                               val_auc=row.get("val_auc"), solver_iterations=iterations,
                               n_train=len(train), n_val=len(val), data_digest=record["data"]["digest"])
        best = self.branch.save(out / "best")
        write_training_record(best, record)
        return TrainResult(best, summary)

    def validate(self, val: list[TrainRecord]) -> dict:
        """Loss, AUC, AP and balanced accuracy of the fitted model on the held-out records."""
        from ..metrics import binary_metrics

        p = np.array(self.branch.score_batch(self.features(val, False)))
        y = np.array([r.label for r in val])
        m = binary_metrics(y, p, p >= 0.5)
        eps = 1e-7
        return {"val_loss": float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))),
                "val_auc": m["auc"], "val_ap": m["ap"], "val_balanced_accuracy": m["balanced_accuracy"]}

    def _progress(self, items, what: str):
        if not self.progress or len(items) < 50:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=f"train {self.branch.name}: {what}", unit="img", dynamic_ncols=True, leave=False)
