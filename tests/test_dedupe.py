"""cityclf dedupe: planted near-duplicates (resized, re-encoded, slightly cropped) grouped, distinct images not;
the best of each group kept; the rest copied or moved safely (a kill at any point loses nothing)."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
from pathlib import Path

import kill_points
import numpy as np
import pytest
from conftest import illustration
from PIL import Image

from cityclf_core.cli import main
from cityclf_core.dataset.dedupe import exact_pairs, group_pairs
from cityclf_core.store import EmbeddingStore

N_DISTINCT = 10
PLANTED = 3
#: the tests' tiny random CLIP puts every picture close together (distinct ones up to 0.993 here); its planted
#: copies are above 0.998. A real CLIP spreads pictures out: 0.95 is a usual threshold there.
THRESHOLD = "0.997"


def variants(original: Path) -> list[Path]:
    """A resized copy, a re-encoded JPEG and a slightly cropped copy of `original`, beside it."""
    im = Image.open(original)
    out = [original.with_name(original.stem + "_small.png"), original.with_name(original.stem + "_q70.jpg"),
           original.with_name(original.stem + "_crop.png")]
    im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.LANCZOS).save(out[0])
    im.convert("RGB").save(out[1], quality=70)
    im.crop((6, 5, im.width - 6, im.height - 5)).save(out[2])
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_clip_dir, score_head_path):
    base = tmp_path_factory.mktemp("dedupe")
    data = base / "data"
    (data / "sub").mkdir(parents=True)
    groups = []
    for i in range(N_DISTINCT):
        folder = data / ("sub" if i % 2 else "")
        original = folder / f"img{i:02d}.png"
        Image.fromarray(illustration(256, 192, i)).save(original)
        if i < PLANTED:
            groups.append({str(original), *map(str, variants(original))})
    db = base / "s.db"
    assert main(["score", str(data), "--store", str(db), "-m", str(score_head_path), "--clip", str(tiny_clip_dir),
                 "--no-tiling", "--no-progress", "--format", "csv"]) == 0
    return base, groups


def fresh(template, where: Path) -> tuple[Path, Path, list[set[str]]]:
    base, groups = template
    shutil.copytree(base / "data", where / "data")
    shutil.copy2(base / "s.db", where / "s.db")
    con = sqlite3.connect(where / "s.db")
    with con:
        for table in ("files", "scores"):
            con.execute(f"UPDATE {table} SET path = ? || substr(path, ?)", (str(where / "data"),
                                                                           len(str(base / "data")) + 1))
    con.close()
    moved = [{p.replace(str(base / "data"), str(where / "data")) for p in g} for g in groups]
    return where / "data", where / "s.db", moved


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def groups_of(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_planted_duplicates_are_grouped_and_distinct_images_are_not(template, tmp_path, capsys):
    data, db, planted = fresh(template, tmp_path)
    code, out, err = run(["dedupe", "--store", db, "--threshold", THRESHOLD, "--format", "jsonl"], capsys)
    assert code == 0, err
    found = groups_of(out)
    assert sorted(map(sorted, ({g["keep"], *g["others"]} for g in found))) == sorted(map(sorted, planted))
    for g in found:  # no head: the largest file is kept
        sizes = {m["path"]: m["size"] for m in g["members"]}
        assert sizes[g["keep"]] == max(sizes.values()) == os.path.getsize(g["keep"])
        assert float(THRESHOLD) <= g["similarity"] <= 1.0 + 1e-6
    assert f"{PLANTED} group(s) of near-duplicates" in err and f"{3 * PLANTED} duplicate(s) found" in err
    assert sorted(p.name for p in data.rglob("*")) == sorted(p.name for p in (template[0] / "data").rglob("*"))


def test_the_best_scored_image_of_each_group_is_kept(template, tmp_path, capsys):
    data, db, planted = fresh(template, tmp_path)
    with EmbeddingStore(db) as store:
        scores = {p: r["TestAesthetics-v1"].score for p, r in store.scores(["TestAesthetics-v1"], "mean").items()}
    code, out, err = run(["dedupe", "--store", db, "--threshold", THRESHOLD, "--head", "TestAesthetics-v1",
                          "--format", "jsonl", "--out", tmp_path / "groups.jsonl"], capsys)
    assert code == 0, err
    found = groups_of(out)
    assert [json.loads(x) for x in (tmp_path / "groups.jsonl").read_text().splitlines()] == found
    for g in found:
        members = [g["keep"], *g["others"]]
        assert g["keep"] == max(members, key=lambda p: scores[p])
        assert {m["path"]: m["score"] for m in g["members"]} == pytest.approx({p: scores[p] for p in members})


def test_move_keeps_the_best_and_moves_the_rest_and_the_store_follows(template, tmp_path, capsys):
    data, db, planted = fresh(template, tmp_path)
    dest = tmp_path / "dupes"
    code, out, err = run(["dedupe", "--store", db, "--threshold", THRESHOLD, "--move", dest, "--dry-run"], capsys)
    assert code == 0 and "would move" in err and not dest.exists()
    code, out, err = run(["dedupe", "--store", db, "--threshold", THRESHOLD, "--move", dest, "--sheet",
                          tmp_path / "groups.png"], capsys)
    assert code == 0, err
    moved = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert len(moved) == 3 * PLANTED
    for g in planted:  # one of each group stayed where it was, the others are at the destination
        stayed = [p for p in g if os.path.exists(p)]
        assert len(stayed) == 1
    assert Image.open(tmp_path / "groups.png").size[0] > 0
    with EmbeddingStore(db) as store:
        paths = {f.path for f in store.files()}
    assert all(os.path.isfile(p) for p in paths) and len(paths) == N_DISTINCT + 3 * PLANTED
    code, out, err = run(["dedupe", "--store", db, "--threshold", THRESHOLD, "--move", dest], capsys)
    assert code == 0 and "already there" in err  # a rerun finds the same groups and changes nothing
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == moved


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill trials fork this process (POSIX only)")
def test_a_killed_move_loses_nothing(template, tmp_path):
    rng = random.Random(7)
    original = {p.name: p.read_bytes() for p in (template[0] / "data").rglob("*") if p.is_file()}

    def forked(argv, spec):
        return kill_points.run_forked(lambda: main([str(a) for a in argv]), spec)

    data, db, _ = fresh(template, tmp_path / "count")
    code, reached = forked(["dedupe", "--store", db, "--threshold", THRESHOLD, "--move", tmp_path / "count-dest"],
                           "count")
    assert code == 0
    points = reached["any"]
    killed = 0
    for trial in range(6):
        data, db, _ = fresh(template, tmp_path / f"t{trial}")
        dest = tmp_path / f"d{trial}"
        argv = ["dedupe", "--store", db, "--threshold", THRESHOLD, "--move", dest]
        killed += forked(argv, f"any:{rng.randint(1, points)}")[0] is None
        assert forked(argv, None)[0] == 0  # the rerun finishes the job
        everywhere = [p for p in [*data.rglob("*"), *dest.rglob("*")] if p.is_file()]
        assert sorted(p.name for p in everywhere) == sorted(original)  # each file once, none lost or doubled
        assert all(p.read_bytes() == original[p.name] for p in everywhere)
        with EmbeddingStore(db) as store:
            assert all(os.path.isfile(f.path) for f in store.files())
    assert killed >= 3


def test_exact_pairs_and_groups_on_known_vectors():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 16)).astype(np.float32)
    vectors = np.concatenate([base, base[:5] + 0.001 * rng.normal(size=(5, 16)).astype(np.float32)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs = list(exact_pairs(vectors, 0.999, block=7))  # blocks smaller than the set: pairs across blocks too
    assert sorted((i, j) for i, j, _ in pairs) == [(k, 50 + k) for k in range(5)]
    groups = group_pairs(len(vectors), iter([(0, 1, 0.99), (1, 2, 0.98), (5, 6, 0.97)]))
    assert groups == [([0, 1, 2], 0.98), ([5, 6], 0.97)]


def test_ann_finds_what_exact_finds():
    pytest.importorskip("faiss")
    from cityclf_core.dataset.dedupe import ann_pairs

    rng = np.random.default_rng(1)
    base = rng.normal(size=(4000, 32)).astype(np.float32)
    near = base[:200] + 0.02 * rng.normal(size=(200, 32)).astype(np.float32)
    vectors = np.concatenate([base, near])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = {(i, j) for i, j, _ in exact_pairs(vectors, 0.99)}
    ann = {(i, j) for i, j, _ in ann_pairs(vectors, 0.99)}
    assert ann <= exact and len(exact) >= 200
    assert len(ann) >= 0.95 * len(exact)


@pytest.mark.parametrize("argv, message", [
    (["--threshold", "1.5"], "at most 1"),
    (["--threshold", "nan"], "must be a number of at least -1 and at most 1"),
    (["--threshold", "abc"], "must be a number of at least -1 and at most 1"),
])
def test_bad_thresholds_are_refused_before_any_work(template, tmp_path, capsys, argv, message):
    data, db, _ = fresh(template, tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["dedupe", "--store", str(db), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_store_without_whole_image_embeddings_is_a_clear_error(tmp_path, tiny_clip_dir, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(illustration(300, 200, 0)).save(data / "a.png")
    db = tmp_path / "tiles.db"
    assert main(["embed", str(data), "--store", str(db), "--clip", str(tiny_clip_dir), "--tiling",
                 "--no-progress"]) == 0
    capsys.readouterr()
    code, out, err = run(["dedupe", "--store", db, "--threshold", "0.95"], capsys)
    assert code == 2 and "no whole-image embeddings" in err and "--no-tiling" in err
    code, out, err = run(["dedupe", "--store", db, "--threshold", "0.95", "--sheet", tmp_path / "groups.txt"],
                         capsys)
    assert code == 2 and "--sheet" in err
