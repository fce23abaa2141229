"""VLM scoring: one forward pass over the verdict-token logits vs generate() and parsing the text.

Both paths use the same `qwen` branch, the same left-padded batches and the same images.
The logit path is what aligncore scores with; the generate path is what a pipeline that
reads hard text verdicts does (the paper's own pipeline). Prints images/s of each, their
ratio, and how many generated answers could be parsed as a verdict at all.

    python benchmarks/perf/vlm_scoring.py --preset tiny --n 32 --new-tokens 16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--model", default=None, help="a Qwen2.5-VL id or local folder (instead of --preset)")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--side", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16, help="tokens generated per answer")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: a tiny model gains nothing from more, and contends on 2 cores)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes of each path; the fastest is kept")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from aligncore import create_branch
    from aligncore_plugins.qwen_model import to_device

    opts = {"device": args.device, "batch_size": args.batch_size}
    opts.update({"model": args.model} if args.model else {"preset": args.preset})
    br = create_branch("qwen", **opts).ensure_loaded()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (args.side, args.side, 3), dtype=np.uint8)) for _ in range(args.n)]
    batches = [br.collate([br.preprocess(im) for im in images[i : i + args.batch_size]])
               for i in range(0, args.n, args.batch_size)]
    tok = br.processor().tokenizer
    model = br._model

    def logits_pass():
        return [s for b in batches for s in br.score_batch(b)]

    def generate_pass():
        verdicts = []
        for b in batches:
            b = to_device(b, br.device, br.dtype)
            out = model.generate(**b, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            for text in tok.batch_decode(out[:, b["input_ids"].shape[1]:], skip_special_tokens=True):
                word = text.strip().lower()
                verdicts.append("fake" if word.startswith("fake") else "real" if word.startswith("real") else None)
        return verdicts

    def best(fn):
        t_best, result = float("inf"), None
        for _ in range(args.repeats):
            t = time.perf_counter()
            result = fn()
            t_best = min(t_best, time.perf_counter() - t)
        return t_best, result

    with torch.inference_mode():
        logits_pass()  # warm-up
        generate_pass()
        t_logits, scores = best(logits_pass)
        t_gen, verdicts = best(generate_pass)
    parsed = sum(v is not None for v in verdicts)
    print(f"qwen ({args.model or 'preset ' + args.preset}), {args.n} images {args.side}px, batch {args.batch_size}, "
          f"device {br.device}, torch threads {torch.get_num_threads()}")
    print(f"verdict logits (1 forward):      {args.n / t_logits:8.2f} img/s  (P(fake) range {min(scores):.3f}..{max(scores):.3f})")
    print(f"generate({args.new_tokens}) + parse:           {args.n / t_gen:8.2f} img/s  (parsed {parsed}/{args.n} as a verdict)")
    print(f"speed-up of logit scoring:       {t_gen / t_logits:8.1f}x")


if __name__ == "__main__":
    main()
