"""Datasets as tables: parquet files, datasets.save_to_disk folders and Hub datasets (``hf:OWNER/NAME``).

A table's images get what files get: the same hardened decoder (on the bytes), the same content
hash (the sha256 of the bytes, equal to the file's) and so the same store keys and scores.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from aligncore.cli import build_cli
from aligncore.data import load_dataset
from aligncore.errors import ConfigError, DataError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _run(*args):
    return CliRunner().invoke(build_cli(), ["run", "-q", "--device", "cpu", *args])


def _rows(run_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "predictions.csv")))


def write_parquet(records, path: Path, row_group_size: int = 6, image="image", label="label", labels=None) -> Path:
    table = pa.table({
        image: [Path(r.path).read_bytes() for r in records],
        label: labels if labels is not None else [r.label for r in records],
        "generator": [r.generator for r in records],
        "note": [f"n{i}" for i in range(len(records))],
    })
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture
def twenty(tmp_path):
    from aligncore.testing import make_image_folder

    return make_image_folder(tmp_path / "files", n_real=10, n_fake=10, generators=("genA", "genB"))


def _same_scores_as_files(files: Path, table: Path, tmp_path: Path, branches: str, *extra):
    a = _run("--branches", branches, "--data", str(files), "--out", str(tmp_path / "as-files"),
             "--store", str(tmp_path / "files.sqlite"), *extra)
    assert a.exit_code == 0, a.output
    b = _run("--branches", branches, "--data", str(table), "--out", str(tmp_path / "as-table"),
             "--store", str(tmp_path / "table.sqlite"), *extra)
    assert b.exit_code == 0, b.output
    fa = {r["sha256"]: r for r in _rows(tmp_path / "as-files")}
    fb = {r["sha256"]: r for r in _rows(tmp_path / "as-table")}
    assert len(fa) == len(fb) == 20 and set(fa) == set(fb)  # the same content hashes
    for h, r in fa.items():
        for col in [c for c in r if c.startswith("score_")] + ["label", "generator", "fused_score"]:
            assert fb[h][col] == r[col], (col, h)
    assert all(r["path"].startswith(table.name + "#") for r in fb.values())
    # the store keys are the same: scoring the table into the files' store reuses every score
    c = _run("--branches", branches, "--data", str(table), "--out", str(tmp_path / "again"),
             "--store", str(tmp_path / "files.sqlite"), *extra)
    assert c.exit_code == 0 and "scored 0, reused from store 20" in c.output, c.output


def test_parquet_with_image_bytes_scores_like_the_files(twenty, tmp_path):
    table = write_parquet(load_dataset(twenty).records, tmp_path / "x.parquet")
    _same_scores_as_files(twenty, table, tmp_path, "fake,npr", "--preset", "tiny")


def test_shared_images_in_parquet_score_like_the_files(shared_data, tmp_path):
    """20 of the shared real and generated images (the smallest of each class), as files and as one parquet."""
    rows = list(csv.DictReader(open(shared_data / "MANIFEST.csv")))
    pick = []
    for label in ("real", "fake"):
        of = sorted((r for r in rows if r["label"] == label), key=lambda r: (int(r["width"]) * int(r["height"]), r["file"]))
        pick += of[:10]
    files = tmp_path / "files"
    for r in pick:
        dest = files / r["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / r["file"], dest)
    table = write_parquet(load_dataset(files).records, tmp_path / "shared20.parquet")
    _same_scores_as_files(files, table, tmp_path, "fake,npr", "--preset", "tiny")


def test_hugging_face_image_structs_class_labels_saved_datasets_and_hub_splits(twenty, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    recs = load_dataset(twenty).records
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["real", "fake"]),
                               "generator": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": Path(r.path).read_bytes(), "path": Path(r.path).name}
                                               for r in recs],
                                     "label": [r.label for r in recs], "generator": [r.generator for r in recs]},
                                    features=feats)
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds.select(range(4)), "test": ds}).save_to_disk(str(tmp_path / "dict"))
    hub = tmp_path / "hub"
    snap = hub / "datasets--o--imgs" / "snapshots" / ("a" * 40)
    (snap / "data").mkdir(parents=True)
    ds.to_parquet(str(snap / "data" / "test-00000-of-00001.parquet"))
    ds.select(range(4)).to_parquet(str(snap / "data" / "train-00000-of-00001.parquet"))
    (hub / "datasets--o--imgs" / "refs").mkdir()
    (hub / "datasets--o--imgs" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    want = {r.path: r.label for r in recs}
    import hashlib

    sha = {hashlib.sha256(Path(r.path).read_bytes()).hexdigest(): r.label for r in recs}
    for source, opts, layout in ((tmp_path / "saved", None, "saved-dataset"),
                                 (tmp_path / "dict", {"split": "test"}, "saved-dataset"),
                                 ("hf:o/imgs:test", None, "hub-parquet")):
        got = load_dataset(source, options=opts)
        assert got.layout == layout and len(got) == 20
        assert [r.label for r in got.records] == [r.label for r in recs]  # class names mapped to 0/1
        from aligncore.data import record_sha256

        assert {record_sha256(r): r.label for r in got.records} == sha
    assert load_dataset("hf:o/imgs:test").name == "imgs:test"
    with pytest.raises(DataError, match="splits test, train: choose one"):
        load_dataset("hf:o/imgs")
    with pytest.raises(DataError, match="no split 'dev'"):
        load_dataset("hf:o/imgs:dev")
    with pytest.raises(DataError, match="splits train, test: choose one"):
        load_dataset(tmp_path / "dict")
    from aligncore.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="Dataset 'o/none'.*--repo-type dataset"):
        load_dataset("hf:o/none")
    r = _run("--branches", "fake", "--data", "hf:o/imgs:test", "--out", str(tmp_path / "r"))
    assert r.exit_code == 0 and "images 20 (real 10, fake 10)" in r.output, r.output
    assert want  # (the files' labels were the reference above)


def test_columns_and_label_values_are_configurable_with_clear_errors(twenty, tmp_path):
    recs = load_dataset(twenty).records
    words = ["human" if r.label == 0 else "ai" for r in recs]
    table = write_parquet(recs, tmp_path / "t.parquet", image="pixels", label="kind", labels=words)
    with pytest.raises(DataError, match=r"no image column found .*columns: pixels, kind, generator, note.*image_column"):
        load_dataset(table)
    with pytest.raises(DataError, match=r"no column 'pixel' for the images\. Did you mean 'pixels'"):
        load_dataset(table, options={"image_column": "pixel"})
    with pytest.raises(ConfigError, match="label_colum.*did you mean 'label_column'"):
        load_dataset(table, options={"image_column": "pixels", "label_colum": "kind"})
    unlabelled = load_dataset(table, options={"image_column": "pixels"})
    assert {r.label for r in unlabelled.records} == {None}  # no label column named or found: unlabelled
    with pytest.raises(DataError, match=r"not real/fake labels: 'human' \(rows 0, 1, 2, \.\.\.\)\. Map them with --data-option labels="):
        load_dataset(table, options={"image_column": "pixels", "label_column": "kind"})
    ok = load_dataset(table, options={"image_column": "pixels", "label_column": "kind", "labels": {"ai": 1, "human": 0}})
    assert [r.label for r in ok.records] == [r.label for r in recs]
    assert ok.records[3].extra == {"note": "n3", "row": "3"}
    with pytest.raises(ConfigError, match="must map to 0 \\(real\\) or 1"):
        load_dataset(table, options={"image_column": "pixels", "labels": {"ai": 2}})
    r = _run("--branches", "fake", "--data", str(table), "--data-option", "image_column=pixels",
             "--data-option", "label_column=kind", "--data-option", "labels={ai: 1, human: 0}", "--out", str(tmp_path / "r"))
    assert r.exit_code == 0 and "images 20 (real 10, fake 10)" in r.output, r.output
    # the options are part of the run's config, so RUN/config.yaml reads the table the same way
    import yaml

    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["data_options"]["labels"] == {"ai": 1, "human": 0}
    with pytest.raises(DataError, match="apply to parquet, Arrow and hf: datasets only"):
        load_dataset(twenty, options={"image_column": "pixels"})


def test_bytes_go_through_the_loader_guards_and_paths_stay_inside(tmp_path, monkeypatch):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((20, 24, 3), 128, np.uint8)).save(buf, "PNG")
    good = buf.getvalue()
    table = pa.table({"image": [good, good[:40], b"", b"x" * 5000, good + b"\x00"],
                      "label": [0, 1, 1, 0, 1]})
    pq.write_table(table, tmp_path / "mixed.parquet")
    import aligncore.data.images as images

    monkeypatch.setattr(images, "MAX_FILE_BYTES", 4000)
    r = _run("--branches", "fake", "--data", str(tmp_path / "mixed.parquet"), "--out", str(tmp_path / "r"))
    assert r.exit_code == 0, r.output
    skipped = {row["path"]: row["reason"] for row in csv.DictReader(open(tmp_path / "r" / "skipped.csv"))}
    assert set(skipped) == {"mixed.parquet#1", "mixed.parquet#2", "mixed.parquet#3"}
    from aligncore.data import ImageLoadError, load_image

    with pytest.raises(ImageLoadError) as the_file:  # the same bytes as a file: the same reason
        (tmp_path / "cut.png").write_bytes(good[:40])
        load_image(tmp_path / "cut.png")
    assert skipped["mixed.parquet#1"] == the_file.value.reason
    assert "empty image cell" in skipped["mixed.parquet#2"] and "above the limit of 4000" in skipped["mixed.parquet#3"]
    assert [row["path"] for row in _rows(tmp_path / "r")] == ["mixed.parquet#0", "mixed.parquet#4"]
    # a column of paths reads files, relative to the table, never outside it unless allowed
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(good)
    pq.write_table(pa.table({"file_name": ["imgs/a.png"], "label": ["real"]}), tmp_path / "paths.parquet")
    recs = load_dataset(tmp_path / "paths.parquet").records
    assert recs[0].is_file and recs[0].path == str(tmp_path / "imgs" / "a.png") and recs[0].label == 0
    sub = tmp_path / "sub"
    sub.mkdir()
    pq.write_table(pa.table({"file_name": ["../imgs/a.png"], "label": [0]}), sub / "out.parquet")
    with pytest.raises(DataError, match="points outside"):
        load_dataset(sub / "out.parquet")
    assert load_dataset(sub / "out.parquet", allow_outside=True).records[0].is_file


def test_table_images_are_streamed_not_materialised(twenty, tmp_path, monkeypatch):
    """Hashing then decoding a 20-row table with 4 row groups opens one stream per pass, never a whole table."""
    from aligncore.data import tables
    from aligncore.data.datasets import hash_records

    table = write_parquet(load_dataset(twenty).records, tmp_path / "x.parquet", row_group_size=5)
    opened, rows_read = [], []
    real_iter = pq.ParquetFile.iter_batches

    def counting(self, *a, **k):
        opened.append(k.get("row_groups"))
        for batch in real_iter(self, *a, **k):
            rows_read.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("the whole table was read"))
    tables._cursors.clear()
    recs = load_dataset(table).records
    opened.clear()
    rows_read.clear()
    hashes, bad = hash_records(recs)
    assert not bad and len(set(hashes)) == 20
    assert len(opened) == 1 and max(rows_read) <= tables.BATCH_ROWS and sum(rows_read) == 20
    # a jump to a later row group restarts there, without reading the groups in between
    opened.clear()
    rows_read.clear()
    tables._cursors.clear()
    from aligncore.data.sources import record_bytes

    record_bytes(recs[17])
    assert opened == [[3]] and sum(rows_read) <= 5


def test_a_run_with_loader_workers_reads_the_table_in_each_worker(twenty, tmp_path):
    table = write_parquet(load_dataset(twenty).records, tmp_path / "x.parquet")
    a = _run("--branches", "fake", "--data", str(table), "--out", str(tmp_path / "a"), "--store", str(tmp_path / "a.sqlite"))
    b = _run("--branches", "fake", "--data", str(table), "--out", str(tmp_path / "b"), "--store", str(tmp_path / "b.sqlite"),
             "--workers", "2")
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    assert [r["score_fake"] for r in _rows(tmp_path / "a")] == [r["score_fake"] for r in _rows(tmp_path / "b")]
