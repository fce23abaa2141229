"""GPU check for a ~10-minute slot: full-size architectures with random weights.

- DINOv2 ViT-L/14 at 336 px (timm, the paper's pixel expert backbone): images/s per batch
  size under bf16 autocast, peak memory, FLOPs per image (counted by torch's FlopCounterMode)
  and the achieved fraction of the card's dense bf16 peak.
- Qwen2.5-VL-7B in bf16 with SDPA: verdict scoring (one forward pass over the verdict-token
  logits, left-padded batches, as the `qwen` branch scores) images/s per batch size and peak
  memory, plus generate(16 tokens)-and-parse for comparison.

Random weights are fine for speed. `--smoke` runs the same code on tiny architectures (any
device) so the script is known to work before a GPU slot is spent on it.

    bash benchmarks/perf/gpu_check.sh            # on the GPU machine; writes benchmarks/results/gpu_check.md
    python benchmarks/perf/gpu_check.py --smoke  # anywhere, seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

#: dense bf16 tensor-core peaks (FLOP/s) by device name fragment; override with --peak-tflops
PEAKS = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100": 989e12,
         "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_mem_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def timed(fn, device: str, seconds: float, min_iters: int = 3) -> tuple[float, int]:
    fn()  # warm-up (kernels, allocator)
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    sync(device)
    return (time.perf_counter() - t0) / n, n


def dinov2_check(device: str, smoke: bool, batch_sizes: list[int], seconds: float, peak: float | None) -> list[dict]:
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    name, size = ("vit_small_patch14_dinov2", 98) if smoke else ("vit_large_patch14_dinov2", 336)
    model = timm.create_model(name, pretrained=False, img_size=size, num_classes=0).to(device).eval()
    dtype = torch.bfloat16
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=device.startswith("cuda")):
            model(torch.randn(1, 3, size, size, device=device))
    flops = fc.get_total_flops()
    rows = []
    for bs in batch_sizes:
        x = torch.randn(bs, 3, size, size, device=device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

        def step():
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=device.startswith("cuda")):
                model(x)

        try:
            dt, n = timed(step, device, seconds)
        except torch.cuda.OutOfMemoryError:
            rows.append({"branch": f"dinov2 {name}@{size}", "batch": bs, "error": "out of memory"})
            torch.cuda.empty_cache()
            continue
        ips = bs / dt
        achieved = flops * ips
        rows.append({
            "branch": f"dinov2 {name}@{size}", "batch": bs, "images_per_s": round(ips, 1), "iters": n,
            "peak_mem_gib": None if peak_mem_gib(device) is None else round(peak_mem_gib(device), 2),
            "gflops_per_image": round(flops / 1e9, 1), "achieved_tflops": round(achieved / 1e12, 1),
            "fraction_of_bf16_peak": None if not peak else round(achieved / peak, 3),
        })
    del model
    return rows


def qwen_check(device: str, smoke: bool, batch_sizes: list[int], seconds: float, side: int) -> list[dict]:
    from PIL import Image
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from aligncore_plugins import qwen_model as qm

    processor = qm.build_tiny_processor(min_pixels=side * side, max_pixels=side * side)
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    if smoke:
        cfg = qm.tiny_config(tok)
    else:
        arch = json.loads(json.dumps(qm.QWEN25_VL_7B_ARCH))
        # keep the 7B shapes; take the special-token ids from the offline tokenizer that builds the inputs
        arch.update(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                    vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
        cfg = Qwen2_5_VLConfig(**arch)
    cfg._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    n_params = sum(p.numel() for p in model.parameters())
    real_ids, fake_ids = qm.verdict_token_ids(tok)
    text = qm.prompt_text(processor, "Is this image a real photograph or AI-generated? Answer real or fake first.")
    rng = torch.Generator().manual_seed(0)
    images = [Image.fromarray(torch.randint(0, 255, (side, side, 3), generator=rng, dtype=torch.uint8).numpy())
              for _ in range(max(batch_sizes))]
    encoded = [qm.encode_one(processor, text, im) for im in images]
    rows = []
    for bs in batch_sizes:
        batch = qm.to_device(qm.left_pad_collate(encoded[:bs], tok.pad_token_id), device, dtype)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

        def score():
            with torch.inference_mode():
                qm.verdict_probabilities(model, batch, real_ids, fake_ids)

        try:
            dt, n = timed(score, device, seconds)
        except torch.cuda.OutOfMemoryError:
            rows.append({"branch": "qwen verdict-logits", "batch": bs, "error": "out of memory"})
            torch.cuda.empty_cache()
            continue
        rows.append({"branch": f"qwen {'tiny' if smoke else '7B'} verdict-logits", "batch": bs,
                     "images_per_s": round(bs / dt, 2), "iters": n, "params_b": round(n_params / 1e9, 3),
                     "image_tokens": int((batch["input_ids"][0] == ids("<|image_pad|>")).sum()),
                     "peak_mem_gib": None if peak_mem_gib(device) is None else round(peak_mem_gib(device), 2)})
    bs = min(4, max(batch_sizes))
    batch = qm.to_device(qm.left_pad_collate(encoded[:bs], tok.pad_token_id), device, dtype)

    def gen():
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    dt, n = timed(gen, device, seconds, min_iters=1)
    rows.append({"branch": f"qwen {'tiny' if smoke else '7B'} generate(16)+parse", "batch": bs,
                 "images_per_s": round(bs / dt, 2), "iters": n})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny architectures (any device): checks the script")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seconds", type=float, default=8.0, help="timing window per configuration")
    ap.add_argument("--dinov2-batches", default=None, help="default 16,32,64,128 (smoke: 2,4)")
    ap.add_argument("--qwen-batches", default=None, help="default 1,4,8,16 (smoke: 1,2)")
    ap.add_argument("--qwen-side", type=int, default=448, help="image side for the VLM (448 → 256 visual tokens)")
    ap.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, if not in the built-in table")
    ap.add_argument("--out", default="benchmarks/results/gpu_check")
    args = ap.parse_args()

    dev = args.device
    args.dinov2_batches = args.dinov2_batches or ("2,4" if args.smoke else "16,32,64,128")
    args.qwen_batches = args.qwen_batches or ("1,2" if args.smoke else "1,4,8,16")
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else platform.processor() or "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAKS.items() if k in name), None)
    if dev.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started = time.time()
    rows = dinov2_check(dev, args.smoke, [int(b) for b in args.dinov2_batches.split(",")], args.seconds, peak)
    for r in rows:
        print(json.dumps(r), flush=True)
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    qrows = qwen_check(dev, args.smoke, [int(b) for b in args.qwen_batches.split(",")], args.seconds, args.qwen_side)
    for r in qrows:
        print(json.dumps(r), flush=True)
    rows += qrows
    head = (f"device: {name}; torch {torch.__version__}; bf16 peak used: "
            f"{'n/a' if not peak else f'{peak / 1e12:.0f} TFLOP/s'}; smoke: {args.smoke}; "
            f"wall {time.time() - started:.0f} s")
    print(head)
    out = Path(args.out + ("-smoke" if args.smoke else "") + ".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    cols = ["branch", "batch", "images_per_s", "peak_mem_gib", "gflops_per_image", "achieved_tflops",
            "fraction_of_bf16_peak", "image_tokens", "params_b", "error"]
    lines = [f"# GPU check\n\n{head}\n\n`python benchmarks/perf/gpu_check.py{' --smoke' if args.smoke else ''}`\n",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |" for r in rows]
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
