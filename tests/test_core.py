"""The contract: registry, factories, configs, fusions, metrics, plugin manager."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import aligncore
from aligncore import hookimpl
from aligncore.errors import ConfigError, UnknownComponentError
from aligncore.plugins import get_plugin_manager, reset_plugins
from aligncore.registry import create_branch, create_fusion, get_registry, list_components


def test_unknown_names_list_close_matches():
    with pytest.raises(UnknownComponentError) as e:
        create_branch("fkae")
    assert "Did you mean 'fake'" in str(e.value)
    assert isinstance(e.value, KeyError)
    with pytest.raises(UnknownComponentError, match="Known fusions: .*or"):
        create_fusion("nope")


def test_configs_forbid_unknown_fields_and_name_them():
    with pytest.raises(ConfigError, match="colour"):
        create_branch("fake", colour="red")
    with pytest.raises(ConfigError, match="batch_size"):
        create_branch("fake", batch_size=0)


def test_hooks_get_validated_and_attributed():
    class NotABranch:
        name = "bad"

    class Plugin:
        @hookimpl
        def register_branches(self, register):
            register(NotABranch)

    pm = get_plugin_manager()
    pm.register(Plugin(), name="badplugin")
    try:
        from aligncore.registry import reset_registry

        reset_registry()
        reg = get_registry()
        assert "badplugin" in reg.errors and "not a Branch subclass" in reg.errors["badplugin"]
        assert "fake" in reg.names("branch")  # the others still load
    finally:
        pm.unregister(name="badplugin")
        reset_plugins()


def test_hook_implementations_take_a_subset_of_a_grown_spec():
    """A spec grows an argument (as hookspecs.py allows): old and new plugins each get what they name."""
    import pluggy

    from aligncore.hookspecs import hookspec
    from aligncore.registry import call_each

    class GrownSpecs:
        @hookspec
        def register_things(self, register, context):
            """``register(thing)``; ``context`` is the argument added later."""

    class OldPlugin:  # written before ``context`` existed
        @hookimpl
        def register_things(self, register):
            register("old")

    class NewPlugin:  # names both, in another order
        @hookimpl
        def register_things(self, context, register):
            register(("new", context["colour"]))

    class ContextOnly:
        @hookimpl
        def register_things(self, context):
            context["seen"] = True

    class Raising:
        @hookimpl
        def register_things(self, register):
            raise RuntimeError("boom")

    pm = pluggy.PluginManager("aligncore")
    pm.add_hookspecs(GrownSpecs)
    for name, plugin in (("old", OldPlugin()), ("new", NewPlugin()), ("ctx", ContextOnly()), ("bad", Raising())):
        pm.register(plugin, name=name)
    got, contexts = [], {}

    def arguments(plugin):
        contexts[plugin] = {"colour": f"{plugin}-blue"}
        return {"register": lambda thing: got.append((plugin, thing)), "context": contexts[plugin]}

    errors = [(p, str(e)) for p, e in call_each(pm, "register_things", arguments)]
    assert sorted(got) == [("new", ("new", "new-blue")), ("old", "old")]
    assert contexts["ctx"].get("seen") is True
    assert errors == [("bad", "boom")]  # named, and the others still ran
    with pytest.raises(TypeError, match="context"):  # the facade must pass every argument of the spec
        list(call_each(pm, "register_things", lambda plugin: {"register": print}))


def test_wildcard_listing():
    assert [r.name for r in list_components("fusion", "w*")] == ["weighted"]


def test_import_is_light():
    code = "import sys, aligncore, aligncore.cli; print(any(m in sys.modules for m in ('torch', 'transformers', 'timm')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_help_loads_plugins_without_torch():
    code = (
        "import sys\nfrom aligncore.cli import build_cli\nbuild_cli()\n"
        "from aligncore.registry import get_registry\nget_registry()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'timm', 'diffusers', 'peft', 'trl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ fusions


def test_or_fusion_per_branch_thresholds():
    f = create_fusion("or", thresholds={"a": 0.9})
    out = f.predict({"a": np.array([0.8, 0.95, 0.1, np.nan]), "b": np.array([0.2, 0.1, 0.6, np.nan])})
    assert out.verdict.tolist() == [False, True, True, False]
    assert np.isnan(out.score[3]) and (out.score[:3] >= 0).all() and (out.score[:3] <= 1).all()


def test_weighted_fusion_ignores_missing_branch():
    f = create_fusion("weighted", weights={"a": 3.0, "b": 1.0}, threshold=0.5)
    out = f.predict({"a": np.array([0.2, np.nan]), "b": np.array([1.0, 0.7])})
    assert out.score.tolist() == pytest.approx([0.4, 0.7])
    assert out.verdict.tolist() == [False, True]


@pytest.mark.parametrize("name", [r.name for r in list_components("fusion")])
def test_every_fusion_contract(name):
    cls = get_registry().get("fusion", name).cls
    f = cls()
    rng = np.random.default_rng(0)
    scores = {"a": rng.uniform(size=40), "b": rng.uniform(size=40)}
    labels = (scores["a"] > 0.5).astype(int)
    if cls.needs_fit:
        f.fit(scores, labels)
    out = f.predict(scores)
    assert out.score.shape == (40,) and out.verdict.dtype == bool
    assert np.nanmin(out.score) >= 0 and np.nanmax(out.score) <= 1


@pytest.mark.parametrize("name", [r.name for r in list_components("branch")])
def test_every_branch_has_documented_config(name):
    cls = get_registry().get("branch", name).cls
    assert cls.help, f"branch {name} has no help"
    for field, _default, desc in cls.options_help():
        assert desc, f"branch {name}: field {field} has no description"


# ------------------------------------------------------------------ metrics


def test_metrics_match_definitions():
    from aligncore.metrics import compute_metrics

    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.7, 0.4, 0.8, 0.9, 0.95]
    verdicts = [s >= 0.5 for s in scores]
    m = compute_metrics(labels, scores, verdicts, ["g1"] * 4 + ["g1", "g1", "g2", "g2"])
    o = m["overall"]
    assert o["real_accuracy"] == 0.75 and o["fake_accuracy"] == 0.75 and o["balanced_accuracy"] == 0.75
    assert o["auc"] == pytest.approx(15 / 16)  # 15 of 16 (fake, real) pairs ordered correctly
    # g2 has fakes only: measured with its fakes against every real (as ablate does), never a null AUC
    g2 = m["per_generator"]["g2"]
    assert (g2["n_real"], g2["n_fake"], g2["auc"], g2["fake_accuracy"]) == (4, 2, 1.0, 1.0)


def test_metrics_one_class_is_null_with_reason():
    from aligncore.metrics import compute_metrics

    m = compute_metrics([1, 1], [0.2, 0.9], [False, True])["overall"]
    assert m["auc"] is None and m["real_accuracy"] is None and m["fake_accuracy"] == 0.5
    assert "only one class" in m["undefined"]["auc"]


def test_public_api_names():
    for name in aligncore.__all__:
        assert getattr(aligncore, name) is not None


def test_every_hook_is_documented_and_used_by_a_builtin():
    """The contract stays honest: each hook spec has a docstring, is named in the README and has an implementation."""
    import inspect
    from pathlib import Path

    from aligncore import hookspecs

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    pm = get_plugin_manager()
    specs = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("register_")]
    assert set(specs) == {"register_branches", "register_supervision_builders", "register_fusions", "register_audits",
                          "register_commands"}
    for name in specs:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert f"`{name}(" in readme, f"{name} is not documented in the README"
        assert getattr(pm.hook, name).get_hookimpls(), f"no built-in plugin implements {name}"
