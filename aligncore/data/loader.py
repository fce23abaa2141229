"""The run's image loader: each image is read and decoded once, perturbed once, and preprocessed
for every branch that still needs it, in DataLoader workers.

A run with several branches therefore costs one decode per image, not one per branch. The
loader knows nothing about any branch: it is given one preprocessing function per branch
(an index into that list names the branch) and never touches a model. The decoded image is
handed to every preprocessing function as it is (no copy); each cuts what it needs from it.

With ``profile`` the loader measures its stages where they run (each worker its own items) and
sends the sums back with each batch (:class:`LoadedBatch`), for ``alignctl run --profile``.
"""

from __future__ import annotations

import os
import time
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


#: what the loader yields per image: (key, {preprocessor: input}, {preprocessor: error}); a file that
#: cannot be read or decoded has its reason under :data:`UNREADABLE` too (a fault of the file, not of a branch)
Loaded = tuple[int, dict[int, Any], dict[int, str]]
UNREADABLE = -1


class LoadedBatch(list):
    """A list of :data:`Loaded`, as one DataLoader batch.

    ``timings`` (with profiling): what the loader measured for it, ``{"pid", "stages": {name: (wall s,
    CPU s, calls)}, "counts": {name: n}}`` (a stage named ``preprocess:I`` is preprocessor I's).
    ``stacked`` (in transit from a worker): {preprocessor: (tensor, positions)}: the same-shaped tensor
    inputs of one preprocessor travel as one tensor in shared memory, not one segment per image;
    :func:`load_images` hands each image its row again.
    """

    timings: dict[str, Any] | None = None
    stacked: dict[int, tuple[Any, list[int]]] | None = None


class _Timer:
    """Wall and CPU time of the stages of the items one process loads (only used when profiling)."""

    def __init__(self) -> None:
        self.stages: dict[str, list[float]] = {}
        self.counts: dict[str, int] = {}
        self._t = (0.0, 0.0)

    def start(self) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def stop(self, name: str) -> None:
        wall, cpu = time.perf_counter() - self._t[0], time.process_time() - self._t[1]
        s = self.stages.setdefault(name, [0.0, 0.0, 0])
        s[0] += wall
        s[1] += cpu
        s[2] += 1
        self.start()

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


class DecodeOnce:
    """Map-style dataset: item → :data:`Loaded`; a batch of indices → :class:`LoadedBatch`.
    Never raises: every failure is that image's error."""

    def __init__(self, items: Sequence[LoadItem], preprocess: Sequence[Callable], perturb: Callable | None = None,
                 profile: bool = False):
        self.items = list(items)
        self.preprocess = list(preprocess)
        self.perturb = perturb
        self.profile = profile

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Loaded:
        return self.load(self.items[i], None)

    def __getitems__(self, indices: list[int]) -> LoadedBatch:
        from torch.utils.data import get_worker_info

        timer = _Timer() if self.profile else None
        out = LoadedBatch(self.load(self.items[i], timer) for i in indices)
        if timer is not None:
            out.timings = {"pid": os.getpid(), "stages": {k: tuple(v) for k, v in timer.stages.items()},
                           "counts": dict(timer.counts)}
        if get_worker_info() is not None:
            _stack_for_transit(out)
        return out

    def load(self, it: LoadItem, timer: _Timer | None) -> Loaded:
        if timer is not None:
            timer.count("files_read")
            timer.start()
        try:
            # a file decodes straight from disk, as before; a table row through its source's bytes
            img = load_image(it.path) if it.source is None else load_record_image(it.path, it.source)
        except ImageLoadError as exc:
            if timer is not None:
                timer.stop("decode")
                timer.count("decode_failed")
            return it.key, {}, {UNREADABLE: exc.reason, **{b: exc.reason for b in it.needs}}
        if timer is not None:
            timer.stop("decode")
            timer.count("images_decoded")
        if self.perturb is not None:
            try:
                img = self.perturb(img)  # once, so every branch sees the same perturbed pixels
            except Exception as exc:
                return it.key, {}, {b: f"perturbation failed: {type(exc).__name__}: {exc}" for b in it.needs}
            if timer is not None:
                timer.stop("perturb")
        inputs: dict[int, Any] = {}
        errors: dict[int, str] = {}
        for b in it.needs:
            try:
                inputs[b] = self.preprocess[b](img)
            except Exception as exc:
                errors[b] = f"preprocessing failed: {type(exc).__name__}: {exc}"
            if timer is not None:
                timer.stop(f"preprocess:{b}")
        return it.key, inputs, errors


def _stack_for_transit(batch: LoadedBatch) -> None:
    """In a worker: move each preprocessor's same-shaped CPU tensors into one tensor allocated in shared
    memory (one copy, as sending them one by one would make; one shared segment instead of one per image)."""
    import torch

    groups: dict[int, list[int]] = {}
    for pos, (_, inputs, _) in enumerate(batch):
        for b, x in inputs.items():
            if isinstance(x, torch.Tensor) and x.device.type == "cpu":
                groups.setdefault(b, []).append(pos)
    stacked = {}
    for b, positions in groups.items():
        xs = [batch[p][1][b] for p in positions]
        if len(xs) < 2 or len({(tuple(x.shape), x.dtype) for x in xs}) != 1:
            continue
        # as torch's default collate does in a worker: allocate the batch in shared memory, then stack into it
        storage = xs[0]._typed_storage()._new_shared(len(xs) * xs[0].numel(), device="cpu")
        out = xs[0].new(storage).resize_(len(xs), *xs[0].shape)
        torch.stack(xs, out=out)
        for p in positions:
            del batch[p][1][b]
        stacked[b] = (out, positions)
    batch.stacked = stacked or None


def _unstack(batch: LoadedBatch) -> LoadedBatch:
    for b, (t, positions) in (batch.stacked or {}).items():
        for row, p in enumerate(positions):
            batch[p][1][b] = t[row]
    batch.stacked = None
    return batch


def _as_list(items: LoadedBatch) -> LoadedBatch:
    return items  # branches batch their own inputs (each at its own batch size)


def load_images(items: Sequence[LoadItem], preprocess: Sequence[Callable], chunk: int, workers: int = 0,
                perturb: Callable | None = None, profile: bool = False) -> Iterator[LoadedBatch]:
    """Yield lists of up to ``chunk`` loaded images, in ``items`` order, through a torch DataLoader.

    Inputs are not page-locked here (that would copy every image's inputs once more): a branch that
    scores on a GPU collates its batch into page-locked memory itself (pixel branches do). With
    ``profile`` each list carries its ``timings``.
    """
    from torch.utils.data import DataLoader

    loader = DataLoader(
        DecodeOnce(items, preprocess, perturb, profile),  # type: ignore[arg-type]
        batch_size=max(1, chunk),
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
        persistent_workers=False,
    )
    for batch in loader:
        yield _unstack(batch)


def size_bucket(path: str, source: ImageSource | None = None) -> tuple[float, int]:
    """(aspect ratio to 0.1, pixel count) from the image header only, so a batch holds like-sized images.

    Branches whose inputs vary in length with the image (a VLM's visual tokens) set
    ``bucket_by_size`` and pad far less; scores do not depend on the order.
    """
    import io

    from PIL import Image

    from ..files import open_regular
    from .images import MAX_FILE_BYTES

    try:  # never blocks on a FIFO swapped in since hashing: only a regular file is opened
        with (open_regular(path, MAX_FILE_BYTES) if source is None else io.BytesIO(source.read_bytes())) as f, \
                Image.open(f) as im:
            w, h = im.size
    except Exception:  # unreadable here: the loader reports it in its turn
        return (0.0, 0)
    return (round(w / max(h, 1), 1), w * h)
