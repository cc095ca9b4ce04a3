"""Bad CLIPs are clear errors; NaN and infinity are an image's error, never a number in the output."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
from conftest import illustration
from PIL import Image
from safetensors.torch import load_file, save_file

from cityclf_core.cli import main


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def strict_json_lines(text: str) -> list[dict]:
    """Parse JSONL as a strict reader would: NaN and Infinity are not JSON."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(illustration(40 + i, 30, i)).save(folder / f"im{i}.png")
    return folder


@pytest.mark.parametrize("damage", ["config type", "truncated weights"])
def test_a_bad_clip_folder_is_a_clear_error(tmp_path, tiny_clip_dir, images, damage, capsys):
    clip = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, clip)
    if damage == "config type":
        config = json.loads((clip / "config.json").read_text())
        config["hidden_size"] = "big"
        (clip / "config.json").write_text(json.dumps(config))
    else:
        data = (clip / "model.safetensors").read_bytes()
        (clip / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = run(["embed", str(images), "--store", str(tmp_path / "s.db"), "--clip", str(clip),
                        "--no-progress"], capsys)
    assert code == 2 and f"CLIP folder {clip} could not be loaded" in err and "Traceback" not in err


@pytest.fixture
def nan_clip(tmp_path, tiny_clip_dir):
    clip = tmp_path / "nan-clip"
    shutil.copytree(tiny_clip_dir, clip)
    weights = load_file(clip / "model.safetensors")
    name = next(k for k in weights if "post_layernorm.weight" in k)
    weights[name][0] = float("nan")
    save_file(weights, clip / "model.safetensors", metadata={"format": "pt"})
    return clip


def test_nan_from_a_clip_is_an_error_for_each_image_and_json_stays_valid(tmp_path, nan_clip, images,
                                                                         class_head_path, score_head_path, capsys):
    heads = ["-m", str(class_head_path), "-m", str(score_head_path), "--clip", str(nan_clip), "--no-progress"]
    code, out, err = run(["score", str(images), "--format", "jsonl", *heads], capsys)
    assert code == 1 and strict_json_lines(out) == [] and err.count("NaN or infinite") == 3
    db = tmp_path / "s.db"
    code, out, err = run(["score", str(images), "--store", str(db), "--format", "jsonl", *heads], capsys)
    assert code == 1 and strict_json_lines(out) == [] and "Traceback" not in err and "NaN or infinite" in err
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 0  # nothing NaN was kept
        assert con.execute("SELECT COUNT(*) FROM files WHERE status = 'failed'").fetchone()[0] == 3


def test_a_bit_rotted_store_gives_errors_for_those_images_and_valid_json(tmp_path, tiny_clip_dir, images,
                                                                         score_head_path, class_head_path, capsys):
    db = tmp_path / "s.db"
    heads = ["-m", str(score_head_path), "-m", str(class_head_path), "--clip", str(tiny_clip_dir), "--no-progress"]
    assert run(["score", str(images), "--store", str(db), *heads], capsys)[0] == 0
    with sqlite3.connect(db) as con:  # one file's embeddings and one stored score rot
        content = con.execute("SELECT content FROM files WHERE path LIKE '%im1.png'").fetchone()[0]
        for policy, views, data in con.execute("SELECT policy, views, data FROM embeddings WHERE content = ?",
                                               (content,)).fetchall():
            rotten = np.frombuffer(data, dtype=np.float32).copy()
            rotten[::7] = np.nan
            con.execute("UPDATE embeddings SET data = ? WHERE content = ? AND policy = ?",
                        (rotten.tobytes(), content, policy))
        con.execute("UPDATE scores SET score = 1e999 WHERE path LIKE '%im2.png'")  # +inf
    code, out, err = run(["score", "--store", str(db), "--format", "jsonl", *heads], capsys)
    rows = strict_json_lines(out)
    assert code == 1 and {r["path"].rsplit("/", 1)[-1] for r in rows} == {"im0.png", "im2.png"}
    assert "im1.png: its stored embedding holds NaN" in err and "Traceback" not in err
    with sqlite3.connect(db) as con:  # damage the saved score again, after this re-scoring replaced it
        con.execute("UPDATE scores SET score = 1e999 WHERE path LIKE '%im2.png'")
    code, out, err = run(["query", "--store", str(db), "--format", "jsonl", "--write-tags"], capsys)
    rows = strict_json_lines(out)
    # im1's scores were saved by the first run, before its embeddings rotted
    assert code == 1 and {r["path"].rsplit("/", 1)[-1] for r in rows} == {"im0.png", "im1.png"}
    assert "im2.png: its stored score is NaN or infinite" in err
