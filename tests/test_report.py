"""cityclf report: the data files, the folder's safe replacement, and the page in headless Chromium giving exactly
the rows `cityclf query` gives with the same options, in the same order."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cityclf_core.cli import main
from cityclf_core.dataset.report import MARKER
from cityclf_core.store import EmbeddingStore
from cityclf_core.store.rows import StoredScore

AES, CLS = "Aes-v1", "Cls-v1"
N = 60
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _pictures(folder: Path, k: int) -> list[bytes]:
    from PIL import Image

    out = []
    for i in range(k):
        img = Image.new("RGB", (40 + 8 * i, 30), (30 * i % 256, 90, 200 - 20 * i))
        path = folder / f"src{i}.png"
        img.save(path)
        out.append(path.read_bytes())
        path.unlink()
    return out


def make_store(base: Path) -> dict[str, tuple[float, float]]:
    """N files (5 distinct contents, so thumbnails are shared), scores with ties, one caption sidecar."""
    rng = np.random.default_rng(7)
    folder = base / "images"
    folder.mkdir(parents=True)
    pictures = _pictures(base, 5)
    truth = {}
    with EmbeddingStore(base / "s.db") as store, store.transaction():
        for i in range(N):
            name = ("é" if i % 11 == 0 else "Z" if i % 7 == 0 else "a") + f"{(i * 37) % N:03d}.png"
            path = str(folder / name)
            data = pictures[i % 5]
            Path(path).write_bytes(data)
            store.put_file(path, len(data), 0, hashlib.sha256(data).hexdigest())
            aes = round(float(rng.uniform()), 1)  # ties: the order among them is by path
            jpeg = float(rng.uniform())
            store.put_scores([
                (path, AES, "mean", StoredScore(aes, f"{aes:.0%}", None, "score")),
                (path, CLS, "mean", StoredScore(jpeg, "JPEG" if jpeg > 0.5 else "Pass",
                                                {"Pass": 1 - jpeg, "JPEG": jpeg}, "class")),
            ])
            truth[path] = (aes, jpeg)
    first = sorted(truth)[0]
    Path(first).with_suffix(".txt").write_text("city, night, rain", encoding="utf-8")
    return truth


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    truth = make_store(base)
    assert main(["report", "--store", str(base / "s.db"), "--out", str(base / "rep"), "--workers", "2"]) == 0
    return base, truth


def read_data(rep: Path) -> tuple[dict, list[dict]]:
    def args(path: Path, call: str) -> list:
        text = path.read_text("ascii")
        assert text.startswith(f"cityclfReport.{call}(") and text.endswith(");\n")
        return json.loads("[" + text[len(f"cityclfReport.{call}("):-3] + "]")

    meta = args(rep / "data" / "meta.js", "meta")[0]
    chunks = [args(rep / "data" / f"chunk-{k:04d}.js", "chunk") for k in range(meta["chunks"])]
    assert [k for k, _ in chunks] == list(range(meta["chunks"]))
    return meta, [c for _, c in chunks]


def query_paths(capsys, store: Path, *argv) -> list[str]:
    capsys.readouterr()
    assert main(["query", "--store", str(store), *argv, "--format", "jsonl"]) == 0
    out = capsys.readouterr().out
    paths = [os.path.abspath(json.loads(line)["path"]) for line in out.splitlines()]
    return list(dict.fromkeys(paths))  # one line per head: each path once, in order


def test_data_files_hold_every_row_in_path_order_with_its_numbers(data):
    base, truth = data
    rep = base / "rep"
    meta, chunks = read_data(rep)
    assert meta["rows"] == N and [h["name"] for h in meta["heads"]] == [AES, CLS]
    keys = [c["key"] for c in meta["columns"]]
    assert keys == [AES, CLS, f"{CLS}:Pass", f"{CLS}:JPEG"]
    paths = [p for c in chunks for p in c["path"]]
    assert paths == sorted(truth, key=os.fsencode)  # the store's order: UTF-8 bytes
    for c in chunks:
        for i, p in enumerate(c["path"]):
            aes, jpeg = truth[p]
            assert c["values"][0][i] == aes and c["values"][1][i] == jpeg and c["values"][3][i] == jpeg
            assert c["values"][2][i] == 1 - jpeg
            assert c["href"][i] == Path(p).as_uri() and (rep / c["thumb"][i]).is_file()
            assert c["label"][CLS][i] == ("JPEG" if jpeg > 0.5 else "Pass")
    assert chunks[0]["tags"][0] == "city, night, rain" and not any(t for c in chunks for t in c["tags"][1:])
    thumbs = [f for _, _, fs in os.walk(rep / "thumbs") for f in fs]
    assert len(thumbs) == 5  # one per content, not per path
    assert (rep / "index.html").read_text("utf-8").count("<script src=") == 1  # data/meta.js; nothing external
    assert "http" not in (rep / "index.html").read_text("utf-8")


def test_rerun_reuses_thumbnails_and_replaces_the_folder_whole(data, capsys):
    base, _ = data
    rep = base / "rep"
    capsys.readouterr()
    assert main(["report", "--store", str(base / "s.db"), "--out", str(rep), "--min", f"{AES}=0.5"]) == 0
    err = capsys.readouterr().err
    assert "0 thumbnail(s) made, 5 reused" in err or "reused" in err and " 0 thumbnail" in err
    meta, chunks = read_data(rep)
    assert meta["rows"] == len(query_paths(capsys, base / "s.db", "--min", f"{AES}=0.5")) < N
    assert (rep / MARKER).is_file()
    assert not [n for n in os.listdir(base) if n.startswith(".rep.")]  # no half-written or old copy left
    assert main(["report", "--store", str(base / "s.db"), "--out", str(rep)]) == 0  # back to all rows


@pytest.mark.parametrize("extra", ["", "notes.txt"])
def test_a_folder_that_is_not_a_report_is_refused_and_kept(data, capsys, tmp_path, extra):
    base, _ = data
    if extra:  # a previous report the user put a file into
        out = tmp_path / "rep"
        shutil.copytree(base / "rep", out)
        (out / "thumbs" / extra).write_text("mine")
    else:
        out = tmp_path / "mine"
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"mine")
    before = sorted(p for p in out.rglob("*"))
    capsys.readouterr()
    assert main(["report", "--store", str(base / "s.db"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (f"holds thumbs/{extra}" if extra else "is not empty and is not a cityclf report") in err
    assert sorted(p for p in out.rglob("*")) == before


def test_a_store_without_scores_is_a_clear_error(tmp_path, capsys):
    with EmbeddingStore(tmp_path / "empty.db"):
        pass
    assert main(["report", "--store", str(tmp_path / "empty.db"), "--out", str(tmp_path / "r")]) == 2
    assert "has no scores" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_gone_and_unreadable_files_are_reported_and_the_rest_written(tmp_path, capsys):
    from PIL import Image

    good, bad, gone = (str(tmp_path / n) for n in ("good.png", "bad.png", "gone.png"))
    Image.new("RGB", (20, 20), (200, 10, 10)).save(good)
    Path(bad).write_bytes(b"not a picture")
    with EmbeddingStore(tmp_path / "s.db") as store, store.transaction():
        for path in (good, bad, gone):
            data = Path(path).read_bytes() if os.path.exists(path) else b"x"
            store.put_file(path, len(data), 0, hashlib.sha256(data).hexdigest())
            store.put_scores([(path, AES, "mean", StoredScore(0.5, "50%", None, "score"))])
    out = tmp_path / "rep"
    capsys.readouterr()
    assert main(["report", "--store", str(tmp_path / "s.db"), "--out", str(out), "--report",
                 str(tmp_path / "skipped.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "gone.png" in err and "bad.png" in err and "no thumbnail" in err
    meta, (chunk,) = read_data(out)
    assert chunk["path"] == [bad, good] and chunk["thumb"][0] is None and chunk["thumb"][1]
    skipped = [json.loads(line) for line in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 2


def test_out_that_is_a_file_is_refused(data, tmp_path, capsys):
    base, _ = data
    (tmp_path / "r").write_text("mine")
    assert main(["report", "--store", str(base / "s.db"), "--out", str(tmp_path / "r")]) == 2
    assert "is not a folder" in capsys.readouterr().err and (tmp_path / "r").read_text() == "mine"
    assert main(["report", "--store", str(base / "s.db"), "--out", str(tmp_path / "r" / "sub")]) == 2
    assert "cannot be made" in capsys.readouterr().err and (tmp_path / "r").read_text() == "mine"


def _chromium():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (set CHROMIUM=... to run the page test)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright's Python package is not installed (pip install playwright)")
    return sync_playwright


#: the page's settings and the query options that mean the same: (min, max, sort, direction, limit), argv
CASES = [
    ({f"{AES}": "0.3"}, {}, AES, "desc", "10", ["--min", f"{AES}=0.3", "--sort-by", AES, "--top", "10"]),
    ({}, {f"{CLS}:JPEG": "0.6"}, f"{CLS}:JPEG", "asc", "7",
     ["--max", f"{CLS}:JPEG=0.6", "--sort-by", f"{CLS}:JPEG", "--bottom", "7"]),
    ({f"{AES}": "0.2", f"{CLS}": "0.25"}, {f"{AES}": "0.8"}, "", "desc", "", ["--min", f"{AES}=0.2", "--min",
                                                                            f"{CLS}=0.25", "--max", f"{AES}=0.8"]),
    ({}, {}, AES, "asc", "25", ["--head", AES, "--head", CLS, "--sort-by", AES, "--bottom", "25"]),
    ({f"{CLS}:Pass": "0.4"}, {}, CLS, "desc", "", ["--min", f"{CLS}:Pass=0.4", "--sort-by", CLS, "--top", "100%"]),
]


def test_the_page_shows_what_query_gives(data, capsys):
    sync_playwright = _chromium()
    base, _ = data
    index = (base / "rep" / "index.html").as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(index)
            page.wait_for_function("() => window.cityclfReport && cityclfReport.renders > 0")
            for mins, maxes, sort, direction, limit, argv in CASES:
                page.click("#reset")
                page.select_option("#sort", label=sort or "path")
                page.select_option("#dir", direction)
                before = page.evaluate("() => cityclfReport.renders")
                for attr, bounds in (("min", mins), ("max", maxes)):
                    for key, value in bounds.items():
                        page.fill(f'input[data-{attr}="{key}"]', value)
                page.fill("#limit", limit)
                page.wait_for_function(f"() => cityclfReport.pending === 0 && cityclfReport.renders > {before}")
                shown = page.eval_on_selector_all("#grid .tile", "ts => ts.map(t => t.dataset.path)")
                expected = query_paths(capsys, base / "s.db", *argv)
                assert expected and shown == expected, argv
            page.click("#grid .tile")  # the details: the full image and every number
            info = page.inner_text("#info")
            assert "JPEG" in info and "score" in info and page.is_visible("#detail")
            assert not errors
        finally:
            browser.close()


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_rerun_killed_at_any_point_leaves_the_old_report_or_the_new_one(data, tmp_path, monkeypatch, exchange):
    from kill_points import run_forked

    from cityclf_core.dataset import report

    if not exchange:  # as where the system cannot swap two names in one step
        monkeypatch.setattr(report, "_exchange", lambda a, b: False)
    base, _ = data
    out = tmp_path / "rep"
    shutil.copytree(base / "rep", out)
    old_rows = read_data(out)[0]["rows"]
    argv = ["report", "--store", str(base / "s.db"), "--out", str(out), "--min", f"{AES}=0.5", "--workers", "1"]
    code, reached = run_forked(lambda: main(argv), "count")
    assert code == 0
    new_rows = read_data(out)[0]["rows"]
    assert new_rows < old_rows
    # every point; without the exchange only the last ones differ (the swap and the old report's removal)
    between = 0
    for n in range(1 if exchange else max(1, reached["fs"] - 30), reached["fs"] + 1):
        assert main(["report", "--store", str(base / "s.db"), "--out", str(out)]) == 0  # the old one again
        code, _ = run_forked(lambda: main(argv), f"fs:{n}")
        assert code is None, n  # killed at its n-th file-system operation
        if not exchange and not out.exists():  # between the two renames: the old one is beside it, whole
            (old,) = [p for p in tmp_path.iterdir() if p.name.startswith(".rep.cityclf-old-")]
            assert read_data(old)[0]["rows"] == old_rows
            between += 1
            continue
        meta, chunks = read_data(out)  # a whole report: the old or the new
        assert meta["rows"] in (old_rows, new_rows), n
        assert all((out / t).is_file() for c in chunks for t in c["thumb"])
    assert between == (0 if exchange else 1)  # the kill between the two renames was tried
    assert main(argv) == 0  # a rerun finishes the job and clears what the kill left beside it
    assert read_data(out)[0]["rows"] == new_rows
    assert sorted(os.listdir(tmp_path)) == ["rep"]


def test_a_folder_another_run_is_writing_is_left_alone(data, tmp_path):
    from cityclf_core.dataset import report

    base, _ = data
    busy = tmp_path / ".rep.cityclf-new-0000beef"
    (busy / "data").mkdir(parents=True)
    (busy / MARKER).write_text("{}")
    argv = ["report", "--store", str(base / "s.db"), "--out", str(tmp_path / "rep")]
    held = report._hold(busy)  # as the run writing it holds it
    try:
        assert main(argv) == 0
        assert busy.is_dir()
    finally:
        os.close(held)
    assert main(argv) == 0
    assert sorted(os.listdir(tmp_path)) == ["rep"]
