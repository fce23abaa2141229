"""The one training loop for neural pixel experts (``dinov2``, ``npr``).

- Batches: paired (a real crop and its reconstruction cut at the SAME position, with the
  same JPEG quality when format-aligned JPEG augmentation fires) when the set has
  ``pair_id``; otherwise class-balanced. Windows are cut at native resolution.
- Validation on held-out pairs / source photos each epoch, scored the way the branch
  scores at inference (multi-crop logit average); a row per epoch in ``metrics.csv``.
- ``OUT/best`` and ``OUT/last`` hold the trainable weights (safetensors / peft adapter)
  + ``branch.json``; ``OUT/state`` holds what resuming needs (weights, AdamW state, torch
  RNG, counters). Data order, crop positions and JPEG qualities are drawn from generators
  seeded by (seed, epoch, step, slot), so a resumed run sees exactly the data an
  uninterrupted one would and, on CPU, ends with the same weights and metrics.
- The loop uses ``accelerate.Accelerator`` (mixed precision on GPU, gradient sync and
  batch sharding under ``accelerate launch``); a one-process CPU run behaves as plain torch.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.crops import crop, jpeg_roundtrip, random_position
from ..errors import AlignCoreError
from .base import (METRICS_FILE, Trainer, TrainResult, append_metrics, make_summary, read_metrics,
                   write_training_record)
from .pixel_config import UNLIMITED_EPOCHS, PixelTrainConfig
from .pixel_data import EpochPlan, ImageCache, TrainRecord, load_training_set, split_by_group

__all__ = ["PixelTrainer", "read_metrics"]

#: what a neural pixel branch must offer the loop (see aligncore.pixel.NeuralPixelBranch)
PIXEL_MODEL_PROTOCOL = ("build_model", "logits", "crops", "trainable_parameters", "trainable_state_dict",
                        "load_trainable_state_dict", "save")


@dataclass
class _Data:
    train: list[TrainRecord]
    val: list[TrainRecord]
    paired: bool
    plan: EpochPlan


class PixelTrainer(Trainer):
    """Train a :class:`aligncore.pixel.NeuralPixelBranch` class with a :class:`PixelTrainConfig`.

    The trainer builds its own branch (``self.branch``) from the branch config plus the train
    config's branch fields (crop_size; dinov2 adds from_scratch); after :meth:`train` it holds
    the last weights. ``OUT/best`` is the checkpoint returned.
    """

    config_class = PixelTrainConfig
    config: PixelTrainConfig

    def __init__(self, branch_class, branch_config, config: PixelTrainConfig, *, progress: bool = True,
                 on_step: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None,
                 allow_outside_paths: bool = False):
        super().__init__(branch_class, branch_config, config, progress=progress, on_step=on_step, log=log,
                         allow_outside_paths=allow_outside_paths)
        missing = [m for m in PIXEL_MODEL_PROTOCOL if not callable(getattr(branch_class, m, None))]
        if missing:
            raise AlignCoreError(f"branch {branch_class.name!r} cannot use the pixel trainer: it lacks {', '.join(missing)}.")
        self.branch = self.new_branch()
        self._check_memory()

    def _check_memory(self) -> None:
        """A training step holds batch_size windows (uint8 and float32), a validation step eval_batch_size."""
        from ..limits import check_memory

        s, cfg = self.branch.config.crop_size, self.config
        per = s * s * 3 * (1 + 4)
        for field, n in (("batch_size", cfg.batch_size // cfg.grad_accum_steps), ("eval_batch_size", cfg.eval_batch_size)):
            check_memory(per * n, f"training {self.branch.name!r}: {field} {n} of {s}x{s} windows",
                         f"Lower {field} (or crop_size, or raise grad_accum_steps).")

    # ------------------------------------------------------------------ public
    def train(self, train_set, out_dir) -> TrainResult:
        cfg = self.config
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = self._load_data(train_set)
        acc = self._accelerator()
        model, opt, raw_model = self._prepare_model(acc)
        state = self._start_state(out, raw_model, opt)
        self.record = self.training_record(data.train + data.val, train_set, epochs=cfg.planned_epochs())
        if acc.is_main_process:
            (out / "train_config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
            (out / "split.json").write_text(json.dumps({
                "paired": data.paired, "n_train": len(data.train), "n_val": len(data.val),
                "val_groups": sorted({r.group for r in data.val}),
            }, indent=2) + "\n")
        stopped = self._run_epochs(out, data, model, raw_model, opt, state)
        self.branch.model = raw_model
        self.branch.model.eval()
        acc.wait_for_everyone()
        summary = make_summary(steps=state["global_step"], epochs=state["epoch"], stop_reason=stopped or "epochs",
                               best_epoch=state["best_epoch"], val_auc=state["best_auc"],
                               last=getattr(self, "last_metrics", None), paired=data.paired,
                               n_train=len(data.train), n_val=len(data.val), data_digest=self.record["data"]["digest"])
        return TrainResult(out / "best", summary)

    # ------------------------------------------------------------------ set-up
    def _load_data(self, train_set) -> _Data:
        cfg = self.config
        records = load_training_set(train_set, self.allow_outside_paths)
        train_recs, val_recs = split_by_group(records, cfg.val_fraction, cfg.seed)
        has_pairs = any(r.pair_id for r in train_recs)
        paired = has_pairs if cfg.paired == "auto" else cfg.paired == "yes"
        return _Data(train_recs, val_recs, paired, EpochPlan(train_recs, cfg.batch_size, cfg.seed, paired))

    def _accelerator(self):
        from accelerate import Accelerator

        on_gpu = self.branch.device.startswith("cuda")
        mp = self.config.mixed_precision
        if mp == "auto":
            mp = "bf16" if on_gpu else "no"
        if not on_gpu:
            mp = "no"  # CPU training is always fp32
        self.acc = Accelerator(cpu=not on_gpu, mixed_precision=mp)
        return self.acc

    def _prepare_model(self, acc):
        import torch

        cfg, br = self.config, self.branch
        torch.manual_seed(cfg.seed)  # initialisation of heads / LoRA / scratch weights
        br.build_model(for_training=True, gradient_checkpointing=cfg.gradient_checkpointing)
        br.model.to(acc.device)
        params = br.trainable_parameters()
        if not params:
            raise AlignCoreError(f"branch {br.name!r} has no trainable parameters.")
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        model, opt = acc.prepare(br.model, opt)
        raw_model = br.model
        br.model = model
        return model, opt, raw_model

    def _start_state(self, out: Path, raw_model, opt) -> dict:
        state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "loss_sum": 0.0, "loss_n": 0,
                 "best_auc": None, "best_epoch": None, "elapsed_s": 0.0}
        state_dir = out / "state"
        if self.config.resume and (state_dir / "trainer_state.json").exists():
            state = self._load_state(state_dir, raw_model, opt)
            _truncate_metrics(out / METRICS_FILE, state["epoch"])
        elif (out / METRICS_FILE).exists():
            (out / METRICS_FILE).unlink()
        return state

    # ------------------------------------------------------------------ the loop
    def _run_epochs(self, out: Path, data: _Data, model, raw_model, opt, state: dict) -> str:
        """Epochs until done, max_steps or max_minutes; returns why it stopped ("" = all epochs)."""
        import torch

        cfg, acc = self.config, self.acc
        epochs = cfg.planned_epochs()
        total_steps = data.plan.steps * epochs
        if cfg.max_steps:
            total_steps = min(total_steps, cfg.max_steps)
        cache = ImageCache(cfg.cache_images)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        t_start = time.monotonic() - state["elapsed_s"]
        stopped = ""
        bar = self._progress_bar(None if epochs == UNLIMITED_EPOCHS and not cfg.max_steps else total_steps,
                                 state["global_step"])
        while state["epoch"] < epochs and not stopped:
            epoch = state["epoch"]
            batches = data.plan.batches(epoch)
            model.train()
            for s in range(state["step_in_epoch"], len(batches)):
                if state["global_step"] >= total_steps:
                    stopped = "max_steps"
                    break
                lr = self._lr(state["global_step"], total_steps, time.monotonic() - t_start)
                for g in opt.param_groups:
                    g["lr"] = lr
                self._opt_lr = lr
                loss_val = self._step(model, opt, loss_fn, batches[s], cache, epoch, s)
                state["global_step"] += 1
                state["step_in_epoch"] = s + 1
                state["loss_sum"] += loss_val
                state["loss_n"] += 1
                state["elapsed_s"] = time.monotonic() - t_start
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{state['loss_sum'] / state['loss_n']:.4f}", epoch=epoch)
                if cfg.max_minutes and state["elapsed_s"] >= cfg.max_minutes * 60:
                    stopped = "max_minutes"
                if cfg.save_every_steps and state["global_step"] % cfg.save_every_steps == 0 and s + 1 < len(batches):
                    self._save_state(out / "state", raw_model, opt, state)
                if self.on_step is not None:
                    self.on_step(state["global_step"])
                if stopped:
                    break
            if state["global_step"] >= total_steps and not stopped:
                stopped = "max_steps" if state["step_in_epoch"] < len(batches) or epoch + 1 < epochs else ""
            self._end_epoch(out, raw_model, data.val, cache, state, stopped)
            if not stopped or state["step_in_epoch"] >= len(batches):
                state["epoch"] = epoch + 1
                state["step_in_epoch"] = 0
                state["loss_sum"], state["loss_n"] = 0.0, 0
            self._save_state(out / "state", raw_model, opt, state)
        if bar is not None:
            bar.close()
        return stopped

    def _progress_bar(self, total: int, done: int):
        if not (self.progress and self.acc.is_main_process):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=done, desc=f"train {self.branch.name}", unit="step", dynamic_ncols=True, leave=False)

    # ------------------------------------------------------------------ one step
    def _lr(self, step: int, total: int, elapsed_s: float = 0.0) -> float:
        """Warm-up, then cosine over the planned steps — or over the time budget when that ends first."""
        cfg = self.config
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.scheduler == "constant":
            return cfg.lr
        span = max(1, total - cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / span)
        if cfg.max_minutes:
            t = max(t, min(1.0, elapsed_s / (cfg.max_minutes * 60)))
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))

    def make_batch(self, slots, cache: ImageCache, epoch: int, step: int):
        """Slots → (uint8 tensor (N, 3, S, S), float labels). Pair-mates share position and JPEG quality."""
        import torch

        cfg, size, align = self.config, self.branch.config.crop_size, self.branch.config.crop_align
        pad = self.branch.config.pad_mode
        crops: list[np.ndarray | None] = [None] * len(slots)
        for i, slot in enumerate(slots):
            if crops[i] is not None:
                continue
            rng = np.random.default_rng([cfg.seed, epoch, step, i, 11])
            arr = cache.get(slot.record.path)
            mate = slot.partner if slot.partner >= 0 else None
            arr2 = cache.get(slots[mate].record.path) if mate is not None else None
            h, w = arr.shape[:2]
            if arr2 is not None:
                h, w = min(h, arr2.shape[0]), min(w, arr2.shape[1])
            top, left = random_position(h, w, size, rng, align)
            q = None
            if cfg.jpeg_aug_prob and rng.random() < cfg.jpeg_aug_prob:
                q = int(rng.integers(cfg.jpeg_quality_min, cfg.jpeg_quality_max + 1))
            for j, a in ((i, arr), (mate, arr2)):
                if j is None:
                    continue
                c = crop(a[:h, :w], top, left, size, pad)
                crops[j] = jpeg_roundtrip(c, q) if q is not None else c
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
        y = torch.tensor([float(s.record.label) for s in slots])
        return x, y

    def _step(self, model, opt, loss_fn, slots, cache, epoch: int, step: int) -> float:

        acc, cfg = self.acc, self.config
        x, y = self.make_batch(slots, cache, epoch, step)
        # shard across processes (pairs stay together: slots are laid out pair by pair)
        n = len(slots)
        if acc.num_processes > 1:
            chunk = n // acc.num_processes
            lo = acc.process_index * chunk
            x, y = x[lo : lo + chunk], y[lo : lo + chunk]
        micro = max(1, len(y) // cfg.grad_accum_steps)
        total = 0.0
        opt.zero_grad(set_to_none=True)
        parts = [(i, min(i + micro, len(y))) for i in range(0, len(y), micro)][: cfg.grad_accum_steps]
        for k, (lo, hi) in enumerate(parts):
            last = k == len(parts) - 1
            ctx = acc.no_sync(model) if (acc.num_processes > 1 and not last) else nullcontext()
            with ctx, acc.autocast():
                xb = x[lo:hi].to(acc.device)
                logits = self.branch.logits(xb).float()
                loss = loss_fn(logits, y[lo:hi].to(acc.device)) * (hi - lo) / len(y)
                acc.backward(loss)
            total += float(loss.detach())
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(self.branch.trainable_parameters(), cfg.max_grad_norm)
        opt.step()
        return total

    # ------------------------------------------------------------------ evaluation and saving
    @contextmanager
    def _unwrapped(self, raw_model):
        wrapped = self.branch.model
        self.branch.model = raw_model
        try:
            yield
        finally:
            self.branch.model = wrapped

    def evaluate(self, records: list[TrainRecord], cache: ImageCache) -> dict:
        """Score held-out images as inference does; loss, AUC, AP, balanced accuracy."""
        import torch

        from ..metrics import binary_metrics

        br = self.branch
        if not records:
            return {}
        br.model.eval()
        zs: list[float] = []
        with torch.inference_mode():
            for i in range(0, len(records), self.config.eval_batch_size):
                chunk = records[i : i + self.config.eval_batch_size]
                batch = torch.stack([torch.from_numpy(br.crops(cache.get(r.path))).permute(0, 3, 1, 2) for r in chunk])
                b, k = batch.shape[:2]
                with self.acc.autocast():
                    z = br.logits(batch.reshape(b * k, *batch.shape[2:]).to(self.acc.device)).float()
                zs += z.reshape(b, k).mean(dim=1).cpu().tolist()
        y = np.array([r.label for r in records], dtype=float)
        z = np.array(zs)
        loss = float(np.mean(np.logaddexp(0, z) - y * z))  # BCE with logits
        p = 1 / (1 + np.exp(-z))
        m = binary_metrics(y.astype(int), p, p >= 0.5)
        br.model.train()
        return {"val_loss": loss, "val_auc": m.get("auc"), "val_ap": m.get("ap"),
                "val_balanced_accuracy": m.get("balanced_accuracy")}

    def _end_epoch(self, out: Path, raw_model, val_recs, cache, state: dict, stopped: str) -> None:
        acc = self.acc
        with self._unwrapped(raw_model):
            m = self.evaluate(val_recs, cache)
            if acc.is_main_process:
                _replace_dir(out / "last", self._save_checkpoint)
                auc = m.get("val_auc")
                best = state["best_auc"]
                if best is None or (auc is not None and auc > best) or not (out / "best").exists():
                    state["best_auc"], state["best_epoch"] = auc, state["epoch"]
                    _replace_dir(out / "best", self._save_checkpoint)
        row = {
            "epoch": state["epoch"], "step": state["global_step"],
            "train_loss": state["loss_sum"] / max(1, state["loss_n"]),
            "lr": getattr(self, "_opt_lr", float("nan")),
            "elapsed_s": round(state["elapsed_s"], 1), "stopped": stopped, **m,
        }
        if acc.is_main_process:
            append_metrics(out / METRICS_FILE, row)
            if self.log is not None:
                self.log(epoch_line(row, self.config.planned_epochs()))
        self.last_metrics = row

    def _save_checkpoint(self, folder: Path) -> None:
        """The branch's weights plus ``training.json`` (what it was trained on, with which settings)."""
        self.branch.save(folder)
        write_training_record(folder, self.record)

    def _save_state(self, state_dir: Path, raw_model, opt, state: dict) -> None:
        import torch

        from ..safeio import save_state_dict

        if not self.acc.is_main_process:
            return

        def write(tmp: Path) -> None:
            with self._unwrapped(raw_model):
                save_state_dict(self.branch.trainable_state_dict(), tmp / "weights.safetensors")
            torch.save(opt.state_dict(), tmp / "optimizer.pt")
            torch.save({"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "rng.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")

        _replace_dir(state_dir, write)

    def _load_state(self, state_dir: Path, raw_model, opt) -> dict:
        import torch

        from ..safeio import load_state_dict, safe_torch_load

        with self._unwrapped(raw_model):
            self.branch.load_trainable_state_dict(load_state_dict(state_dir / "weights.safetensors"))
        opt.load_state_dict(safe_torch_load(state_dir / "optimizer.pt"))
        rng = safe_torch_load(state_dir / "rng.pt")
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        from ..parsing import read_structured

        state = read_structured(state_dir / "trainer_state.json", "trainer state", fmt="json")
        if not isinstance(state, dict):
            raise AlignCoreError(f"trainer state {state_dir / 'trainer_state.json'} is not a mapping; remove "
                                 f"{state_dir} to train from the start.")
        return state


def epoch_line(row: dict, epochs: int) -> str:
    """One readable line per epoch: losses, validation metrics, time (no epoch total when a budget rules)."""
    total = "" if epochs >= UNLIMITED_EPOCHS else f"/{epochs}"
    parts = [f"epoch {int(row['epoch']) + 1}{total}", f"step {row['step']}"]
    for k in ("train_loss", "val_loss", "val_auc", "val_ap", "val_balanced_accuracy"):
        v = row.get(k)
        if v is not None and v != "":
            parts.append(f"{k} {float(v):.4f}")
    parts.append(f"{row.get('elapsed_s')} s")
    if row.get("stopped"):
        parts.append(f"stopped: {row['stopped']}")
    return "  ".join(parts)


def _replace_dir(target: Path, write: Callable[[Path], object]) -> None:
    """Write into a temporary sibling, then swap it in (a kill never leaves a half-written folder)."""
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Drop rows of epochs not yet complete in the saved state (written just before a kill)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < epoch]
    path.unlink()
    for r in rows:
        append_metrics(path, r)

