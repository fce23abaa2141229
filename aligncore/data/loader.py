"""The run's image loader: each image is read and decoded once, perturbed once, and preprocessed
for every branch that still needs it, in DataLoader workers.

A run with several branches therefore costs one decode per image, not one per branch. The
loader knows nothing about any branch: it is given one preprocessing function per branch
(an index into that list names the branch) and never touches a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from .images import ImageLoadError, load_image
from .sources import ImageSource, load_record_image


@dataclass(frozen=True)
class LoadItem:
    """One image to decode: ``key`` is the caller's name for it, ``needs`` the preprocessors to run.

    The image is the file at ``path``, or, with a ``source`` (a table row), that source's bytes.
    """

    key: int
    path: str
    needs: tuple[int, ...]
    source: ImageSource | None = None


#: what the loader yields per image: (key, {preprocessor: input}, {preprocessor: error})
Loaded = tuple[int, dict[int, Any], dict[int, str]]


class DecodeOnce:
    """Map-style dataset: item → :data:`Loaded`. Never raises: every failure is that image's error."""

    def __init__(self, items: Sequence[LoadItem], preprocess: Sequence[Callable], perturb: Callable | None = None):
        self.items = list(items)
        self.preprocess = list(preprocess)
        self.perturb = perturb

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Loaded:
        it = self.items[i]
        try:
            # a file decodes straight from disk, as before; a table row through its source's bytes
            img = load_image(it.path) if it.source is None else load_record_image(it.path, it.source)
        except ImageLoadError as exc:
            return it.key, {}, {b: exc.reason for b in it.needs}
        if self.perturb is not None:
            try:
                img = self.perturb(img)  # once, so every branch sees the same perturbed pixels
            except Exception as exc:
                return it.key, {}, {b: f"perturbation failed: {type(exc).__name__}: {exc}" for b in it.needs}
        inputs: dict[int, Any] = {}
        errors: dict[int, str] = {}
        for b in it.needs:
            try:
                inputs[b] = self.preprocess[b](img)
            except Exception as exc:
                errors[b] = f"preprocessing failed: {type(exc).__name__}: {exc}"
        return it.key, inputs, errors


def _as_list(items: list[Loaded]) -> list[Loaded]:
    return items  # branches batch their own inputs (each at its own batch size)


def load_images(items: Sequence[LoadItem], preprocess: Sequence[Callable], chunk: int, workers: int = 0,
                pin: bool = False, perturb: Callable | None = None) -> Iterator[list[Loaded]]:
    """Yield lists of up to ``chunk`` loaded images, in ``items`` order, through a torch DataLoader."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        DecodeOnce(items, preprocess, perturb),  # type: ignore[arg-type]
        batch_size=max(1, chunk),
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
        pin_memory=pin,
        persistent_workers=False,
    )
    yield from loader


def size_bucket(path: str, source: ImageSource | None = None) -> tuple[float, int]:
    """(aspect ratio to 0.1, pixel count) from the image header only, so a batch holds like-sized images.

    Branches whose inputs vary in length with the image (a VLM's visual tokens) set
    ``bucket_by_size`` and pad far less; scores do not depend on the order.
    """
    import io

    from PIL import Image

    try:
        with Image.open(path if source is None else io.BytesIO(source.read_bytes())) as im:
            w, h = im.size
    except Exception:  # unreadable here: the loader reports it in its turn
        return (0.0, 0)
    return (round(w / max(h, 1), 1), w * h)
