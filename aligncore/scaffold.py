"""``alignctl plugins new NAME``: a ready plugin distribution to start from.

The skeleton is an installable ``aligncore-NAME`` distribution: a ``pyproject.toml`` declaring the
``aligncore`` entry point, a package with one model-free branch registered through
``register_branches``, a README, and tests that use :mod:`aligncore.testing` (the branch contract
on generated images, the entry point, a whole run). ``pip install -e aligncore-NAME`` then
``pytest aligncore-NAME`` passes as generated.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import AlignCoreError

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def plugin_names(name: str) -> dict[str, str]:
    """The names a plugin called ``name`` uses: distribution, package, entry point, branch, class."""
    short = name.removeprefix("aligncore-")
    if not _NAME.match(short):
        raise AlignCoreError(f"plugin name {name!r}: use lower-case letters, digits and single hyphens, starting with a "
                             "letter (e.g. my-detector).")
    package = "aligncore_" + short.replace("-", "_")
    cls = "".join(part.capitalize() for part in short.split("-")) + "Branch"
    return {"short": short, "distribution": f"aligncore-{short}", "package": package, "entry_point": short,
            "branch": short, "cls": cls}


PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{distribution}"
version = "0.1.0"
description = "An aligncore plugin: the {branch} branch."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["aligncore"]

[project.optional-dependencies]
test = ["pytest>=8"]

# aligncore finds the plugin through this entry point once the distribution is installed
[project.entry-points.aligncore]
{entry_point} = "{package}"

[tool.setuptools]
packages = ["{package}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

PACKAGE = '''"""The ``{branch}`` branch: an aligncore plugin.

Replace the statistic below with your detector: ``load`` builds or loads the model (weights through
``aligncore.safeio``), ``preprocess`` turns one RGB image into the model's input (it runs in data
loader workers, so it must not touch the model), ``score_batch`` returns P(fake) in [0, 1] per image.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from aligncore import Branch, BranchConfig, hookimpl

__version__ = "0.1.0"


class {cls}Config(BranchConfig):
    pivot: float = Field(0.05, gt=0, description="Mean absolute difference of neighbouring pixels that maps to 0.5.")
    steepness: float = Field(50.0, gt=0, description="How fast the score moves away from 0.5.")


class {cls}(Branch):
    """P(fake) rises as neighbouring pixels get more alike (smooth, noise-free images). No model."""

    name = "{branch}"
    help = "Plugin {distribution}: P(fake) from pixel smoothness (a template to replace)."
    config_class = {cls}Config
    config: {cls}Config

    def preprocess(self, image) -> np.ndarray:
        a = np.asarray(image, dtype=np.float32) / 255.0
        dx = np.abs(np.diff(a, axis=1)).mean() if a.shape[1] > 1 else 0.0
        dy = np.abs(np.diff(a, axis=0)).mean() if a.shape[0] > 1 else 0.0
        return np.array([0.5 * (dx + dy)], dtype=np.float64)

    def score_batch(self, batch) -> list[float]:
        x = np.asarray(batch, dtype=np.float64).reshape(-1)
        c = self.config
        return [1.0 / (1.0 + math.exp(-c.steepness * (c.pivot - float(v)))) for v in x]


@hookimpl
def register_branches(register):
    register({cls})
'''

TESTS = '''"""Tests of the {branch} plugin, written with aligncore.testing."""

from __future__ import annotations

from aligncore import RunConfig, create_branch, list_components, run
from aligncore.data import load_dataset, load_image
from aligncore.testing import check_branch_contract, make_image_folder


def test_the_branch_keeps_the_contract(tmp_path):
    folder = make_image_folder(tmp_path / "images", n_real=3, n_fake=3)
    images = [load_image(r.path) for r in load_dataset(folder).records]
    scores = check_branch_contract(create_branch("{branch}"), images)
    assert len(scores) == 6


def test_aligncore_finds_the_plugin_through_its_entry_point():
    found = {{r.name: r.plugin for r in list_components("branch")}}
    assert found.get("{branch}") == "{entry_point}"


def test_a_run_scores_every_image(tmp_path):
    folder = make_image_folder(tmp_path / "images", n_real=4, n_fake=4)
    result = run(RunConfig(branches=["{branch}"], data=str(folder), out=str(tmp_path / "run"),
                           store=str(tmp_path / "store.sqlite")), progress=False)
    assert result.metrics["overall"]["n"] == 8 and not result.skipped
'''

README = '''# {distribution}

An aligncore plugin that adds the `{branch}` branch.

```bash
pip install -e .              # aligncore finds it through the `aligncore` entry point
alignctl plugins              # lists {entry_point}
alignctl run --branches {branch} --data IMAGES
pytest                        # the tests use aligncore.testing
```

While you write it, the module also loads without installing: `PYTHONPATH=. ALIGNCORE_PLUGINS={package} alignctl branches`.
'''


def write_plugin_skeleton(name: str, out: str | Path | None = None) -> tuple[Path, list[Path]]:
    """Write the distribution for plugin ``name`` into ``out`` (default ``./aligncore-NAME``); (folder, files)."""
    names = plugin_names(name)
    root = Path(out) if out else Path(names["distribution"])
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise AlignCoreError(f"{root} exists and is not an empty folder; choose another with --out.")
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{names['package']}/__init__.py": PACKAGE,
        f"tests/test_{names['package']}.py": TESTS,
    }
    written = []
    for rel, template in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(template.format(**names), encoding="utf-8")
        written.append(p)
    return root, written
