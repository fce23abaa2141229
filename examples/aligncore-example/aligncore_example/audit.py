"""An audit: a check of a labelled set that studies run by name (``audits:`` in a study file)."""

from __future__ import annotations

from pydantic import Field

from aligncore.audit import Audit, AuditConfig, AuditOutcome


class ClassBalanceConfig(AuditConfig):
    max_ratio: float = Field(3.0, ge=1.0, description="Largest class size ratio that still passes.")


class ClassBalanceAudit(Audit):
    """Counts the images of each class and generator; fails a set whose classes differ more than ``max_ratio``."""

    name = "class-balance"
    help = "Example plugin: images per class and generator; fails when the classes are too unequal."
    config_class = ClassBalanceConfig

    def run(self, target, out_dir, log=None):
        """``target``: a labelled folder or manifest -> flat metrics for tables, and the details."""
        from aligncore.data import load_dataset

        records = load_dataset(target).records
        n_real = sum(r.label == 0 for r in records)
        n_fake = sum(r.label == 1 for r in records)
        ratio = max(n_real, n_fake) / max(1, min(n_real, n_fake))
        per_generator: dict[str, int] = {}
        for r in records:
            if r.label == 1:
                per_generator[r.generator or "unknown"] = per_generator.get(r.generator or "unknown", 0) + 1
        verdict = "pass" if min(n_real, n_fake) > 0 and ratio <= self.config.max_ratio else "imbalanced"
        return AuditOutcome({"n_real": n_real, "n_fake": n_fake, "ratio": round(ratio, 4), "verdict": verdict},
                            {"per_generator": per_generator})
