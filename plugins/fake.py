"""Built-in plugin registering the model-free ``fake`` branch from :mod:`aligncore.testing`."""

from aligncore import hookimpl
from aligncore.testing import FakeBranch


@hookimpl
def register_branches(register):
    register(FakeBranch)
