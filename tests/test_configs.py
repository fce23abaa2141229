"""Config files: the shipped configs/*.yaml load and validate; a run's own RUN/config.yaml repeats the run;
unknown keys get "did you mean"."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from aligncore.cli import build_cli
from aligncore.config import make_run_config, read_config_file
from aligncore.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def test_the_shipped_configs_load_and_validate():
    from aligncore.registry import get_registry
    from aligncore.train import train_config_for, trainable_branch

    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["run.yaml", "train-dinov2.yaml", "train-npr.yaml",
                                                              "train-qwen.yaml"]
    reg = get_registry()
    cfg = make_run_config(CONFIGS / "run.yaml")
    reg.get("fusion", cfg.fusion)
    for name in cfg.branches:
        cls = reg.get("branch", name).cls
        opts = {k: v for k, v in cfg.branch_options.get(name, {}).items() if k != "checkpoint"}  # paths to make later
        cls.validate_config(opts)
    assert set(cfg.branch_options) <= set(cfg.branches)
    for branch in ("npr", "dinov2", "qwen"):
        data = read_config_file(CONFIGS / f"train-{branch}.yaml")
        cls = trainable_branch(branch)
        cls.validate_config(data.pop("branch", {}))
        tcfg = train_config_for(cls, data)
        assert tcfg.model_fields_set, branch


def test_unknown_keys_get_did_you_mean(tmp_path, image_folder):
    bad = tmp_path / "run.yaml"
    bad.write_text(f"branchs: [fake]\ndata: {image_folder}\nfusoin: or\n")
    with pytest.raises(ConfigError) as err:
        make_run_config(bad)
    assert "branchs: Extra inputs are not permitted (did you mean 'branches'" in str(err.value)
    assert "fusoin: Extra inputs are not permitted (did you mean 'fusion'" in str(err.value)
    train = tmp_path / "train.yaml"
    train.write_text("epochs: 1\nbranch:\n  widht: 8\n")
    r = CliRunner().invoke(build_cli(), ["train", "npr", "--set", str(image_folder), "--out", str(tmp_path / "ck"),
                                         "--config", str(train)])
    assert r.exit_code != 0 and "widht" in r.output and "did you mean 'width'" in r.output, r.output
    assert not (tmp_path / "ck").exists()  # checked before any work
    train.write_text("epochs: 1\nepochz: 2\n")
    r = CliRunner().invoke(build_cli(), ["train", "npr", "--set", str(image_folder), "--out", str(tmp_path / "ck"),
                                         "--config", str(train), "--preset", "tiny"])
    assert r.exit_code != 0 and "epochz" in r.output and "did you mean 'epochs'" in r.output, r.output


def _predictions(run_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "predictions.csv")))


def test_a_runs_own_config_yaml_repeats_the_run(tmp_path, image_folder, monkeypatch):
    first = CliRunner().invoke(build_cli(), [
        "run", "--branches", "fake,npr", "--preset", "tiny", "--data", str(image_folder), "--fusion", "weighted",
        "--fusion-option", "weights={fake: 2, npr: 1}", "-o", "npr.inference_crops=4", "--perturb", "jpeg:90",
        "--device", "cpu", "--out", str(tmp_path / "first"), "--store", str(tmp_path / "a.sqlite"), "-q"])
    assert first.exit_code == 0, first.output
    recorded = yaml.safe_load((tmp_path / "first" / "config.yaml").read_text())
    assert recorded["run_id"] and recorded["fingerprints"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the repeat does not depend on the working folder
    again = CliRunner().invoke(build_cli(), ["run", "--config", str(tmp_path / "first" / "config.yaml"),
                                             "--store", str(tmp_path / "fresh.sqlite"), "-q"])
    assert again.exit_code == 0, again.output
    assert "reused from store 0" in again.output and "warning" not in again.output  # really scored again
    out_dir = Path(again.output.split("written to ")[-1].strip())
    assert out_dir.parent == Path("runs") and (elsewhere / out_dir / "predictions.csv").is_file()
    a, b = _predictions(tmp_path / "first"), _predictions(elsewhere / out_dir)
    assert len(a) == 12 and a == b  # same images, labels, per-branch scores, fused scores and verdicts
    # a changed branch since: the repeat says so
    recorded["fingerprints"]["npr"] = "npr-0000000000000000"
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(recorded))
    edited = CliRunner().invoke(build_cli(), ["run", "--config", str(tmp_path / "edited.yaml"),
                                              "--store", str(tmp_path / "fresh.sqlite"), "-q"])
    assert edited.exit_code == 0 and "warning: branch npr's fingerprint" in edited.output, edited.output


def test_train_config_files_carry_branch_options(tmp_path, image_folder):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("epochs: 1\nbatch_size: 4\ncrop_size: 32\nval_fraction: 0.25\nbranch:\n  preset: tiny\n  width: 4\n")
    r = CliRunner().invoke(build_cli(), ["train", "npr", "--set", str(image_folder), "--out", str(tmp_path / "ck"),
                                         "--config", str(cfg), "-b", "width=6", "-q"])
    assert r.exit_code == 0, r.output
    import json

    info = json.loads((tmp_path / "ck" / "best" / "branch.json").read_text())
    assert info["architecture"]["width"] == 6 and info["architecture"]["crop_size"] == 32  # -b wins over the file
    assert "epoch 1/1" in r.output  # one line per epoch


def test_no_message_or_doc_names_the_old_hub_cli():
    hits = [p for folder in ("aligncore", "plugins", "docs", "configs") for p in (REPO / folder).rglob("*")
            if p.is_file() and p.suffix in (".py", ".md", ".yaml") and "huggingface-cli" in p.read_text(encoding="utf-8")]
    hits += [REPO / "README.md"] if "huggingface-cli" in (REPO / "README.md").read_text(encoding="utf-8") else []
    assert not hits, hits
