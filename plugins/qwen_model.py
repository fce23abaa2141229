"""The heavy half of the ``qwen`` branch: model, processor, tiny offline recipe, verdict scoring.

Imported lazily by :mod:`aligncore_plugins.qwen` (it imports torch and transformers).

Scoring reads one forward pass: the logits at the first answer position, restricted to
the verdict tokens ("real"/"fake", and their capitalised forms when those are single
tokens too), give P(fake) = softmax(logsumexp(fake logits), logsumexp(real logits)).
Prompts are left-padded so that the last position of every row is the answer position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from aligncore.errors import AlignCoreError, ModelUnavailableError
from aligncore.hub import resolve_weights
from aligncore.torchutil import seeded

#: bump when the tiny recipe changes (it is part of the fingerprint)
TINY_RECIPE_VERSION = "2"
BASE_DIR = "base"  # a tiny base model saved beside its adapter

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

#: the chat template of the tiny tokenizer: Qwen's turn markup without the default system turn
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Qwen2.5-VL-7B-Instruct's architecture (its config.json), for shape checks on the meta device
QWEN25_VL_7B_ARCH: dict[str, Any] = {
    "text_config": {
        "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6, "sliding_window": 32768, "max_window_layers": 28,
        "bos_token_id": 151643, "eos_token_id": 151645,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    },
    "vision_config": {
        "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
        "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
    },
    "image_token_id": 151655, "video_token_id": 151656,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "tie_word_embeddings": False,
}

#: LoRA targets: every projection of the language model (attention and MLP), never the vision tower
LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_target_regex(projections: Sequence[str] = LM_PROJECTIONS) -> str:
    """A peft ``target_modules`` regex matching the language model's projections only."""
    return r".*language_model.*\.(" + "|".join(projections) + r")$"


# ---------------------------------------------------------------------- tiny offline recipe


def build_tiny_tokenizer():
    """A byte-level BPE Qwen2 tokenizer built in-process where "real" and "fake" are single tokens."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(sorted(set(bytes_to_unicode().values())))}
    merges: list[tuple[str, str]] = []
    for word in ("real", "fake", "Real", "Fake"):
        cur = word[0]
        for ch in word[1:]:
            merges.append((cur, ch))
            cur += ch
            vocab.setdefault(cur, len(vocab))
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               unk_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_processor(min_pixels: int, max_pixels: int):
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14,
                                            merge_size=2, temporal_patch_size=2)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=build_tiny_tokenizer(),
                               video_processor=Qwen2VLVideoProcessor(), chat_template=TINY_CHAT_TEMPLATE)


def tiny_config(tokenizer):
    """A Qwen2.5-VL of ~200K parameters (mrope sections sum to head_dim / 2 = 8).

    Weights are initialised with std 0.1 instead of 0.02: at 0.02 the random model barely
    tells heavily degraded images apart and a few dozen DPO steps cannot separate them.
    """
    from transformers import Qwen2_5_VLConfig

    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 2, 2]},
            "bos_token_id": None, "eos_token_id": ids("<|im_end|>"), "pad_token_id": ids("<|endoftext|>"),
            "initializer_range": 0.1,
        },
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
            "fullatt_block_indexes": [1], "initializer_range": 0.1,
        },
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )


def build_tiny_model(tokenizer, seed: int = 0):
    """Random weights from a fixed seed, so the same recipe gives the same model everywhere."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    with seeded(seed):
        model = Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def build_meta_model(arch: dict | None = None):
    """A full-size Qwen2.5-VL on the ``meta`` device: shapes and parameter counts, no memory."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**(arch or QWEN25_VL_7B_ARCH)))


# ---------------------------------------------------------------------- locating weights


HOW_TO_PROVIDE = (
    "For the qwen branch pass the directory with -o qwen.model=DIR (run) or -b model=DIR (train), "
    "set allow_download=true where the Hub is reachable, or use --preset tiny for a small offline test model."
)


def model_source(model_id: str, allow_download: bool = False) -> Path:
    """The base model's folder: a local directory, a cached Hub snapshot, or (only if allowed) a download.

    Resolved before ``from_pretrained`` so that a machine without network never waits on retries.
    """
    folder = resolve_weights(model_id, allow_download=allow_download, how=HOW_TO_PROVIDE)
    if not (folder / "config.json").is_file():
        raise ModelUnavailableError(model_id, f"The folder {folder} has no config.json. {HOW_TO_PROVIDE}", local=True)
    return folder


# ---------------------------------------------------------------------- loading


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise AlignCoreError(f"dtype {name!r} is not one of auto, float32, bfloat16, float16.") from None


def resolve_attention(name: str, device: str, dtype: torch.dtype) -> str:
    if name != "auto":
        return name
    import importlib.util

    if str(device).startswith("cuda") and dtype in (torch.bfloat16, torch.float16) and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


def has_processor_files(path: Path) -> bool:
    return (path / "preprocessor_config.json").exists() or (path / "processor_config.json").exists()


def load_processor(source: str, min_pixels: int, max_pixels: int):
    """A saved processor (checkpoint or base model) with the pixel bounds set in its constructor."""
    from transformers import AutoProcessor

    # bounds given to from_pretrained would be replayed as (deprecated) per-call kwargs on every
    # call; setting them on the loaded image processor keeps them constructor-level
    proc = AutoProcessor.from_pretrained(source)
    ip = proc.image_processor
    ip.size = {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}
    for attr, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if hasattr(ip, attr):
            setattr(ip, attr, int(v))
    return proc


def check_model_size(source: str, dtype: torch.dtype, device: str) -> int:
    """The parameter count the model folder's config.json asks for (built on the meta device: no memory),
    refused when its weights would not fit in this machine's memory (or, on a GPU, the GPU's)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from aligncore.limits import check_memory, gib
    from aligncore.parsing import read_structured

    read_structured(Path(source) / "config.json", "model config", fmt="json", max_bytes=1 << 20)  # bounded first
    try:
        cfg = AutoConfig.from_pretrained(source)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(cfg)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelUnavailableError(source, f"Its config.json does not describe a model transformers can build "
                                    f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}).",
                                    local=True) from None
    n = sum(p.numel() for p in model.parameters())
    nbytes = n * torch.finfo(dtype).bits // 8
    gpu = 0
    if str(device).startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_properties(torch.device(device)).total_memory
    if nbytes > gpu:
        check_memory(nbytes, f"the model in {source} ({n / 1e9:.2f}B parameters in {str(dtype).replace('torch.', '')}"
                     f"{', more than the GPU has: ' + gib(gpu) if gpu else ''})",
                     "Use a smaller model, or a machine with more memory.")
    return n


def load_pretrained_model(source: str, dtype: torch.dtype, attention: str, device: str = "cpu"):
    from transformers import AutoModelForImageTextToText

    from aligncore.safeio import check_folder, unsafe_from

    check_folder(source)  # a code-running pickle is refused here, never by transformers' own message
    check_model_size(source, dtype, device)
    try:
        return AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, attn_implementation=attention)
    except (OSError, ValueError) as exc:
        unsafe = unsafe_from(exc, source)
        if unsafe is not None:
            raise unsafe from None
        if attention == "flash_attention_2":  # a broken flash-attn install: fall back, do not fail
            return AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
        raise ModelUnavailableError(source, HOW_TO_PROVIDE, cause=exc) from None


def freeze_vision_tower(model) -> None:
    for name, p in model.named_parameters():
        if ".visual." in f".{name}":
            p.requires_grad_(False)


# ---------------------------------------------------------------------- verdict tokens and batching


def verdict_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids that start a 'real' / a 'fake' answer: the lowercase words and capitalised forms.

    A form is used only when it is one token; the two lists must be disjoint, else the
    first answer token cannot tell the verdicts apart.
    """
    out: list[list[int]] = []
    for word in ("real", "fake"):
        ids: list[int] = []
        for form in (word, word.capitalize()):
            enc = tokenizer.encode(form, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
        if not ids:
            first = tokenizer.encode(word, add_special_tokens=False)
            ids = first[:1]
        out.append(ids)
    real, fake = out
    if set(real) & set(fake):
        raise AlignCoreError("the tokenizer gives 'real' and 'fake' the same first token; verdict scoring needs them apart.")
    return real, fake


#: the longest answer a bounded render is tried with (training renders the verdict and a rationale)
PROBE_ANSWER_CHARS = 4096


def prompt_text(processor, prompt: str, where: str = "the processor") -> str:
    """The fixed question as the chat template renders it. A template aligncore did not write (from a checkpoint
    or a base model folder: ``where``) is code from elsewhere: it is checked, and rendered in a bounded process
    together with a long answer (:mod:`aligncore.templates`), before it is used in-process."""
    from aligncore.templates import check_template, render_bounded, templates_of

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    templates = list(templates_of(processor))
    if templates and all(src == TINY_CHAT_TEMPLATE for _, src in templates):
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    for name, src in templates:
        check_template(src, f"{where} ({name})")
    template = getattr(processor, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if template is None:
        template = getattr(processor.tokenizer, "chat_template", None)
    if template is None:
        raise AlignCoreError(f"{where}: the processor has no chat template to render the prompt with.")
    answer = "fake. " + "x" * PROBE_ANSWER_CHARS
    probes = [messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]]
    return render_bounded(template, messages, where, dict(processor.tokenizer.special_tokens_map), probes=probes)


def encode_one(processor, text: str, image) -> dict[str, torch.Tensor]:
    enc = processor(text=[text], images=[image], return_tensors="pt")
    return {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}


def left_pad_collate(items: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Single-image encodings → one batch; token rows are left-padded so the last column is the answer position."""
    length = max(int(x["input_ids"].shape[1]) for x in items)
    out: dict[str, torch.Tensor] = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("mm_token_type_ids", 0)):
        if key not in items[0]:
            continue
        rows = []
        for x in items:
            t = x[key]
            pad = torch.full((1, length - t.shape[1]), fill, dtype=t.dtype)
            rows.append(torch.cat([pad, t], dim=1))
        out[key] = torch.cat(rows, dim=0)
    for key in ("pixel_values", "image_grid_thw"):
        out[key] = torch.cat([x[key] for x in items], dim=0)
    return out


def to_device(batch: dict[str, torch.Tensor], device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        v = v.to(device)
        if k == "pixel_values":
            v = v.to(dtype)
        out[k] = v
    return out


def verdict_logits(model, batch: dict[str, torch.Tensor], real_ids: list[int], fake_ids: list[int]) -> list[float]:
    """logsumexp(fake verdict logits) − logsumexp(real verdict logits) per row, from one forward pass
    (only the last position's logits are computed); P(fake) is its sigmoid."""
    out = model(**batch, logits_to_keep=1, use_cache=False)
    logits = out.logits[:, -1, :].float()
    fake = torch.logsumexp(logits[:, fake_ids], dim=-1)
    real = torch.logsumexp(logits[:, real_ids], dim=-1)
    return (fake - real).double().tolist()


def verdict_probabilities(model, batch: dict[str, torch.Tensor], real_ids: list[int], fake_ids: list[int]) -> list[float]:
    """P(fake) per row (float64 sigmoid of :func:`verdict_logits`)."""
    from aligncore.branch import scores_from_logits

    return list(scores_from_logits(verdict_logits(model, batch, real_ids, fake_ids)))


def generate_rationales(model, processor, batch: dict[str, torch.Tensor], max_new_tokens: int) -> list[str]:
    # every setting that bounds the work is given here, so a checkpoint's generation_config.json (num_beams,
    # max_length...) cannot make one rationale run without end
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, num_return_sequences=1,
                         pad_token_id=processor.tokenizer.pad_token_id)
    new = out[:, batch["input_ids"].shape[1]:]
    return [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]
