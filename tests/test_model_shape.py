"""The model side's one shape: presets as data, one checkpoint-adoption rule, one Hub resolver,
weights loaded only through safeio, one trainer per method chosen by the branch, and `alignctl train`."""

from __future__ import annotations

import ast
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from aligncore import create_branch
from aligncore.errors import AlignCoreError, ConfigError, ModelUnavailableError

from pixel_sets import make_pixel_pair_set

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cli(*args):
    from aligncore.cli import build_cli

    return CliRunner().invoke(build_cli(), list(args))


def _registered(kind: str):
    from aligncore.registry import get_registry

    reg = get_registry()
    return [reg.get(kind, n).cls for n in reg.names(kind)]


# ---------------------------------------------------------------------- presets are data


def test_unknown_preset_names_the_known_ones_and_a_close_match():
    with pytest.raises(ConfigError) as err:
        create_branch("npr", preset="tinny")
    msg = str(err.value)
    assert "unknown preset 'tinny' (known: random, tiny)" in msg and "Did you mean 'tiny'?" in msg


def test_preset_fills_only_the_fields_left_unset():
    tiny = create_branch("npr", preset="tiny")
    assert (tiny.config.width, tiny.config.crop_size) == (8, 32)
    assert tiny.config.model_fields_set == {"preset"}  # preset values are not the caller's
    mine = create_branch("npr", preset="tiny", width=12)
    assert (mine.config.width, mine.config.crop_size) == (12, 32)
    # rebuilding from the config object gives the same config (the preset is applied again, not frozen in)
    again = type(mine)(mine.config)
    assert again.config == mine.config and again.config.model_fields_set == {"preset", "width"}
    assert create_branch("qwen", preset="tiny").config.max_pixels == 112 * 112
    assert create_branch("dinov2", preset="tiny").config.crop_size == 28


def test_every_registered_preset_names_real_fields():
    for kind in ("branch", "builder"):
        for cls in _registered(kind):
            for preset in cls.presets:
                cls.preset_values(preset)  # raises on a field the config does not have
    # the reserved "weights" key marks random weights
    assert create_branch("npr", preset="tiny").weights_provenance() == "random"
    assert create_branch("spectrum", preset="tiny").random_weights


def test_weights_provenance_kinds(tmp_path):
    assert create_branch("fake").weights_provenance().startswith("builtin@")
    assert create_branch("dinov2", preset="tiny").weights_provenance() == "random"
    assert create_branch("dinov2", from_scratch=True).weights_provenance() == "random"
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not read, only hashed")
    from aligncore.hashing import sha256_file

    got = create_branch("dinov2", weights=str(weights)).weights_provenance()
    assert got == f"pretrained:timm/vit_large_patch14_dinov2.lvd142m@{sha256_file(weights)[:16]}"
    ck = _spectrum_checkpoint(tmp_path / "ck", tile=32)
    br = create_branch("spectrum", checkpoint=str(ck))
    assert br.weights_provenance() == f"checkpoint:{br.weights_digest()[:16]}"


# ---------------------------------------------------------------------- one checkpoint-adoption rule


def _spectrum_checkpoint(out: Path, **opts) -> Path:
    br = create_branch("spectrum", preset="tiny", **opts).ensure_loaded()
    return br.save(out)


def _qwen_checkpoint(out: Path, **meta) -> Path:
    out.mkdir(parents=True)
    (out / "aligncore_qwen.json").write_text(json.dumps({"branch": "qwen", "model": None, "preset": "tiny", **meta}))
    return out


def test_unset_fields_adopt_the_checkpoint_and_set_ones_must_agree(tmp_path):
    ck = _spectrum_checkpoint(tmp_path / "s", tile=32, max_tiles=4)
    br = create_branch("spectrum", checkpoint=str(ck))
    assert (br.config.tile, br.config.max_tiles) == (32, 4)
    assert create_branch("spectrum", checkpoint=str(ck), tile=32).config.tile == 32  # agreeing is fine
    with pytest.raises(ConfigError) as err:
        create_branch("spectrum", checkpoint=str(ck), tile=16)
    assert "tile=16" in str(err.value) and "tile=32" in str(err.value)
    # the same rule for the VLM branch (its checkpoint records prompt, pixel bounds and preset)
    q = _qwen_checkpoint(tmp_path / "q", prompt="Real or fake?", min_pixels=3136, max_pixels=6272)
    qb = create_branch("qwen", checkpoint=str(q))
    assert (qb.config.prompt, qb.config.max_pixels, qb.config.preset) == ("Real or fake?", 6272, "tiny")
    with pytest.raises(ConfigError, match="prompt='Other.'.*prompt='Real or fake\\?'"):
        create_branch("qwen", checkpoint=str(q), prompt="Other.")
    with pytest.raises(ConfigError, match="written by branch 'spectrum', not 'npr'"):
        create_branch("npr", checkpoint=str(ck))


# ---------------------------------------------------------------------- one Hub resolver


def _fake_cache(root: Path, repo: str, files: dict[str, str], ref: str = "main") -> Path:
    storage = root / ("models--" + repo.replace("/", "--"))
    snap = storage / "snapshots" / COMMIT
    for name, text in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_text(text)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(COMMIT)
    return snap


def test_resolve_weights_local_cache_and_a_clear_refusal(tmp_path, monkeypatch):
    from aligncore.hub import resolve_weights, snapshot_revision

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x")
    assert resolve_weights(str(f)) == f
    with pytest.raises(ModelUnavailableError, match="has no config.json"):
        resolve_weights(str(tmp_path), files=["config.json"])
    with pytest.raises(ModelUnavailableError, match="No such file or folder"):
        resolve_weights(str(tmp_path / "missing"))
    snap = _fake_cache(tmp_path / "hub", "org/model", {"config.json": "{}", "vae/config.json": "{}"})
    assert resolve_weights("org/model") == snap
    assert resolve_weights("org/model", files=["vae/config.json"]) == snap
    assert resolve_weights("org/model", revision=COMMIT) == snap
    assert snapshot_revision(snap / "config.json") == COMMIT
    # not cached: no network unless allowed, and the message says how to provide the model
    t = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        resolve_weights("org/model", files=["model.safetensors"])
    msg = str(err.value)
    assert "'org/model'" in msg and "hf download org/model --local-dir DIR" in msg and "huggingface-cli" not in msg
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE"):
        resolve_weights("org/other", allow_download=True)
    assert time.monotonic() - t < 5


def test_qwen_base_model_found_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_cache(tmp_path / "hub", "org/vlm", {"config.json": "{}"})
    assert create_branch("qwen", model="org/vlm").weights_provenance() == f"pretrained:org/vlm@{COMMIT}"


def test_dinov2_pretrained_weights_load_through_safeio(tmp_path, monkeypatch):
    """A local pretrained file is read by safeio and handed to timm, which adapts the position embedding."""
    import timm
    import torch

    import aligncore.safeio as safeio

    name = "vit_small_patch14_dinov2.lvd142m"
    with torch.device("meta"):
        meta_sd = timm.create_model(name, pretrained=False, num_classes=0, img_size=56).state_dict()
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=gen) for k, v in meta_sd.items()}
    safeio.save_state_dict(sd, tmp_path / "model.safetensors")
    import aligncore_plugins.dinov2_model as dm

    reads = []
    monkeypatch.setattr(dm, "load_state_dict", lambda path: reads.append(path) or safeio.load_state_dict(path))
    br = create_branch("dinov2", model=name, weights=str(tmp_path), crop_size=28, device="cpu")
    br.build_model()  # the trainer's way in: scoring refuses a dinov2 without a checkpoint (its head is untrained)
    assert reads == [tmp_path / "model.safetensors"]
    bb = br.model.backbone
    assert torch.equal(bb.blocks[0].attn.qkv.base_layer.weight, sd["blocks.0.attn.qkv.weight"])
    assert tuple(bb.pos_embed.shape) == (1, 1 + 2 * 2, 384)  # 4x4 patches resampled to 2x2


# ---------------------------------------------------------------------- every weight load goes through safeio

LOADERS = {("torch", "load"), ("pickle", "load"), ("pickle", "loads"), ("safetensors", "safe_open"),
           ("safetensors.torch", "load_file"), ("safetensors.torch", "load"), ("safetensors.numpy", "load_file"),
           ("safetensors.numpy", "load")}


def weight_loads(source: str) -> list[str]:
    """``torch.load``, pickle and safetensors-loading uses in Python source (imports and attribute calls)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in ("pickle", "dill", "cloudpickle"):
                found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names if (node.module, a.name) in LOADERS]
        elif isinstance(node, ast.Attribute):
            parts, cur = [node.attr], node.value
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name):
                dotted = ".".join([cur.id, *reversed(parts)])
                mod, _, attr = dotted.rpartition(".")
                if (mod, attr) in LOADERS:
                    found.append(dotted)
    return found


def test_weights_are_loaded_only_in_safeio():
    assert weight_loads((REPO / "aligncore" / "safeio.py").read_text()), "the detector must see safeio's own loads"
    bad = []
    for folder in ("aligncore", "plugins", "benchmarks"):
        for p in sorted((REPO / folder).rglob("*.py")):
            if p.relative_to(REPO).as_posix() != "aligncore/safeio.py":
                bad += [f"{p.relative_to(REPO)}: {hit}" for hit in weight_loads(p.read_text(encoding="utf-8"))]
    assert not bad, "load weights through aligncore.safeio:\n" + "\n".join(bad)


# ---------------------------------------------------------------------- one trainer per method, chosen by the branch


def test_trainable_branches_name_a_method_whose_options_all_have_help():
    from aligncore.train import Trainer, TrainConfig

    trainable = {cls.name: cls for cls in _registered("branch") if cls.trainer_class is not None}
    assert {"npr", "dinov2", "spectrum", "qwen"} <= set(trainable)
    assert create_branch("fake").trainer_class is None
    for cls in trainable.values():
        assert issubclass(cls.trainer_class, Trainer) and issubclass(cls.train_config_class, cls.trainer_class.config_class)
        assert issubclass(cls.train_config_class, TrainConfig)
        for field, _default, help_text in cls.train_config_class.options_help():
            assert help_text, f"{cls.name}: training option {field} has no help"


def test_train_branch_leaves_callers_alone_and_the_old_method_warns(tmp_path):
    from aligncore.train import train_branch

    pairs = make_pixel_pair_set(tmp_path / "pairs", n=8)
    res = train_branch("spectrum", pairs, tmp_path / "a", branch_options={"tile": 16, "max_tiles": 2},
                       train_options={"val_fraction": 0.25}, progress=False)
    assert res.checkpoint == tmp_path / "a" / "best" and set(res.summary) >= {"steps", "epochs", "stop_reason",
                                                                            "best_epoch", "val_auc"}
    held = create_branch("spectrum", tile=16, max_tiles=2)
    before = held.config.model_dump()
    with pytest.warns(DeprecationWarning, match="train_branch"):
        ckpt = held.train(pairs, tmp_path / "b", {"val_fraction": 0.25})
    assert ckpt == tmp_path / "b" / "best" and held.params is None and held.config.model_dump() == before
    with pytest.raises(AlignCoreError, match="cannot be trained"):
        train_branch("fake", pairs, tmp_path / "c")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new entry point itself never warns
        train_branch("spectrum", pairs, tmp_path / "d", branch_options={"tile": 16, "max_tiles": 2},
                     train_options={"val_fraction": 0.25}, progress=False)
    a = create_branch("spectrum", checkpoint=str(tmp_path / "a"))
    d = create_branch("spectrum", checkpoint=str(tmp_path / "d"))
    assert a.weights_digest() == d.weights_digest()  # a deterministic fit


# ---------------------------------------------------------------------- alignctl train


@pytest.mark.parametrize("branch,expected", [("npr", "epochs = None  Passes over the training pairs (or balanced images). Unset: 3"), ("spectrum", "C = 0.1"), ("qwen", "beta = 0.05"),
                                             ("dinov2", "from_scratch = False")])
def test_train_options_lists_the_trainers_options(branch, expected):
    r = _cli("train", branch, "--options")
    assert r.exit_code == 0, r.output
    assert "Training options of" in r.output and expected in r.output and "Branch options of" in r.output


def test_train_rejects_unknown_options_before_any_work(tmp_path):
    out = tmp_path / "out"
    r = _cli("train", "npr", "--set", str(tmp_path / "no-such-set"), "--out", str(out), "-o", "no_such_key=1",
             "-o", "lrr=0.1")
    assert r.exit_code != 0 and "no_such_key" in r.output and "did you mean 'lr'" in r.output
    assert not out.exists()
    r = _cli("train", "npr", "--set", str(tmp_path), "--out", str(out), "-b", "widht=8")
    assert r.exit_code != 0 and "did you mean 'width'" in r.output and not out.exists()
    r = _cli("train", "npr", "--set", str(tmp_path), "--out", str(out), "--preset", "tinny")
    assert r.exit_code != 0 and "unknown preset 'tinny'" in r.output and not out.exists()
    r = _cli("train", "npr")
    assert r.exit_code != 0 and "--set and --out are required" in r.output
    r = _cli("train", "fake", "--options")
    assert r.exit_code != 0 and "cannot be trained" in r.output and "npr" in r.output


def test_from_scratch_is_an_ordinary_training_option(tmp_path):
    pairs = make_pixel_pair_set(tmp_path / "pairs", n=8, size=(56, 56))
    r = _cli("train", "dinov2", "--preset", "tiny", "--device", "cpu", "--set", str(pairs), "--out", str(tmp_path / "o"),
             "-o", "from_scratch=true", "-o", "max_steps=1", "-o", "epochs=1", "-o", "batch_size=4", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "best" / "branch.json").read_text())["architecture"]["from_scratch"] is True
    assert create_branch("dinov2", checkpoint=str(tmp_path / "o")).config.from_scratch
    assert "--from-scratch" not in _cli("train", "--help").output
    image = Image.open(next((pairs.parent / "real").glob("*.png")))
    assert np.isfinite(create_branch("dinov2", checkpoint=str(tmp_path / "o"), device="cpu").score([image])[0])
