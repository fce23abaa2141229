"""Every error names its input: hostile run folders, configs, manifests, checkpoints and stores give a
one-paragraph message naming the file or field, never the generic ``Type: message`` fallback.

Each case builds one broken input (the way a stranger's folder or a careless edit would look) and runs
the command that reads it. The fallback of ``alignctl`` for an unexpected exception prints
``Error: <Type>: ... (run again with --debug ...)``; none of these may reach it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from aligncore.cli import build_cli
from aligncore.testing import make_image_folder

GENERIC = "run again with --debug"


def alignctl(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A data set, a finished run on it and a trained tiny npr checkpoint, built once for every case."""
    root = tmp_path_factory.mktemp("errors")
    ds = make_image_folder(root / "ds", n_real=6, n_fake=6, generators=("g1", "g2"))
    store = root / "store.sqlite"
    res = alignctl("run", "--branches", "fake", "--data", str(ds), "--out", str(root / "run"), "--store", str(store), "-q")
    assert res.exit_code == 0, res.output
    res = alignctl("train", "npr", "--set", str(ds), "--out", str(root / "ckpt"), "--preset", "tiny", "-q",
                   "-o", "epochs=1", "-o", "batch_size=4", "-o", "val_fraction=0.25")
    assert res.exit_code == 0, res.output
    return root


def _copy_run(base: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(base / "run", dest)
    return dest


def _edit_run(run: Path, name: str, data: bytes) -> None:
    """Replace one file of a run and re-sign run.json, as a self-consistent folder from elsewhere would be."""
    if name != "run.json":
        info = json.loads((run / "run.json").read_text())
        info["files"][name] = hashlib.sha256(data).hexdigest()
        (run / "run.json").write_text(json.dumps(info))
    (run / name).write_bytes(data)


def _check(res, *needles: str) -> None:
    out = res.output
    assert res.exit_code != 0, out
    assert GENERIC not in out and "Traceback" not in out, f"generic error:\n{out}"
    for n in needles:
        assert n in out, f"{n!r} not named in:\n{out}"


RUN_CASES = {
    "run.json not JSON": ("run.json", b"{nope", "run.json"),
    "run.json a list": ("run.json", b"[1, 2]", "run.json"),
    "config not a mapping": ("run.json", None, "run.json"),
    "predictions not UTF-8": ("predictions.csv", b"\xff\xfe\x00bad", "predictions.csv"),
    "predictions without columns": ("predictions.csv", b"a,b\n1,2\n", "predictions.csv"),
    "predictions with a bad score": ("predictions.csv", None, "predictions.csv"),
    "predictions with a bad label": ("predictions.csv", None, "predictions.csv"),
    "metrics not JSON": ("metrics.json", b"\x00\x01", "metrics.json"),
    "metrics a list": ("metrics.json", b"[]", "metrics.json"),
    "skipped without columns": ("skipped.csv", b"x\n1\n", "skipped.csv"),
}


READERS = ("fuse", "ablate", "report")
#: (case, command): every reader of a run folder, for each file it reads (only report reads metrics.json)
RUN_PARAMS = [(c, cmd) for c in sorted(RUN_CASES) for cmd in READERS if not c.startswith("metrics") or cmd == "report"]


@pytest.mark.parametrize("case, command", RUN_PARAMS)
def test_broken_run_folders_name_the_file(base, tmp_path, case, command):
    name, data, needle = RUN_CASES[case]
    run = _copy_run(base, tmp_path / "r")
    if data is None:
        if case == "config not a mapping":
            info = json.loads((run / "run.json").read_text())
            info["config"] = ["x"]
            data = json.dumps(info).encode()
        else:
            text = (run / "predictions.csv").read_text().splitlines()
            head = text[0].split(",")
            col = head.index("score_fake" if "score" in case else "label")
            row = text[1].split(",")
            row[col] = "abc"
            data = ("\n".join([text[0], ",".join(row), *text[2:]]) + "\n").encode()
    _edit_run(run, name, data)
    args = {"fuse": ["fuse", str(run), "--fusion", "max"], "ablate": ["ablate", str(run)], "report": ["report", str(run)]}
    _check(alignctl(*args[command]), needle)


@pytest.mark.parametrize("content, needle", [
    (b"\xff\xfe not utf-8", "c.yaml"),
    (b"branches: [fake]\ndata: DS\nworkers: abc\n", "workers"),
    (b"branches: 5\ndata: DS\n", "branches"),
    (b"branches: [fake]\ndata: DS\nbranch_options: [1]\n", "branch_options"),
    (b"branches: [fake]\ndata: DS\nperturb: 'resize:4+resize:4+resize:4'\n", "perturb"),
])
def test_broken_configs_name_the_file_or_field(base, tmp_path, content, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(content.replace(b"DS", str(base / "ds").encode()))
    _check(alignctl("run", "--config", str(cfg), "--out", str(tmp_path / "o"), "-q"), needle)


@pytest.mark.parametrize("content", [b"{nope", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000])
def test_broken_fusion_state_files_name_the_file(base, tmp_path, content):
    st = tmp_path / "state.json"
    st.write_bytes(content)
    _check(alignctl("fuse", str(_copy_run(base, tmp_path / "r")), "--fusion", "learned", "--fusion-state", str(st)),
           "state.json")


def _ckpt(base: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(base / "ckpt" / "best", tmp_path / "ck")
    return tmp_path / "ck"


@pytest.mark.parametrize("case", ["branch.json not JSON", "branch.json width too large", "branch.json width text",
                                  "weights of another shape", "weights not safetensors", "weights empty"])
def test_broken_checkpoints_name_the_checkpoint(base, tmp_path, case):
    ck = _ckpt(base, tmp_path)
    bj = json.loads((ck / "branch.json").read_text())
    if case == "branch.json not JSON":
        (ck / "branch.json").write_text("{")
    elif case == "branch.json width too large":
        bj["architecture"]["width"] = 10**9
        (ck / "branch.json").write_text(json.dumps(bj))
    elif case == "branch.json width text":
        bj["architecture"]["width"] = "wide"
        (ck / "branch.json").write_text(json.dumps(bj))
    elif case == "weights of another shape":
        from aligncore.safeio import save_state_dict
        import torch

        save_state_dict({"stem.0.weight": torch.zeros(3)}, ck / "model.safetensors")
    elif case == "weights not safetensors":
        (ck / "model.safetensors").write_bytes(b"garbage" * 10)
    else:
        (ck / "model.safetensors").write_bytes(b"")
    res = alignctl("run", "--branches", "npr", "--checkpoint", str(ck), "--data", str(base / "ds"),
                   "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s.sqlite"), "-q")
    _check(res, str(ck))


def test_a_store_of_another_schema_names_the_store(base, tmp_path):
    store = tmp_path / "other.sqlite"
    con = sqlite3.connect(store)
    con.execute("CREATE TABLE scores (x TEXT)")
    con.execute("CREATE TABLE runs (y TEXT)")
    con.commit()
    con.close()
    res = alignctl("run", "--branches", "fake", "--data", str(base / "ds"), "--out", str(tmp_path / "o"),
                   "--store", str(store), "-q")
    _check(res, str(store))


def test_a_leaderboard_row_with_broken_json_names_the_store(base, tmp_path):
    import shutil

    store = tmp_path / "s.sqlite"
    shutil.copyfile(base / "store.sqlite", store)
    con = sqlite3.connect(store)
    con.execute("UPDATE leaderboard SET checkpoints = '{nope', fusion_config = '[1'")
    con.commit()
    con.close()
    res = alignctl("leaderboard", "--store", str(store))
    assert res.exit_code == 0 or (GENERIC not in res.output and str(store) in res.output), res.output


@pytest.mark.parametrize("store", ["/dev/null", "/dev/full"])
def test_device_stores_are_refused_and_leave_nothing_in_dev(base, tmp_path, store):
    before = {p.name for p in Path("/dev").iterdir()}
    _check(alignctl("leaderboard", "--store", store), store, "not a regular file", "character device")
    _check(alignctl("run", "--branches", "fake", "--data", str(base / "ds"), "--out", str(tmp_path / "o"),
                    "--store", store, "-q"), store)
    assert {p.name for p in Path("/dev").iterdir()} == before, "journal files were created in /dev"


def test_output_files_in_missing_folders_name_the_file(base, tmp_path):
    out = tmp_path / "no" / "such" / "dir" / "board.md"
    res = alignctl("leaderboard", "--store", str(base / "store.sqlite"), "--format", "md", "--out", str(out))
    assert res.exit_code == 0 or (GENERIC not in res.output and str(out) in res.output), res.output
