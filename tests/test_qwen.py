"""The qwen branch: tiny offline model, one-pass verdict scoring, DPO training, reload, fast failure, 7B shapes."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aligncore import create_branch, create_builder, load_dataset, load_image
from aligncore.errors import ModelUnavailableError

SHORT_PROMPT = "Is this image real or fake? Answer real or fake."
FAST_TRAIN = {"learning_rate": 1e-2, "per_device_train_batch_size": 4, "logging_steps": 4, "lora_dropout": 0.0}


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model is far too small to gain from threads; on a shared 2-core machine, two threads
    waiting on each other made a forward pass 10-40x slower (measured: 8 ms vs 200-400 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    # different sizes → different numbers of image tokens → real left padding in a batch
    return [Image.fromarray(rng.integers(0, 255, (40 + 24 * (i % 4), 56 + 16 * (i % 3), 3), dtype=np.uint8))
            for i in range(n)]


def _gap(branch, records) -> float:
    """Mean P(fake | fake) - mean P(fake | real) on ``records``."""
    s = np.array(branch.score([load_image(r.path) for r in records]))
    y = np.array([r.label for r in records])
    return float(s[y == 1].mean() - s[y == 0].mean())


def test_tiny_tokenizer_processor_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from aligncore_plugins import qwen_model as qm

    proc = qm.build_tiny_processor(56 * 56, 112 * 112)
    tok = proc.tokenizer
    real, fake = qm.verdict_token_ids(tok)
    assert len(tok.encode("real", add_special_tokens=False)) == 1 and len(tok.encode("fake", add_special_tokens=False)) == 1
    assert not set(real) & set(fake)
    for special in qm.SPECIAL_TOKENS:
        assert len(tok.encode(special, add_special_tokens=False)) == 1, special
    proc.save_pretrained(tmp_path / "p")
    again = qm.load_processor(str(tmp_path / "p"), 56 * 56, 112 * 112)
    assert qm.prompt_text(again, "Real or fake?") == qm.prompt_text(proc, "Real or fake?")
    assert again.tokenizer.encode("<|im_start|>assistant\nfake") == tok.encode("<|im_start|>assistant\nfake")
    model = qm.build_tiny_model(tok)
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 400_000
    model.save_pretrained(tmp_path / "m")
    loaded = qm.load_pretrained_model(str(tmp_path / "m"), model.dtype, "sdpa")
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), n


def test_batched_scoring_equals_one_by_one():
    images = _images(6)
    batched = create_branch("qwen", preset="tiny", device="cpu", batch_size=6)
    single = create_branch("qwen", preset="tiny", device="cpu", batch_size=1)
    enc = [batched.preprocess(im) for im in images]
    lengths = {int(e["input_ids"].shape[1]) for e in enc}
    assert len(lengths) > 1, "the test images must need padding"
    batch = batched.collate(enc)
    assert (batch["attention_mask"][:, 0] == 0).any() and (batch["attention_mask"][:, -1] == 1).all(), "left padding"
    a, b = batched.score(images), single.score(images)
    assert np.allclose(a, b, atol=1e-6, rtol=0), (a, b)
    assert all(0.0 < s < 1.0 for s in a)


def test_explain_generates_a_rationale_per_image():
    br = create_branch("qwen", preset="tiny", device="cpu", explain_max_new_tokens=6)
    br.ensure_loaded()
    texts = br.explain_batch(br.collate([br.preprocess(im) for im in _images(2)]))
    assert isinstance(texts, list) and len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert type(br).supports_explain


def test_fingerprint_covers_prompt_pixels_and_adapter(tmp_path):
    base = create_branch("qwen", preset="tiny", device="cpu")
    fp = base.fingerprint()
    assert create_branch("qwen", preset="tiny", device="cpu", batch_size=3).fingerprint() == fp
    assert create_branch("qwen", preset="tiny", device="cpu", prompt="Real or fake?").fingerprint() != fp
    assert create_branch("qwen", preset="tiny", device="cpu", max_pixels=200 * 200).fingerprint() != fp
    assert create_branch("qwen", device="cpu", model="/some/other/model").fingerprint() != \
        create_branch("qwen", device="cpu").fingerprint()


def test_full_size_default_without_weights_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    br = create_branch("qwen", device="cpu")
    t = time.monotonic()
    with pytest.raises(ModelUnavailableError) as err:
        br.ensure_loaded()
    assert time.monotonic() - t < 5
    msg = str(err.value)
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in msg and "qwen.model=DIR" in msg and "--preset tiny" in msg
    with pytest.raises(ModelUnavailableError, match="no config.json"):
        create_branch("qwen", device="cpu", model=str(tmp_path)).ensure_loaded()


def test_7b_config_on_meta_device_shapes_and_lora_count():
    from peft import LoraConfig, get_peft_model

    from aligncore_plugins import qwen_model as qm

    model = qm.build_meta_model()
    qm.freeze_vision_tower(model)
    sd = {n: p for n, p in model.named_parameters()}
    assert sd["model.language_model.layers.0.self_attn.q_proj.weight"].shape == (3584, 3584)
    assert sd["model.language_model.layers.0.self_attn.k_proj.weight"].shape == (512, 3584)
    assert sd["model.language_model.layers.27.mlp.down_proj.weight"].shape == (3584, 18944)
    assert sd["lm_head.weight"].shape == (152064, 3584)
    assert sd["model.visual.merger.mlp.2.weight"].shape == (3584, 5120)
    assert sum(1 for n in sd if n.endswith("attn.qkv.weight")) == 32
    total = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=qm.lora_target_regex()))
    trainable = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable), "vision tower stays frozen"
    # r * (in + out) per projection, 28 layers: attention q/k/v/o + MLP gate/up/down
    h, kv, ff = 3584, 512, 18944
    expected = 28 * 16 * ((h + h) + (h + kv) * 2 + (h + h) + (h + ff) * 3)
    assert sum(trainable.values()) == expected == 40_370_176
    attn_only = 28 * 16 * ((h + h) * 2 + (h + kv) * 2)
    print(f"\nQwen2.5-VL-7B: {total:,} parameters; LoRA r=16 trainable: {expected:,} "
          f"(q/k/v/o only: {attn_only:,})")


def _train(supervision, out, prompt: str | None = None, log=None, **extra):
    from aligncore.train import train_branch

    bopts = {"preset": "tiny", "device": "cpu", **({"prompt": prompt} if prompt else {})}
    return train_branch("qwen", str(supervision), out, branch_options=bopts, train_options={**FAST_TRAIN, **extra},
                        progress=False, log=log)


def _score_with(branch, model, images) -> list[float]:
    """Score as ``branch.score`` does, with a model held in memory (e.g. the one a trainer just trained)."""
    import torch

    from aligncore_plugins.qwen_model import to_device, verdict_probabilities, verdict_token_ids

    real, fake = verdict_token_ids(branch.processor().tokenizer)
    model = model.to("cpu").eval()
    out: list[float] = []
    bs = branch.config.batch_size
    with torch.inference_mode():
        for i in range(0, len(images), bs):
            batch = branch.collate([branch.preprocess(im) for im in images[i : i + bs]])
            out += verdict_probabilities(model, to_device(batch, "cpu", branch.dtype), real, fake)
    return out


def test_dpo_on_synthetic_set_moves_scores_resumes_and_reloads(tmp_path):
    from click.testing import CliRunner

    from aligncore.cli import build_cli
    from aligncore.testing import make_image_folder
    from aligncore.train.dpo_config import DPOTrainConfig
    from aligncore.train.dpo_trainer import DPOTrainer
    from aligncore_plugins.qwen import QwenBranch

    src = make_image_folder(tmp_path / "src", n_real=6, n_fake=6, size=(64, 64), seed=2)
    manifest = create_builder("semantic-set", size=64).build([src], tmp_path / "set", progress=False)
    records = load_dataset(manifest).records
    untrained = create_branch("qwen", preset="tiny", device="cpu")
    before = _gap(untrained, records)

    out = tmp_path / "ckpt"
    lines: list[str] = []
    first = _train(manifest, out, max_steps=8, save_steps=4, log=lines.append)
    assert first.checkpoint == out and first.summary["steps"] == 8 and first.summary["stop_reason"] == "max_steps"
    # one readable line per logging step (FAST_TRAIN logs every 4), then the summary; no raw metric dicts
    assert [ln.split("  ")[0] for ln in lines[:-1]] == ["step 4/8", "step 8/8"], lines
    assert all("loss " in ln and "rewards/accuracies " in ln and "{" not in ln for ln in lines[:-1])
    assert lines[-1].startswith("done: 8 steps in ") and "mean loss" in lines[-1]
    assert json.loads((out / "aligncore_qwen.json").read_text())["global_step"] == 8
    # same --out: resumes from step 8 (the trainer object is kept to compare its in-memory model below)
    trainer = DPOTrainer(QwenBranch, QwenBranch.make_config({"preset": "tiny", "device": "cpu"}),
                         DPOTrainConfig(**FAST_TRAIN, max_steps=20, save_steps=4), progress=False)
    res = trainer.train(str(manifest), out)
    assert res.summary["resumed_from"] == "checkpoint-8" and res.summary["steps"] == 20
    meta = json.loads((out / "aligncore_qwen.json").read_text())
    assert meta["resumed_from"] == "checkpoint-8" and meta["global_step"] == 20
    assert meta["train_config"]["beta"] == 0.05 and meta["train_config"]["lora_r"] == 16

    # a fresh branch from the checkpoint reproduces the trained model's scores exactly
    reloaded = create_branch("qwen", checkpoint=str(out), device="cpu")
    assert reloaded.config.preset == "tiny" and reloaded.config.max_pixels == untrained.config.max_pixels
    images = [load_image(r.path) for r in records]
    in_memory = _score_with(trainer.branch, trainer.model, images)
    assert reloaded.score(images) == in_memory
    after = _gap(reloaded, records)
    assert after - before > 0.05, f"DPO must move P(fake) apart: gap {before:.4f} -> {after:.4f}"
    assert reloaded.weights_provenance().startswith("checkpoint:") and reloaded.fingerprint() != untrained.fingerprint()

    # ... and so does `alignctl run --branches qwen --checkpoint DIR`
    res = CliRunner().invoke(build_cli(), ["run", "--branches", "qwen", "--checkpoint", str(out), "--data", str(manifest),
                                           "--device", "cpu", "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "run" / "predictions.csv", newline="") as f:
        preds = {Path(r["path"]).resolve(): float(r["score_qwen"]) for r in csv.DictReader(f)}
    for r, s in zip(records, in_memory):
        assert abs(preds[Path(r.path).resolve()] - s) <= 5e-7


def test_dpo_on_semantic_set_from_shared_data(shared_data, tmp_path):
    manifest = create_builder("semantic-set", size=112, per_class=6).build(
        [shared_data / "MANIFEST.csv"], tmp_path / "set", progress=False)
    records = load_dataset(manifest).records
    before = _gap(create_branch("qwen", preset="tiny", device="cpu", prompt=SHORT_PROMPT), records)
    ckpt = _train(manifest, tmp_path / "ckpt", prompt=SHORT_PROMPT, max_steps=30, save_steps=1000).checkpoint
    trained = create_branch("qwen", checkpoint=str(ckpt), device="cpu")
    assert trained.config.prompt == SHORT_PROMPT  # recorded in the checkpoint, adopted on reload
    after = _gap(trained, records)
    print(f"\nshared-data semantic set, {len(records)} images: gap {before:.4f} -> {after:.4f}")
    assert after - before > 0.05, f"DPO must move P(fake) apart: gap {before:.4f} -> {after:.4f}"


def test_size_bucketing_in_runs_changes_order_not_scores(tmp_path):
    """The runner batches like-sized images for the VLM; every image keeps the score it gets alone."""
    import csv

    from aligncore.config import make_run_config
    from aligncore.data.loader import size_bucket
    from aligncore.runner import run

    for i, im in enumerate(_images(8, seed=3)):
        d = tmp_path / "ds" / ("0_real" if i % 2 == 0 else "1_fake")
        d.mkdir(parents=True, exist_ok=True)
        im.save(d / f"{i}.png")
    paths = sorted(str(p) for p in (tmp_path / "ds").rglob("*.png"))
    assert type(create_branch("qwen", preset="tiny")).bucket_by_size
    assert sorted(paths, key=size_bucket) != paths  # the bucketed order differs from the listing order
    res = run(make_run_config(branches="qwen", preset="tiny", device="cpu", batch_size=3, data=str(tmp_path / "ds"),
                              out=str(tmp_path / "r")), progress=False)
    with open(res.out_dir / "predictions.csv", newline="") as f:
        got = {r["path"]: float(r["score_qwen"]) for r in csv.DictReader(f)}
    alone = create_branch("qwen", preset="tiny", device="cpu", batch_size=1)
    want = dict(zip(paths, alone.score([load_image(p) for p in paths])))
    assert got.keys() == want.keys()
    assert all(abs(got[p] - want[p]) < 1e-5 for p in paths), (got, want)
