"""Pixel experts (dinov2, npr, spectrum) and their trainer, on tiny offline configs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from aligncore import create_branch
from aligncore.data.crops import crop, grid_positions, jpeg_roundtrip, pad_to
from aligncore.errors import ModelUnavailableError
from aligncore.train import train_branch
from aligncore.train.pixel_config import PixelTrainConfig
from aligncore.train.pixel_data import load_training_set, split_by_group
from aligncore.train.pixel_trainer import PixelTrainer, read_metrics

from pixel_sets import make_pixel_pair_set, photo_like, reconstruct

TINY_TRAIN = {"epochs": 3, "batch_size": 8, "val_fraction": 0.25, "seed": 3}


@pytest.fixture
def pair_set(tmp_path) -> Path:
    return make_pixel_pair_set(tmp_path / "pairs", n=16)


def _in_memory_scores(branch, ims) -> list[float]:
    """Score with the model a trainer holds (no loading: ``score`` would rebuild it)."""
    import torch

    with torch.inference_mode():
        return [float(x) for x in branch.score_batch(branch.collate([branch.preprocess(im) for im in ims]))]


def _trainer(cls_name: str, train_cfg, **branch_opts):
    from aligncore.registry import get_registry

    cls = get_registry().get("branch", cls_name).cls
    return cls.trainer_class(cls, cls.make_config(branch_opts), train_cfg, progress=False)


def _cli(args):
    from aligncore.cli import build_cli

    res = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


# ---------------------------------------------------------------------- preprocessing never resamples


@pytest.mark.parametrize("name,overrides", [("npr", {"crop_size": 32}), ("dinov2", {"preset": "tiny", "crop_size": 28})])
def test_crop_is_pixel_exact_region_of_source(name, overrides):
    arr = photo_like(np.random.default_rng(1), 90, 117)
    br = create_branch(name, inference_crops=1, **overrides)
    x = br.preprocess(Image.fromarray(arr))  # (1, 3, S, S) uint8
    s = br.config.crop_size
    assert tuple(x.shape) == (1, 3, s, s)
    top, left = grid_positions(90, 117, s, 1, br.config.crop_align)[0]
    assert top % 8 == 0 and left % 8 == 0
    np.testing.assert_array_equal(x[0].permute(1, 2, 0).numpy(), arr[top : top + s, left : left + s])


def test_multicrop_windows_are_source_regions_and_small_images_are_padded():
    arr = photo_like(np.random.default_rng(2), 100, 150)
    br = create_branch("npr", crop_size=32, inference_crops=4)
    x = br.preprocess(Image.fromarray(arr)).permute(0, 2, 3, 1).numpy()
    pos = grid_positions(100, 150, 32, 4, 8)
    assert len(pos) == 4 and len(set(pos)) == 4
    for k, (t, l) in enumerate(pos):
        np.testing.assert_array_equal(x[k], arr[t : t + 32, l : l + 32])
    small = arr[:20, :25]
    out = crop(small, 0, 0, 32, "reflect")
    np.testing.assert_array_equal(out[:20, :25], small)  # the image itself, unscaled
    np.testing.assert_array_equal(out[20, :25], small[18, :25])  # mirrored below
    assert (pad_to(small, 32, "constant")[20:] == 0).all()


# ---------------------------------------------------------------------- data: split and pairs


def test_split_never_cuts_a_pair_and_paired_batches_share_position(pair_set):
    recs = load_training_set(pair_set)
    train, val = split_by_group(recs, 0.25, seed=0)
    assert {r.pair_id for r in train}.isdisjoint({r.pair_id for r in val})
    assert len(val) == 8  # 4 of 16 pairs, both images each
    br = create_branch("npr", preset="tiny")
    trainer = PixelTrainer(type(br), br.config, PixelTrainConfig(batch_size=8), progress=False)
    from aligncore.train.pixel_data import EpochPlan, ImageCache

    plan = EpochPlan(train, 8, seed=0, paired=True)
    slots = plan.batches(0)[0]
    x, y = trainer.make_batch(slots, ImageCache(), 0, 0)
    crops = x.permute(0, 2, 3, 1).numpy()
    for i in range(0, len(slots), 2):
        assert (y[i], y[i + 1]) == (0.0, 1.0)
        # the toy decoder works on aligned 2×2 cells, so the fake crop is exactly the decoded real crop
        np.testing.assert_array_equal(crops[i + 1], reconstruct(crops[i]))


def test_jpeg_augmentation_is_format_aligned(tmp_path):
    # a "pair" of identical images: after augmentation both crops must still be identical
    # (same window, same JPEG quality), and differ from the clean crop (JPEG really applied)
    m = make_pixel_pair_set(tmp_path / "same", n=4, size=(64, 64))
    import csv

    rows = list(csv.DictReader(open(m)))
    for r in rows:
        if r["label"] == "1":
            real = [q for q in rows if q["pair_id"] == r["pair_id"] and q["label"] == "0"][0]
            Image.open(m.parent / real["path"]).save(m.parent / r["path"])
    br = create_branch("npr", preset="tiny")
    trainer = PixelTrainer(type(br), br.config,
                           PixelTrainConfig(batch_size=8, jpeg_aug_prob=1.0, jpeg_quality_min=50, jpeg_quality_max=90),
                           progress=False)
    from aligncore.train.pixel_data import EpochPlan, ImageCache

    plan = EpochPlan(load_training_set(m), 8, seed=0, paired=True)
    x, _ = trainer.make_batch(plan.batches(0)[0], ImageCache(), 0, 0)
    c = x.permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(c[0], c[1])
    clean_cfg = PixelTrainConfig(batch_size=8)
    x0, _ = PixelTrainer(type(br), br.config, clean_cfg, progress=False).make_batch(plan.batches(0)[0], ImageCache(), 0, 0)
    assert not np.array_equal(x0.numpy(), x.numpy())
    assert np.array_equal(jpeg_roundtrip(c[0], 90).shape, c[0].shape)


# ---------------------------------------------------------------------- training


def test_npr_tiny_training_learns_and_checkpoint_round_trip(pair_set, tmp_path):
    trainer = _trainer("npr", PixelTrainConfig(**{**TINY_TRAIN, "epochs": 4, "lr": 3e-3}), preset="tiny", device="cpu")
    res = trainer.train(pair_set, tmp_path / "out")
    ckpt = res.checkpoint
    rows = read_metrics(tmp_path / "out")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) - 0.1
    assert float(rows[-1]["val_auc"]) >= 0.9
    assert (ckpt / "model.safetensors").exists() and ckpt.name == "best"
    # the summary says what happened: every epoch ran, the best one is the first with the highest AUC
    aucs = [float(r["val_auc"]) for r in rows]
    s = res.summary
    assert (s["epochs"], s["stop_reason"], s["steps"]) == (4, "epochs", int(rows[-1]["step"]))
    assert s["best_epoch"] == aucs.index(max(aucs)) and s["val_auc"] == pytest.approx(max(aucs))
    ims = [Image.open(p) for p in sorted((pair_set.parent / "real").glob("*.png"))[:3]]
    ims += [Image.open(p) for p in sorted((pair_set.parent / "recon").glob("*.png"))[:3]]
    # the last weights, as trained (held by the trainer's own branch), vs the same weights reloaded from OUT/last
    trained = _in_memory_scores(trainer.branch, ims)
    reloaded = create_branch("npr", checkpoint=str(tmp_path / "out" / "last"), device="cpu")
    assert (reloaded.config.width, reloaded.config.crop_size) == (8, 32)  # the tiny sizes, read from branch.json
    assert reloaded.score(ims) == pytest.approx(trained, abs=1e-6)
    assert reloaded.weights_digest() and reloaded.fingerprint() != create_branch("npr", preset="tiny").fingerprint()


def test_killed_training_resumes_to_the_same_result(pair_set, tmp_path):
    cfg = {**TINY_TRAIN, "save_every_steps": 2}

    def read_weights(d):
        from safetensors.numpy import load_file

        return load_file(str(d / "last" / "model.safetensors"))

    tiny = {"preset": "tiny", "device": "cpu"}
    train_branch("npr", pair_set, tmp_path / "full", branch_options=tiny, train_options=cfg, progress=False)

    class Killed(Exception):
        pass

    def kill_at_5(step):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train_branch("npr", pair_set, tmp_path / "cut", branch_options=tiny, train_options=cfg, progress=False,
                     on_step=kill_at_5)
    assert len(read_metrics(tmp_path / "cut")) == 1  # epoch 0 finished, killed inside epoch 1
    train_branch("npr", pair_set, tmp_path / "cut", branch_options=tiny, train_options=cfg, progress=False)
    full, cut = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    drop = ("elapsed_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in cut] == \
        [{k: v for k, v in r.items() if k not in drop} for r in full]
    a, b = read_weights(tmp_path / "full"), read_weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_dinov2_tiny_lora_adapter_round_trip(pair_set, tmp_path):
    untrained = create_branch("dinov2", preset="tiny", device="cpu")
    ims = [Image.open(p) for p in sorted((pair_set.parent / "recon").glob("*.png"))[:4]]
    base_scores = untrained.score(ims)
    trainer = _trainer("dinov2", type(untrained).train_config_class(epochs=1, batch_size=8, val_fraction=0.25, lr=5e-2),
                       preset="tiny", device="cpu")
    trainer.train(pair_set, tmp_path / "d")
    last = tmp_path / "d" / "last"
    assert {"adapter_model.safetensors", "adapter_config.json", "head.safetensors", "branch.json"} <= {p.name for p in last.iterdir()}
    from safetensors.numpy import load_file

    adapter = load_file(str(last / "adapter_model.safetensors"))
    assert any("lora_B" in k and np.abs(v).max() > 0 for k, v in adapter.items())  # LoRA actually moved
    assert all("lora_" in k for k in adapter)  # the adapter holds no backbone weights
    trained = _in_memory_scores(trainer.branch, ims)
    re = create_branch("dinov2", checkpoint=str(last), device="cpu")
    assert re.config.preset == "tiny"
    assert re.score(ims) == pytest.approx(trained, abs=1e-6)
    assert trained != pytest.approx(base_scores, abs=1e-6)
    assert re.weights_digest() and re.fingerprint() != untrained.fingerprint()


def test_dinov2_full_size_on_meta_device():
    import torch

    br = create_branch("dinov2")
    assert br.config.model == "vit_large_patch14_dinov2.lvd142m" and br.config.crop_size == 336
    with torch.device("meta"):
        br.build_model(pretrained=False)
    m = br.model
    assert tuple(m.backbone.pos_embed.shape) == (1, 1 + (336 // 14) ** 2, 1024)
    assert len(m.backbone.blocks) == 24
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    # LoRA r=8 on qkv (1024→3072) and proj (1024→1024) in 24 blocks, + the 1024→1 head
    assert trainable == 24 * (8 * (1024 + 3072) + 8 * (1024 + 1024)) + 1024 + 1
    assert 300e6 < sum(p.numel() for p in m.parameters()) < 310e6
    assert not any(p.requires_grad for n, p in m.named_parameters() if "patch_embed" in n)


def test_dinov2_missing_weights_fail_fast_naming_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf" / "hub"))
    t = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        create_branch("dinov2", device="cpu").build_model()  # what training and a checkpoint's scoring load first
    assert time.monotonic() - t < 20
    msg = str(err.value)
    assert "vit_large_patch14_dinov2.lvd142m" in msg and "weights=" in msg and "from_scratch" in msg


# ---------------------------------------------------------------------- spectrum


def test_spectrum_fits_and_round_trips_without_pickle(pair_set, tmp_path):
    from aligncore.train.linear_config import LinearTrainConfig

    trainer = _trainer("spectrum", LinearTrainConfig(val_fraction=0.25), tile=32, max_tiles=4)
    res = trainer.train(pair_set, tmp_path / "s")
    ckpt = res.checkpoint
    row = read_metrics(tmp_path / "s")[0]
    assert float(row["val_auc"]) >= 0.99 and res.summary["val_auc"] == pytest.approx(float(row["val_auc"]))
    assert res.summary["stop_reason"] == "converged" and res.summary["solver_iterations"] >= 1
    assert {p.name for p in ckpt.iterdir()} == {"spectrum.safetensors", "branch.json", "training.json"}
    ims = [Image.open(p) for p in sorted(pair_set.parent.rglob("p00*.png"))]
    re = create_branch("spectrum", checkpoint=str(tmp_path / "s"))
    assert re.config.tile == 32 and re.config.max_tiles == 4
    assert re.score(ims) == pytest.approx(_in_memory_scores(trainer.branch, ims), abs=1e-9)


# ---------------------------------------------------------------------- the CLI on a 0_real/1_fake folder


def test_cli_run_dinov2_tiny_and_npr_checkpoint(image_folder, tmp_path):
    out = _cli(["run", "--branches", "dinov2", "--preset", "tiny", "--data", str(image_folder),
                "--device", "cpu", "--out", str(tmp_path / "r1"), "-q"])
    assert "branch dinov2: scored 12" in out
    out = _cli(["train", "npr", "--set", str(image_folder), "--out", str(tmp_path / "npr"), "--device", "cpu",
                "-b", "width=8", "-b", "crop_size=32", "-o", "epochs=2", "-o", "batch_size=4", "-o", "val_fraction=0.34"])
    assert "checkpoint written to" in out
    out = _cli(["run", "--branches", "npr", "--checkpoint", str(tmp_path / "npr"), "--data", str(image_folder),
                "--device", "cpu", "--out", str(tmp_path / "r2"), "-q"])
    assert "branch npr: scored 12" in out
    import csv

    preds = list(csv.DictReader(open(tmp_path / "r2" / "predictions.csv")))
    assert len(preds) == 12 and all(0.0 <= float(p["score_npr"]) <= 1.0 for p in preds)


def test_plugins_listed_and_import_light():
    import subprocess
    import sys

    code = ("import sys; from aligncore.registry import get_registry; names = get_registry().names('branch'); "
            "assert {'dinov2', 'npr', 'spectrum'} <= set(names), names; "
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False"
    out = _cli(["branches"])
    for name in ("dinov2", "npr", "spectrum"):
        assert name in out


def test_npr_gradient_checkpointing_gives_the_same_gradients():
    import torch

    br = create_branch("npr", preset="tiny")
    torch.manual_seed(0)
    br.build_model(for_training=True)
    plain = br.model
    torch.manual_seed(0)
    br.build_model(for_training=True, gradient_checkpointing=True)
    ckpt = br.model
    assert ckpt.gradient_checkpointing and not plain.gradient_checkpointing
    x = torch.rand(4, 3, 32, 32)
    grads = []
    for m in (plain, ckpt):
        m.train()
        m(x).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
