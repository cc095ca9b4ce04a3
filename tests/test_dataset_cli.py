"""Dataset operations from the command line: selection, copy/move without overwriting, tags, pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import illustration
from PIL import Image

from cityclf_core.cli import main
from cityclf_core.progress import ProgressBar
from cityclf_core.store import EmbeddingStore


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    for i in range(8):
        folder = root / "sub" if i % 2 else root
        Image.fromarray(illustration(100 + 10 * i, 90, i)).save(folder / f"img{i}.png")
    return root


@pytest.fixture
def scored(tmp_path, dataset, tiny_clip_dir, score_head_path, class_head_path, capsys):
    db = tmp_path / "s.db"
    code = main(["score", str(dataset), "--store", str(db), "-m", str(score_head_path), "-m", str(class_head_path),
                 "--clip", str(tiny_clip_dir), "--format", "jsonl", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [json.loads(x) for x in out.splitlines()]
    scores = {r["path"]: r["score"] for r in rows if r["model"] == "TestAesthetics-v1"}
    return db, scores


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_score_with_store_saves_scores_and_reuses_embeddings(scored, dataset, tiny_clip_dir, score_head_path, capsys):
    db, scores = scored
    assert len(scores) == 8
    with EmbeddingStore(db) as store:
        stored = store.scores(["TestAesthetics-v1"])
        assert {p: v["TestAesthetics-v1"][0] for p, v in stored.items()} == pytest.approx(scores)
    code, out, err = run(["score", str(dataset), "--store", str(db), "-m", str(score_head_path), "--clip",
                          str(tiny_clip_dir), "--format", "jsonl", "--no-progress"], capsys)
    assert code == 0 and "0 embedded, 8 already in the store" in err
    code, out, err = run(["score", "--store", str(db), "-m", str(score_head_path), "--clip", str(tiny_clip_dir),
                          "--format", "csv", "--no-progress"], capsys)
    assert code == 0 and len(out.splitlines()) == 9  # header + 8, straight from the store


def test_band_and_top_selection(scored, capsys):
    db, scores = scored
    ordered = sorted(scores.values())
    lo, hi = ordered[2], ordered[5]
    code, out, _ = run(["query", "--store", str(db), "--min", f"TestAesthetics={lo}", "--max",
                        f"TestAesthetics-v1={hi}", "--format", "jsonl"], capsys)
    paths = {json.loads(x)["path"] for x in out.splitlines()}
    assert code == 0 and paths == {p for p, s in scores.items() if lo <= s <= hi}
    code, out, _ = run(["query", "--store", str(db), "--top", "3", "--format", "jsonl", "--head",
                        "TestAesthetics-v1"], capsys)
    got = [json.loads(x)["path"] for x in out.splitlines()]
    assert got == sorted(scores, key=scores.get, reverse=True)[:3]
    code, out, _ = run(["query", "--store", str(db), "--bottom", "2", "--sort-by", "TestCompression:JPEG",
                        "--min", "TestCompression:Pass=0", "--format", "csv"], capsys)
    assert len(out.splitlines()) == 3
    code, _, err = run(["query", "--store", str(db), "--min", "Nope=1"], capsys)
    assert code == 2 and "no head 'Nope'" in err


def test_copy_keeps_folders_and_never_overwrites(scored, tmp_path, dataset, capsys):
    db, scores = scored
    dest = tmp_path / "best"
    (dest / "sub").mkdir(parents=True)
    occupied = dest / "sub" / "img1.png"
    occupied.write_bytes(b"the user's own file")
    argv = ["query", "--store", str(db), "--head", "TestAesthetics-v1", "--min", "0", "--copy", str(dest)]
    code, _, err = run(argv + ["--dry-run"], capsys)
    assert code == 0 and "would copy" in err and not (dest / "img0.png").exists()
    code, _, err = run(argv + ["--on-conflict", "error"], capsys)
    assert code == 2 and "already exists" in err and "nothing was copied" in err and not (dest / "img0.png").exists()
    code, _, err = run(argv, capsys)
    assert code == 0
    assert occupied.read_bytes() == b"the user's own file"  # never overwritten
    assert (dest / "sub" / "img1-1.png").read_bytes() == (dataset / "sub" / "img1.png").read_bytes()
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png")) == sorted(
        ["img0.png", "img2.png", "img4.png", "img6.png", "sub/img1.png", "sub/img1-1.png", "sub/img3.png",
         "sub/img5.png", "sub/img7.png"])
    before = sorted(dest.rglob("*"))
    code, _, err = run(argv, capsys)  # again: the same bytes are there already, so nothing new (no img0-1.png)
    assert code == 0 and err.count("already there") == 8 and sorted(dest.rglob("*")) == before
    assert occupied.read_bytes() == b"the user's own file"
    (dataset / "img0.png").write_bytes((dataset / "img2.png").read_bytes())  # other content under a taken name
    code, _, err = run(argv + ["--on-conflict", "skip"], capsys)
    assert code == 0 and err.count("skip ") == 2 and err.count("already there") == 6  # img0, sub/img1 (user's)
    code, _, err = run(argv, capsys)
    assert (dest / "img0-1.png").read_bytes() == (dataset / "img2.png").read_bytes()


def test_move_updates_the_store(scored, tmp_path, dataset, capsys):
    db, scores = scored
    best = max(scores, key=scores.get)
    dest = tmp_path / "moved"
    code, _, err = run(["query", "--store", str(db), "--top", "1", "--head", "TestAesthetics-v1", "--move",
                        str(dest)], capsys)
    assert code == 0
    rel = best[len(str(dataset)) + 1:]
    assert (dest / rel).is_file() and not (dataset / rel).exists()
    with EmbeddingStore(db) as store:
        assert store.file(str((dest / rel).resolve())) is not None and store.file(best) is None


def test_write_tags_is_idempotent(scored, dataset, capsys):
    db, _ = scored
    side = dataset / "img0.txt"
    side.write_text("1girl, outdoors\n")
    argv = ["query", "--store", str(db), "--write-tags", "--tag-thresholds", "0.2"]
    code, _, err = run(argv, capsys)
    assert code == 0 and "8 sidecar(s) updated" in err
    text = side.read_text()
    assert text.startswith("1girl, outdoors, testaesthetics_")
    code, _, err = run(argv, capsys)
    assert "0 sidecar(s) updated" in err and side.read_text() == text


def test_grid_and_histogram(scored, tmp_path, capsys):
    db, _ = scored
    sheet, hist = tmp_path / "sheet.png", tmp_path / "hist.png"
    code, _, err = run(["grid", "--store", str(db), "--top", "6", "--out", str(sheet), "--histogram", str(hist),
                        "--thumb", "128"], capsys)
    assert code == 0, err
    img = np.asarray(Image.open(sheet))
    assert img.shape[1] > 3 * 128 and img.std() > 10  # thumbnails were drawn
    h = Image.open(hist)
    assert h.height == 2 * 220  # one panel per head
    code, _, err = run(["grid", "--store", str(db)], capsys)
    assert code == 2 and "nothing to draw" in err


def test_bad_files_are_skipped_with_reasons(tmp_path, tiny_clip_dir, score_head_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(illustration(80, 60)).save(folder / "good.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    (folder / "text.jpg").write_text("not a picture")
    Image.new("RGB", (1200, 1200)).save(folder / "bomb.png")
    Image.fromarray(illustration(60, 50)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(folder / "deep.png")
    frames = [Image.new("RGB", (30, 30), c) for c in ((200, 0, 0), (0, 200, 0))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(illustration(70, 40)).save(folder / "rotated.jpg", exif=exif)
    data = (folder / "good.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    report = tmp_path / "report.jsonl"
    code, out, err = run(["embed", str(folder), "--store", str(tmp_path / "s.db"), "-m", str(score_head_path),
                          "--clip", str(tiny_clip_dir), "--max-pixels", "1000000", "--report", str(report),
                          "--no-progress"], capsys)
    assert code == 1
    skipped = {json.loads(x)["path"].split("/")[-1]: json.loads(x)["error"] for x in report.read_text().splitlines()}
    assert set(skipped) == {"corrupt.png", "text.jpg", "bomb.png", "cut.png"}
    assert "bomb" in skipped["bomb.png"] and "truncated or corrupt" in skipped["cut.png"]
    assert "not an image" in skipped["text.jpg"]
    assert "5 embedded" in err and "4 skipped" in err
    assert "animated: first of 2 frames" in err and "EXIF orientation 8" in err


def test_progress_bar_shows_rate_and_eta():
    import io

    stream = io.StringIO()
    now = [100.0]
    bar = ProgressBar(10, "img", stream=stream, enabled=True, label="embedding", clock=lambda: now[0])
    bar.set(0)  # the first update: the ETA is measured from here (startup is not progress)
    now[0] += 2.0  # two seconds in
    bar.set(4)
    text = bar.text()
    assert text.startswith("embedding [#########") and "4/10 img" in text
    assert "2.00 img/s" in text and "ETA 00:03" in text
    bar.write("a message")
    assert "a message\n" in stream.getvalue()


def test_write_tags_skips_a_sidecar_it_cannot_read_and_tags_the_rest(scored, dataset, capsys):
    db, _ = scored
    (dataset / "img0.txt").write_bytes(b"caf\xe9, old")  # Latin-1, not UTF-8
    code, out, err = run(["query", "--store", str(db), "--write-tags"], capsys)
    assert code == 1 and "img0.png" in err and "tags not written" in err
    assert (dataset / "img0.txt").read_bytes() == b"caf\xe9, old"  # left as it was
    assert (dataset / "img2.txt").exists() and (dataset / "sub" / "img1.txt").exists()
