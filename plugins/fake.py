"""Built-in plugin: the model-free ``fake`` branch and ``fake-pairs`` builder (plumbing checks, demos).

Both are the example components of :mod:`aligncore.testing` under their built-in names.
"""

from aligncore import hookimpl
from aligncore.testing import FakeBranch, FakePairBuilder


class StatisticsBranch(FakeBranch):
    """Deterministic scores from image statistics (no model): for tests and plumbing checks."""

    name = "fake"
    #: ``alignctl demo`` scores with it when no trainable branch is installed
    demo_options = {"role": "fallback"}


class PairsBuilder(FakePairBuilder):
    """No model: pairs each real image with a smoothed, seeded-noise copy (tests, plumbing checks)."""

    name = "fake-pairs"


@hookimpl
def register_branches(register):
    register(StatisticsBranch)


@hookimpl
def register_supervision_builders(register):
    register(PairsBuilder)
