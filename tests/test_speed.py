"""Speed without changed results: memory-bounded window chunks give the scores of the unchunked path, one
decode per image with loader workers too, `run --profile` counts what happened, inputs cross from the
workers in one shared tensor per batch, windows are cut with one copy each."""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from aligncore import profiling
from aligncore.cli import build_cli
from aligncore.config import make_run_config
from aligncore.data import load_dataset, load_image
from aligncore.data.crops import crop, cut_windows, grid_positions
from aligncore.data.loader import LoadItem, load_images
from aligncore.errors import AlignCoreError
from aligncore.registry import create_branch
from aligncore.runner import run

from decode_reference import (PIXEL_CONFIGS, PIXEL_FIXTURE, make_reference_images, pixel_scores, unchunked_scores,
                              windows_when_frozen)

#: scores are compared to a float32 sigmoid frozen before chunking; a float64 sigmoid of the same logit
#: differs by < 3e-8, while the closest scores of two different images here differ by 2.5e-8..1e-4
TOL = 1e-7


def _max_diff(got: dict, want: dict) -> float:
    assert got.keys() == want.keys()
    return max(abs(got[k][p] - want[k][p]) for k in want for p in want[k])


@pytest.mark.parametrize("budget", [None, 0.01])
def test_pixel_scores_equal_the_unchunked_path(tmp_path, budget):
    """npr (tiny and its default architecture), dinov2 and spectrum score every image as the path that put every
    window of a batch through one forward pass did, at the default activation budget and at a budget that forces
    one window per forward pass: (1) the frozen scores of that path, for every image whose windows are still the
    ones it was frozen with (scoring later chose distinct windows on purpose, which changes the others' scores);
    (2) every image, against the plain computation with today's windows (one image, all its windows in one pass)."""
    want = json.loads(PIXEL_FIXTURE.read_text())
    assert set(want) == {name for name, _, _ in PIXEL_CONFIGS}
    images = make_reference_images(tmp_path / "images")
    got = pixel_scores(images, tmp_path, **({} if budget is None else {"activation_mb": budget}))

    same_windows = {}
    for name, branch, opts in PIXEL_CONFIGS:
        br = create_branch(branch, device="cpu", **opts)
        c = br.config
        sizes = {p: load_image(images / p).size for p in want[name]}
        same_windows[name] = {p: want[name][p] for p, (w, h) in sizes.items()
                              if Counter(br.window_positions(h, w)) == Counter(windows_when_frozen(h, w, c.crop_size, c.inference_crops, c.crop_align))}
    assert sum(map(len, same_windows.values())) >= 30  # of 44: the frozen check still covers most images
    assert _max_diff({k: {p: got[k][p] for p in v} for k, v in same_windows.items()}, same_windows) <= TOL

    plain = unchunked_scores(images)
    assert set(plain) == {"npr-tiny", "npr-full", "dinov2-tiny"}
    assert _max_diff({k: got[k] for k in plain}, plain) <= TOL


def _largest_activation(branch, batch) -> tuple[int, list[float]]:
    sizes = []
    hooks = [m.register_forward_hook(lambda m, a, out: sizes.append(out.numel() * out.element_size()))
             for m in branch.model.modules() if next(m.children(), None) is None]
    try:
        with torch.inference_mode():
            scores = branch.score_batch(batch)
    finally:
        for h in hooks:
            h.remove()
    return max(sizes), scores


def test_windows_go_through_the_model_within_the_budget():
    """npr's default architecture makes 1 MiB activations per 128-px window (16 channels, float32): a 2 MiB budget
    runs two windows per forward pass, 10 passes for 5 images of 4 windows, and no tensor passes the budget."""
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)) for _ in range(5)]
    arch = {"preset": "tiny", "width": 16, "crop_size": 128, "inference_crops": 4, "device": "cpu"}
    lifted = create_branch("npr", **arch, activation_mb=1e6).ensure_loaded()
    bounded = create_branch("npr", **arch, activation_mb=2).ensure_loaded()
    assert bounded.fingerprint() == lifted.fingerprint()  # the budget never changes a score, so it is not in the key
    assert bounded.window_activation_bytes() == 16 * 128 * 128 * 4
    assert bounded.windows_per_forward() == 2 and lifted.windows_per_forward() >= 128
    batch = bounded.collate([bounded.preprocess(im) for im in imgs])
    big, want = _largest_activation(lifted, batch)
    small, got = _largest_activation(bounded, batch)
    assert big == 20 * 2**20 and small <= 2 * 2**20
    assert bounded.score_counts() == {"windows": 20, "forward_passes": 10}
    assert lifted.score_counts() == {"windows": 20, "forward_passes": 1}
    assert np.max(np.abs(np.array(got) - np.array(want))) <= TOL


def test_default_budget_depends_on_the_device():
    from aligncore.pixel import CPU_ACTIVATION_MB

    br = create_branch("npr", preset="tiny", device="cpu")
    assert br.activation_budget_mb() == CPU_ACTIVATION_MB
    assert create_branch("npr", preset="tiny", device="cpu", activation_mb=3).activation_budget_mb() == 3
    assert create_branch("dinov2", preset="tiny", device="cpu").activation_budget_mb() == 16  # a ViT's own default
    with pytest.raises(Exception, match="activation_mb"):
        create_branch("npr", preset="tiny", activation_mb=0)


@pytest.mark.parametrize("channels_first", [False, True])
def test_windows_are_cut_as_before(channels_first):
    """cut_windows (PIL fast path and array path, padded or not) gives exactly the windows crop() cut."""
    rng = np.random.default_rng(3)
    for h, w, size in ((90, 130, 32), (20, 50, 32), (64, 64, 64), (7, 5, 16)):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pos = grid_positions(h, w, size, 5, 8)
        want = np.stack([crop(arr, t, l, size) for t, l in pos])
        want = want.transpose(0, 3, 1, 2) if channels_first else want
        for src in (arr, Image.fromarray(arr)):
            got = cut_windows(src, pos, size, channels_first=channels_first)
            assert got.dtype == np.uint8 and got.flags.c_contiguous and np.array_equal(got, want)


def test_pixel_preprocessing_reads_only_the_windows(monkeypatch):
    """From a decoded RGB image a pixel branch copies its windows, never the whole image."""
    from PIL import Image as PILImage

    calls = Counter()
    real = PILImage.Image.tobytes

    def counted(self, *a, **k):
        calls[self.size] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(PILImage.Image, "tobytes", counted)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 600, 3), dtype=np.uint8))
    x = create_branch("npr", preset="tiny", device="cpu").preprocess(img)
    assert tuple(x.shape) == (16, 3, 32, 32) and x.is_contiguous()
    assert calls and set(calls) == {(32, 32)}, calls


def _decode_log(monkeypatch, tmp_path) -> Path:
    """Every decode appends its path to a file, so decodes in forked loader workers are counted too."""
    from aligncore.data import loader

    log = tmp_path / "decodes.txt"
    real = loader.load_image

    def logged(path, *a, **k):
        with open(log, "a") as f:
            f.write(f"{path}\n")
        return real(path, *a, **k)

    monkeypatch.setattr(loader, "load_image", logged)
    return log


@pytest.mark.parametrize("workers", [0, 2])
def test_two_branches_decode_each_image_once_with_workers(tmp_path, monkeypatch, workers):
    if workers and multiprocessing.get_start_method() != "fork":
        pytest.skip("the decode log reaches workers only when they are forked")
    images = make_reference_images(tmp_path / "images")
    paths = sorted(r.path for r in load_dataset(images).records)
    log = _decode_log(monkeypatch, tmp_path)
    res = run(make_run_config(branches="npr,spectrum", preset="tiny", device="cpu", data=str(images),
                              out=str(tmp_path / "r"), workers=workers, batch_size=4), progress=False, profile=True)
    assert Counter(log.read_text().split()) == Counter(paths), "each image decoded once, for both branches"
    counts = res.profile["counts"]
    assert counts["images_decoded"] == counts["files_read"] == counts["files_hashed"] == len(paths)
    assert counts["images_scored"] == {"npr": len(paths), "spectrum": len(paths)}
    assert counts["windows"] == {"npr": 16 * len(paths)}
    assert counts["scores_stored"] == 2 * len(paths)
    stages = res.profile["stages"]
    assert stages["decode"]["calls"] == len(paths) and stages["decode"]["where"] == ("workers" if workers else "main")
    assert stages["preprocess npr"]["calls"] == stages["preprocess spectrum"]["calls"] == len(paths)
    assert res.profile["loader_workers"] == workers
    assert json.loads((res.out_dir / "profile.json").read_text()) == json.loads(json.dumps(res.profile))
    alone = run(make_run_config(branches="npr", preset="tiny", device="cpu", data=str(images), out=str(tmp_path / "a"),
                                store=str(tmp_path / "other.sqlite")), progress=False)
    assert [alone.table.scores["npr"][i] for i in range(len(paths))] == list(res.table.scores["npr"])


def test_profile_counts_a_failed_decode_and_stays_off_by_default(tmp_path):
    images = make_reference_images(tmp_path / "images")
    (images / "0_real" / "broken.png").write_bytes(b"\x89PNG not really")
    res = run(make_run_config(branches="npr", preset="tiny", device="cpu", data=str(images), out=str(tmp_path / "r")),
              progress=False, profile=True)
    n = len(load_dataset(images).records)
    assert res.profile["counts"]["files_read"] == n and res.profile["counts"]["decode_failed"] == 1
    assert res.profile["counts"]["images_decoded"] == n - 1
    quiet = run(make_run_config(branches="npr", preset="tiny", device="cpu", data=str(images), out=str(tmp_path / "q"),
                                store=str(tmp_path / "q.sqlite")), progress=False)
    assert quiet.profile is None and not (quiet.out_dir / "profile.json").exists()
    assert profiling.current() is None and profiling.stage("x") is profiling.stage("y")  # one shared no-op


def test_alignctl_run_profile_reports_one_decode_per_image(tmp_path):
    images = make_reference_images(tmp_path / "images")
    n = len(load_dataset(images).records)
    out = tmp_path / "run"
    r = CliRunner().invoke(build_cli(), ["run", "--branches", "npr,spectrum", "--preset", "tiny", "--device", "cpu",
                                         "--data", str(images), "--out", str(out), "--profile", "--workers", "1", "-q"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert f"images decoded: {n}\n" in r.output and f"files read: {n}\n" in r.output
    assert "decode" in r.output and "forward npr" in r.output and "store write" in r.output
    assert (out / "profile.json").is_file()
    from aligncore.rundir import RunDir

    assert len(RunDir.open(out).scores()) == n  # the profile does not disturb the run folder


def test_worker_inputs_arrive_as_one_tensor_per_batch(tmp_path):
    """With workers, a batch's same-shaped tensors travel as one shared tensor; each image gets its own row,
    equal to what the main process computes."""
    images = make_reference_images(tmp_path / "images")
    paths = [r.path for r in load_dataset(images).records]
    npr = create_branch("npr", preset="tiny", device="cpu")
    spectrum = create_branch("spectrum", preset="tiny")
    items = [LoadItem(i, p, (0, 1)) for i, p in enumerate(paths)]
    prep = [npr.preprocess, spectrum.preprocess]
    here = {k: v for batch in load_images(items, prep, 4) for k, v, _ in batch}
    seen = 0
    for batch in load_images(items, prep, 4, workers=1):
        bases = {x[0].untyped_storage().data_ptr() for _, x, _ in batch}
        assert len(bases) == 1 and batch.stacked is None  # one storage per batch, views handed back per image
        for key, inputs, errors in batch:
            assert not errors and torch.equal(inputs[0], here[key][0])
            assert np.array_equal(inputs[1], here[key][1])
            seen += 1
    assert seen == len(paths)


def test_run_with_branch_objects(tmp_path, image_folder):
    """run(branches=...) scores with the given (already loaded) objects, checked against the config's names."""
    br = create_branch("npr", preset="tiny", device="cpu").ensure_loaded()
    model = br.model
    res = run(make_run_config(branches="npr", data=str(image_folder), out=str(tmp_path / "r")), progress=False,
              branches=[br])
    assert res.branches["npr"].scored == 12 and br.model is model
    with pytest.raises(AlignCoreError, match="not the run's"):
        run(make_run_config(branches="spectrum", data=str(image_folder), out=str(tmp_path / "s")), progress=False,
            branches=[br])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pixel_batches_are_page_locked_on_cuda():
    br = create_branch("npr", preset="tiny", device="cuda")
    img = load_image(Image.new("RGB", (64, 64), (1, 2, 3)))
    assert br.collate([br.preprocess(img), br.preprocess(img)]).is_pinned()


@pytest.mark.slow
def test_gpu_check_smoke_runs_anywhere(tmp_path):
    """`gpu_check.sh --smoke`: the GPU check's steps (JPEGs, decode rate, bare model, `alignctl run` end to end
    with its profile, the model checks) on tiny sizes, on the CPU, writing both results files."""
    import os
    import shutil
    import subprocess
    import sys

    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path), "SECONDS_PER_CONFIG": "0.05", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", str(repo / "benchmarks/perf/gpu_check.sh"), "--smoke"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pipeline = (tmp_path / "gpu_pipeline-smoke.md").read_text()
    for line in ("decode per CPU core:", "bare model (dinov2 tiny", "alignctl run, 1 loader workers:"):
        assert line in pipeline, pipeline
    assert "| dinov2 vit_small_patch14_dinov2@98 | 2 |" in (tmp_path / "gpu_check-smoke.md").read_text()
    assert not (repo / "aligncore_plugins").exists()  # an installed checkout is not touched


def test_random_preset_needs_no_pretrained_weights(monkeypatch):
    """The speed presets (`--preset random`: the configured architecture, random weights) build and fingerprint
    offline: the fingerprint names no pretrained backbone, as none is read (peer_baseline.py scores ViT-S this way)."""
    import aligncore_plugins.dinov2_model as dm

    def refuse(*a, **k):
        raise AssertionError("a random-weight branch looked up pretrained weights")

    monkeypatch.setattr(dm, "pretrained_file", refuse)
    br = create_branch("dinov2", preset="random", model="vit_small_patch14_dinov2.lvd142m", crop_size=224, device="cpu")
    assert br.random_weights and br.base_weights_identity() == "" and br.weights_provenance() == "random"
    assert br.fingerprint() != create_branch("dinov2", preset="random", device="cpu").fingerprint()
