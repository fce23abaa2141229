"""Perturbations (--perturb) and the format-bias audit."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from aligncore.cli import build_cli
from aligncore.errors import ConfigError
from aligncore.perturb import parse_perturb, perturbed_fingerprint


def _img(seed=0, size=(64, 48)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("spec", ["jpeg:75", "jpeg:50", "webp:80", "blur:1.0", "resize:0.5", "crop:0.8", "resize:0.5+jpeg:75"])
def test_perturbations_are_deterministic_and_change_pixels(spec):
    chain = parse_perturb(spec)
    img = _img()
    a, b = chain(img), chain(img)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.mode == "RGB"
    if a.size == img.size:
        assert not np.array_equal(np.asarray(a), np.asarray(img))


def test_perturbation_geometry_and_parsing():
    img = _img(size=(100, 50))
    assert parse_perturb("resize:0.5")(img).size == (50, 25)
    assert parse_perturb("crop:0.8")(img).size == (80, 40)
    assert parse_perturb(None) is None and parse_perturb("none") is None
    assert parse_perturb("JPEG:75.0").spec == "jpeg:75"
    for bad in ("jpeg", "jpeg:0", "jpeg:75.5", "zoom:2", "crop:1.5"):
        with pytest.raises(ConfigError):
            parse_perturb(bad)
    assert perturbed_fingerprint("fake-abc", "jpeg:75") != "fake-abc"


def test_run_with_perturb_stores_separately_and_records_it(image_folder, tmp_path):
    cli = build_cli()
    r1 = CliRunner().invoke(cli, ["run", "--branches", "fake", "--data", str(image_folder), "--out", str(tmp_path / "a"), "-q"])
    assert r1.exit_code == 0, r1.output
    r2 = CliRunner().invoke(cli, ["run", "--branches", "fake", "--data", str(image_folder), "--out", str(tmp_path / "b"),
                                  "-q", "--perturb", "blur:2.0"])
    assert r2.exit_code == 0, r2.output
    # the clean scores in the store are not reused for the perturbed run
    assert "scored 12, reused from store 0" in r2.output
    from aligncore.leaderboard import stored_rows
    from aligncore.rundir import RunDir
    from aligncore.store import ScoreStore

    clean, blurred = RunDir.open(tmp_path / "a").scores(), RunDir.open(tmp_path / "b").scores()
    assert blurred.perturb == "blur:2.0"
    assert not np.allclose(clean.scores["fake"], blurred.scores["fake"])  # blur makes images smoother
    assert (blurred.scores["fake"] >= clean.scores["fake"] - 1e-9).all()
    with ScoreStore() as st:
        perturbs = {r["perturb"] for r in stored_rows(st)}
    assert perturbs == {None, "blur:2.0"}
    r3 = CliRunner().invoke(cli, ["run", "--branches", "fake", "--data", str(image_folder), "--out", str(tmp_path / "c"),
                                  "-q", "--perturb", "blur:2.0"])
    assert "scored 0, reused from store 12" in r3.output
    bad = CliRunner().invoke(cli, ["run", "--branches", "fake", "--data", str(image_folder), "--perturb", "jpeg:101"])
    assert bad.exit_code != 0 and "jpeg" in bad.output


def test_format_audit_reports_census_and_deltas(tmp_path):
    # reals saved as JPEG, fakes as PNG: the classic format confound
    from aligncore.testing import make_image_folder

    root = make_image_folder(tmp_path / "ds", n_real=6, n_fake=6)
    for p in (root / "genA" / "0_real").glob("*.png"):
        Image.open(p).save(p.with_suffix(".jpg"), quality=70)
        p.unlink()
    r = CliRunner().invoke(build_cli(), ["audit-format", str(root), "--branches", "fake", "--reencode", "jpeg:95,blur:1.0", "-q"])
    assert r.exit_code == 0, r.output
    assert "real  formats: JPEG 6 (100%)" in r.output
    assert "fake  formats: PNG 6 (100%)" in r.output
    lines = [l for l in r.output.splitlines() if l.startswith("branch:fake")]
    assert [l.split()[1] for l in lines] == ["as-is", "jpeg:95", "blur:1.0"]
    assert "(+0.000)" in lines[0]  # as-is against itself


def test_shared_data_format_census(shared_data):
    from aligncore.audit import format_census

    census = format_census(str(shared_data))
    assert sum(census["real"].values()) > 100 and sum(census["fake"].values()) > 100
    assert census["real"] != census["fake"]  # the documented confound is visible
