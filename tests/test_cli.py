"""The `cityclf score` contract: flags, JSONL fields, recursion, failures and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import pytest
from conftest import ROOT, illustration
from PIL import Image

from cityclf_core.cli import main


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(illustration(120, 90, 1)).save(d / "a.png")
    Image.fromarray(illustration(50, 50, 2)).save(d / "sub" / "b.jpg")
    Image.fromarray(illustration(300, 100, 3)).save(d / "sub" / "deeper" / "c.webp")
    return d


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_jsonl_has_the_contract_fields(image_dir, tiny_clip_dir, score_head_path, class_head_path, capsys):
    code, out, err = run(["score", str(image_dir), "--model", str(score_head_path), "--model", str(class_head_path),
                          "--clip", str(tiny_clip_dir), "--format", "jsonl", "--no-progress"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 6  # 3 images (found recursively) x 2 heads
    assert {r["path"] for r in rows} == {str(image_dir / "a.png"), str(image_dir / "sub" / "b.jpg"),
                                         str(image_dir / "sub" / "deeper" / "c.webp")}
    score_rows = [r for r in rows if r["model"] == "TestAesthetics-v1"]
    class_rows = [r for r in rows if r["model"] == "TestCompression-v1"]
    assert all(set(r) == {"path", "model", "score"} for r in score_rows)
    assert all(set(r) == {"path", "model", "score", "probs", "label"} for r in class_rows)
    for r in class_rows:
        assert r["score"] == pytest.approx(1 - r["probs"]["Pass"], abs=1e-5)  # P(not Pass), as in the CSV
        assert list(r["probs"]) == ["Pass", "JPEG", "WEBP"]
        assert r["label"] == max(r["probs"], key=r["probs"].get)
        assert sum(r["probs"].values()) == pytest.approx(1, abs=1e-5)
    assert all(0 <= r["score"] <= 1 for r in score_rows)


def test_tiling_and_combine_flags_change_the_result(image_dir, tiny_clip_dir, class_head_path, capsys):
    base = ["score", str(image_dir / "a.png"), "-m", str(class_head_path), "--clip", str(tiny_clip_dir),
            "--format", "jsonl", "--no-progress"]
    probs = {}
    for flags in ([], ["--no-tiling"], ["--tiling"], ["--combine", "max"]):
        code, out, _ = run(base + flags, capsys)
        assert code == 0
        probs[" ".join(flags)] = json.loads(out)["probs"]
    assert probs[""] == probs["--tiling"]  # classifiers tile by default
    assert probs[""] != probs["--no-tiling"]
    assert probs["--combine max"]["Pass"] >= probs[""]["Pass"]


def test_failures_are_reported_and_the_rest_scored(image_dir, tiny_clip_dir, score_head_path, capsys):
    (image_dir / "broken.png").write_bytes(b"not a png")
    (image_dir / "sub" / "cut.jpg").write_bytes((image_dir / "sub" / "b.jpg").read_bytes()[:300])
    code, out, err = run(["score", str(image_dir), str(image_dir / "nothing-here"), "-m", str(score_head_path),
                          "--clip", str(tiny_clip_dir), "--format", "jsonl", "--no-progress"], capsys)
    assert code == 1
    assert len(out.splitlines()) == 3
    assert "broken.png: not an image" in err
    assert "cut.jpg: truncated or corrupt" in err
    assert "nothing-here: no such file or folder" in err
    assert "scored 3 image(s), 3 skipped" in err
    assert "Traceback" not in err


def test_table_and_csv(image_dir, tiny_clip_dir, score_head_path, class_head_path, capsys):
    args = ["score", str(image_dir), "-m", str(score_head_path), "-m", str(class_head_path),
            "--clip", str(tiny_clip_dir), "--no-progress"]
    code, out, _ = run(args, capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split("\t") == ["path", "TestAesthetics-v1", "TestCompression-v1"]
    assert len(lines) == 4
    code, out, _ = run(args + ["--format", "csv"], capsys)
    import csv

    rows = list(csv.reader(out.splitlines()))
    assert rows[0] == ["path", "TestAesthetics-v1:score", "TestCompression-v1:label", "TestCompression-v1:score",
                       "TestCompression-v1:Pass", "TestCompression-v1:JPEG", "TestCompression-v1:WEBP"]
    assert len(rows) == 4


def test_model_errors_exit_2_without_traceback(image_dir, tiny_clip_dir, tmp_path, capsys):
    html = tmp_path / "page.safetensors"
    html.write_text("<!DOCTYPE html><html><body>Hugging Face</body></html>")
    code, _, err = run(["score", str(image_dir), "-m", str(html), "--clip", str(tiny_clip_dir)], capsys)
    assert code == 2 and "saved web page" in err and "Traceback" not in err
    code, _, err = run(["score", str(image_dir), "-m", "NoSuchModel", "--clip", str(tiny_clip_dir),
                        "--models-dir", str(tmp_path)], capsys)
    assert code == 2 and "not a known release" in err


def test_offline_catalogue_model_says_where_to_get_it(image_dir, tmp_path, capsys):
    code, _, err = run(["score", str(image_dir), "-m", "CCAnime-Compression-v1.5", "--offline",
                        "--models-dir", str(tmp_path)], capsys)
    assert code == 2
    assert "downloads are off" in err and "huggingface.co/city96/AnimeClassifiers" in err


def test_console_script_module_runs(image_dir, tiny_clip_dir, score_head_path):
    proc = subprocess.run([sys.executable, "-m", "cityclf_core", "score", str(image_dir), "-m", str(score_head_path),
                           "--clip", str(tiny_clip_dir), "--format", "jsonl"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal


def test_demo_builds_and_scores_its_samples(tmp_path, capsys):
    code, out, err = run(["demo", "--dir", str(tmp_path / "demo"), "--no-progress"], capsys)
    assert code == 0, err
    table = [line.split("\t") for line in out.splitlines() if "\t" in line]
    assert table[0] == ["path", "Demo-Aesthetics-v0", "Demo-ChromaticAberration-v0", "Demo-Compression-v0"]
    assert len(table) == 7 and all(Path(row[0]).parent.name == "images" and len(row) == 4 for row in table[1:])
