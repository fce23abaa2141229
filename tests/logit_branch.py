"""A test branch that gives logits (as npr, spectrum and qwen do), so its run folders carry trust's
``logit_<branch>`` columns: the fake branch's scores, handed back through ``scores_from_logits``."""

from __future__ import annotations

import numpy as np

from aligncore import hookimpl
from aligncore.branch import scores_from_logits
from aligncore.testing import FakeBranch


class LogitFake(FakeBranch):
    name = "logit-fake"
    help = "test: the fake branch's scores given as logits"

    def score_batch(self, batch):
        p = np.clip(np.asarray(super().score_batch(batch), dtype=np.float64), 1e-12, 1 - 1e-12)
        return scores_from_logits(np.log(p) - np.log1p(-p))


class LogitPlugin:
    @hookimpl
    def register_branches(self, register):
        register(LogitFake)
