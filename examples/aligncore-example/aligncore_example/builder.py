"""A supervision-set builder: source images -> a labelled training set (manifest + images), resumably."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from aligncore import BuilderConfig, SupervisionBuilder, WorkItem


class PosterizeConfig(BuilderConfig):
    bits: int = Field(3, ge=1, le=7, description="Bits kept per channel in the 'fake' copy (fewer: stronger banding).")


class PosterizePairs(SupervisionBuilder):
    """Pairs each real image with a posterized copy: a stand-in for a generator's colour banding."""

    name = "posterize-pairs"
    help = "Example plugin: real image + posterized copy (colour banding), one pair per source image."
    config_class = PosterizeConfig
    config: PosterizeConfig

    def plan(self, sources):
        """Stable, unique keys: a re-run (after a kill) skips the items already journalled."""
        from aligncore.data import load_dataset

        items = []
        for src in sources:
            for r in load_dataset(src).records:
                if r.label != 1:  # real (or unlabelled) images are the sources
                    items.append(WorkItem(f"{Path(src).name}/{Path(r.path).name}", Path(r.path)))
        return sorted(items, key=lambda it: it.key)

    def process(self, item, out_dir):
        """One item -> manifest rows; write_image saves both classes with the set's format and settings."""
        from PIL import ImageOps

        from aligncore.data import load_image

        img = load_image(item.source)
        stem = item.key.replace("/", "_").rsplit(".", 1)[0]
        rows = []
        for label, im, sub in ((0, img, "real"), (1, ImageOps.posterize(img, self.config.bits), "fake")):
            rows.append({**self.write_image(im, f"{sub}/{stem}"), "label": label, "pair_id": stem,
                         "generator": None if label == 0 else self.name})
        return rows
