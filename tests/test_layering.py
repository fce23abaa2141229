"""The layers stay layered (read with ``ast``, nothing is imported):

- no module under ``aligncore/`` imports ``aligncore_plugins`` except ``aligncore/plugins.py``, which
  registers the built-ins;
- no string literal naming a built-in branch or builder appears in ``aligncore/`` code outside
  ``aligncore/plugins.py``: the core knows components by registered name only, through the registry;
- no module under ``plugins/`` imports ``aligncore.cli`` (plugins use ``aligncore.cli_options``).

"real" and "fake" are also the two labels: folder names (``1_fake``, ``fake/<generator>``), verdict
strings, metric keys (``n_fake``) and manifest values are data, and the core must be free to spell
them. So the literal ``"fake"`` counts as naming the ``fake`` *branch* only where a branch or builder
name is expected: an argument of ``create_branch`` / ``create_builder`` / ``registry.get("branch", ...)``,
a value bound to a name, keyword or field that says ``branch`` or ``builder`` (``branches=[...]``,
``fallback_branch = ...``), or a component class's ``name``, as the whole literal or an item of a
comma-separated one. Every other built-in name ("npr", "tiny-ae", ...) counts wherever it appears as a
word of a literal: a name in a help text or message ("e.g. npr") is the core knowing that plugin too.
Docstrings are prose and are not read.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "aligncore"
PLUGINS = REPO / "plugins"
REGISTERS_BUILTINS = CORE / "plugins.py"
#: names that are also label words (see the module docstring)
LABEL_WORDS = {"real", "fake"}
NAME_CALLS = {"create_branch", "create_builder"}


def builtin_names() -> set[str]:
    """Every branch and builder name a built-in plugin registers."""
    from aligncore.plugins import get_plugin_state
    from aligncore.registry import get_registry

    builtin = {n for n, info in get_plugin_state().infos.items() if info.builtin}
    reg = get_registry()
    return {name for kind in ("branch", "builder") for name, r in reg.components[kind].items() if r.plugin in builtin}


def modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def _says_component(name: str | None) -> bool:
    return bool(name) and ("branch" in name.lower() or "builder" in name.lower())


def _target_names(node: ast.AST) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    out = []
    for t in targets:
        if isinstance(t, ast.Name):
            out.append(t.id)
        elif isinstance(t, ast.Attribute):
            out.append(t.attr)
    return out


def _in_name_position(const: ast.Constant, parents: dict[ast.AST, ast.AST]) -> bool:
    """Is this literal used where a branch or builder name is expected?"""
    node: ast.AST = const
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Call):
            func = parent.func
            fname = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if fname in NAME_CALLS and node in parent.args:
                return True
            if (fname == "get" and parent.args and isinstance(parent.args[0], ast.Constant)
                    and parent.args[0].value in ("branch", "builder") and node in parent.args[1:]):
                return True
        if isinstance(parent, ast.keyword) and _says_component(parent.arg):
            return True
        if isinstance(parent, (ast.Assign, ast.AnnAssign)):
            names = _target_names(parent)
            if any(_says_component(n) for n in names):
                return True
            if "name" in names and isinstance(parents.get(parent), ast.ClassDef):  # a component class's name
                return True
            return False
        if isinstance(parent, ast.stmt):
            return False
        node = parent
    return False


def import_violations(path: Path, forbidden: str) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # importlib.import_module("...")
            names = [node.value] if node.value.startswith(forbidden + ".") or node.value == forbidden else []
        if any(n == forbidden or n.startswith(forbidden + ".") for n in names):
            out.append(f"{rel(path)}:{node.lineno}: imports {forbidden}")
    return out


def name_violations(path: Path, names: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents, docs = _parents(tree), _docstrings(tree)
    plain = sorted(names - LABEL_WORDS, key=len, reverse=True)  # longest first: "tiny-ae" before a "tiny"
    words = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, plain)) + r")(?![\w-])") if plain else re.compile("(?!)")
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docs:
            continue
        items = {v.strip() for v in node.value.split(",")}
        hits = sorted(set(words.findall(node.value)))
        if items & names & LABEL_WORDS and _in_name_position(node, parents):
            hits += sorted(items & names & LABEL_WORDS)
        if hits:
            out.append(f"{rel(path)}:{node.lineno}: names built-in {', '.join(repr(h) for h in hits)}")
    return out


# ---------------------------------------------------------------------- the rules


def test_only_the_plugin_manager_imports_the_builtins():
    bad = [v for p in modules(CORE) if p != REGISTERS_BUILTINS for v in import_violations(p, "aligncore_plugins")]
    assert not bad, "the core imports built-in plugins by module:\n" + "\n".join(bad)


def test_the_core_names_no_builtin_branch_or_builder():
    names = builtin_names()
    assert {"fake", "fake-pairs"} <= names and len(names) > 2  # the registry was read
    bad = [v for p in modules(CORE) if p != REGISTERS_BUILTINS for v in name_violations(p, names)]
    assert not bad, "the core names built-in components (use the registry and the plugins' own attributes):\n" + "\n".join(bad)


def test_plugins_never_import_the_cli_internals():
    bad = [v for p in modules(PLUGINS) for v in import_violations(p, "aligncore.cli")]
    assert not bad, "plugins import aligncore.cli (use aligncore.cli_options):\n" + "\n".join(bad)


# ---------------------------------------------------------------------- the checker itself


@pytest.mark.parametrize("code, expected", [
    ('create_branch("npr")', ["'npr'"]),
    ('x = "npr,qwen"', ["'npr'", "'qwen'"]),
    ('help = "Branch names, e.g. npr."', ["'npr'"]),
    ('msg = f"train {b} like npr-style or qwen2"', []),  # not the whole word
    ('cfg = RunConfig(branches=["fake"])', ["'fake'"]),
    ('fallback_branch: str = "fake"', ["'fake'"]),
    ('get_registry().get("branch", "fake")', ["'fake'"]),
    ('class B:\n    name = "fake"\n', ["'fake'"]),
    ('out["fake"] += 1', []),  # a label count
    ('d = root / "1_fake" / "fake" / gen', []),  # label folders
    ('label = "real" if y == 0 else "fake"', []),
    ('def f():\n    """Uses npr, say."""\n', []),  # prose
])
def test_the_checker_tells_names_from_labels(tmp_path, code, expected):
    p = tmp_path / "mod.py"
    p.write_text(code + "\n")
    found = name_violations(p, {"npr", "qwen", "fake"})
    assert [h for v in found for h in v.split("names built-in ")[1].split(", ")] == expected


def test_the_import_checker_sees_every_form(tmp_path):
    p = tmp_path / "mod.py"
    p.write_text("import aligncore_plugins.npr\nfrom aligncore_plugins import qwen\nimport importlib\n"
                 "importlib.import_module('aligncore_plugins.x')\nfrom aligncore.cli_options import parse_kv\n"
                 "from aligncore import cli\n")
    assert [v.split(":")[1] for v in import_violations(p, "aligncore_plugins")] == ["1", "2", "4"]
    assert [v.split(":")[1] for v in import_violations(p, "aligncore.cli")] == ["6"]  # cli_options is not cli


def test_no_undefined_or_unused_names():
    """Merges of parallel work lose imports (a name used by one side, its import removed by the other): pyflakes'
    rules as ruff implements them catch an undefined name before it fails at run time on some rarely taken path."""
    import shutil
    import subprocess

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (it comes with the test extra: pip install -e '.[test]')")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([ruff, "check", "--no-cache", "--select", "F821,F822,F823,F401,F811", "--output-format",
                           "concise", "aligncore", "plugins"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
