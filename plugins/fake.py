"""Built-in plugin registering the model-free ``fake`` branch and ``fake-pairs`` builder from :mod:`aligncore.testing`."""

from aligncore import hookimpl
from aligncore.testing import FakeBranch, FakePairBuilder


@hookimpl
def register_branches(register):
    register(FakeBranch)


@hookimpl
def register_supervision_builders(register):
    register(FakePairBuilder)
