"""Pixiv popularity data: ingest (idempotent, bad inputs), the AI rule, targets, splits."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from cityclf_core.errors import ConfigError
from cityclf_core.pixiv.ingest import database_path, ingest
from cityclf_core.pixiv.records import is_ai, load_records
from cityclf_core.pixiv.splits import artists_on_both_sides, make_split
from cityclf_core.pixiv.synth import DOCUMENT_SCHEMA, synthesize, write_sidecar
from cityclf_core.pixiv.targets import Target


def meta(illust_id: int, page: int = 0, views=1000, bookmarks=100, user=7, **kw) -> dict:
    d = {"id": illust_id, "num": page, "user": {"id": user, "name": "a", "account": "a"}, "tags": ["オリジナル"],
         "total_view": views, "total_bookmarks": bookmarks, "sanity_level": 2, "x_restrict": 0,
         "illust_ai_type": 1, "page_count": 1, "width": 8, "height": 8,
         "create_date": "2023-05-01T12:00:00+09:00", "date": "2023-05-01 03:00:00"}
    d.update(kw)
    return {k: v for k, v in d.items() if v is not ...}


def put(root: Path, illust_id: int, page: int = 0, image: bool = True, text: str | None = None,
        mtime: float = 1_736_000_000.0, **kw) -> Path:
    folder = root / str(illust_id)[:2]
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{illust_id}_p{page}.png"
    if image:
        (folder / name).write_bytes(b"\x89PNG fake")
    side = folder / (name + ".json")
    if text is None:
        write_sidecar(side, meta(illust_id, page, **kw), mtime)
    else:
        side.write_text(text, encoding="utf-8")
    return side


def rows(root: Path) -> dict:
    db = sqlite3.connect(database_path(root))
    db.row_factory = sqlite3.Row
    out = {r["filename"]: dict(r) for r in db.execute("SELECT * FROM illusts")}
    db.close()
    return out


def test_ingest_reads_document_fields_and_is_idempotent(tmp_path):
    put(tmp_path, 11111111, views=500, bookmarks=50, user=3, tags=["a", "b", "c"])
    put(tmp_path, 22222222, mtime=1_736_100_000.0)
    report = ingest(tmp_path)
    assert (report.added, report.updated, report.skipped) == (2, 0, [])
    row = rows(tmp_path)["11111111_p0"]
    assert row["total_view"] == 500 and row["total_bookmarks"] == 50 and row["user_id"] == 3
    assert row["tags"] == "a,b,c" and row["illust_id"] == 11111111 and row["page"] == 0
    assert row["date"] == "2023-05-01 03:00:00"  # +09:00 turned into UTC
    assert row["crawled"] == "2025-01-04 14:13:20"  # the sidecar's mtime
    assert row["image"] == "11/11111111_p0.png"
    before = rows(tmp_path)
    again = ingest(tmp_path)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 2)
    assert rows(tmp_path) == before
    # a changed sidecar updates its row (and only its row)
    put(tmp_path, 11111111, views=900, bookmarks=50, user=3, mtime=1_736_200_000.0)
    third = ingest(tmp_path)
    assert (third.added, third.updated, third.unchanged) == (0, 1, 1)
    assert rows(tmp_path)["11111111_p0"]["total_view"] == 900
    assert rows(tmp_path)["22222222_p0"] == before["22222222_p0"]


def test_bad_inputs_are_reported_and_skipped(tmp_path):
    put(tmp_path, 10000001)  # good
    folder = tmp_path / "10"
    (folder / "10000002_p0.png").write_bytes(b"x")  # image without sidecar
    put(tmp_path, 10000003, image=False)  # sidecar without image
    put(tmp_path, 10000004, text='{"id": 10000004, "total_view": 5')  # truncated
    put(tmp_path, 10000005, text="not json at all")  # malformed
    put(tmp_path, 10000006, text="[1, 2]")  # not an object
    put(tmp_path, 10000007, views=0)  # zero views
    put(tmp_path, 10000008, views=...)  # no views
    put(tmp_path, 10000009, create_date=..., date="2021-02-03 04:05:06")  # naive date only
    put(tmp_path, 10000010, date=...)  # ISO +09:00 only
    put(tmp_path, 10000011, page=0, page_count=2)  # one work, two pages: the same id twice
    put(tmp_path, 10000011, page=1, page_count=2)
    write_sidecar(folder / "10000001_p0.jpg.json", meta(10000001))  # a second sidecar for one image
    report = ingest(tmp_path)
    why = {Path(p).name: reason for p, reason in report.skipped}
    assert "no sidecar" in why["10000002_p0.png"]
    assert "no image" in why["10000003_p0.png.json"]
    assert "truncated" in why["10000004_p0.png.json"]
    assert "malformed" in why["10000005_p0.png.json"]
    assert "not an object" in why["10000006_p0.png.json"]
    assert "is 0" in why["10000007_p0.png.json"]
    assert "no 'total_view'" in why["10000008_p0.png.json"]
    assert "second sidecar" in why["10000001_p0.png.json"] or "second sidecar" in why["10000001_p0.jpg.json"]
    table = rows(tmp_path)
    assert set(table) == {"10000001_p0", "10000009_p0", "10000010_p0", "10000011_p0", "10000011_p1"}
    assert table["10000009_p0"]["date"] == "2021-02-03 04:05:06"
    assert table["10000010_p0"]["date"] == "2023-05-01 03:00:00"
    assert any("several pages" in n for _, n in report.notes)
    rec, left_out = load_records(tmp_path)
    assert sorted(rec.filename.tolist()) == ["10000001_p0", "10000009_p0", "10000010_p0", "10000011_p0"]
    assert ("10000011_p1", "page 1 of work 10000011: one example per work (its first page)") in left_out


def test_document_database_with_schema_typo_is_read_and_kept(tmp_path):
    db_path = database_path(tmp_path)
    db_path.parent.mkdir(parents=True)
    db = sqlite3.connect(db_path)
    db.execute(DOCUMENT_SCHEMA)
    assert "total_view" not in {r[1] for r in db.execute("PRAGMA table_info(illusts)")}  # the typo's effect
    db.execute("INSERT INTO illusts (filename, sanity_level, total_bookmarks, tags, tag_character, illust_ai_type, "
               "page_count, date) VALUES ('12345678_p0', 4, 40, 'x', 'hatsune_miku', 2, 1, '2020-01-01 00:00:00')")
    db.execute("INSERT INTO illusts (filename, total_bookmarks) VALUES ('99999999_p0', 7)")  # no sidecar
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="total_view"):
        load_records(tmp_path)
    put(tmp_path, 12345678, views=400, bookmarks=41)
    report = ingest(tmp_path)
    assert any("misses a comma" in n for _, n in report.notes)
    assert any("no view count" in n for _, n in report.notes)
    assert db_path.with_name("metadata.sqlite3.before-cityclf").is_file()
    table = rows(tmp_path)
    assert table["12345678_p0"]["tag_character"] == "hatsune_miku"  # kept: sidecars have none
    assert table["12345678_p0"]["total_view"] == 400 and table["12345678_p0"]["total_bookmarks"] == 41
    assert table["99999999_p0"]["total_bookmarks"] == 7  # the user's row stays
    rec, left_out = load_records(tmp_path)
    assert rec.filename.tolist() == ["12345678_p0"]
    assert ("99999999_p0", "no view or bookmark count") in left_out


def test_ai_rule_and_meanings():
    assert is_ai(2, "")  # declared AI
    assert not is_ai(1, "オリジナル")  # declared not AI
    assert not is_ai(0, "")  # unset (before the flag existed)
    assert is_ai(1, "女の子,AIイラスト")
    assert is_ai(0, "stable diffusion")  # LIKE is case-insensitive for ASCII, as in the document's SQL
    assert is_ai(1, "NovelAI")


@pytest.fixture(scope="module")
def synth_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("px") / "data"
    synthesize(root, works=160, artists=16, size=16, seed=3)
    ingest(root)
    return load_records(root)[0]


def test_targets_are_fitted_on_train_only(synth_records):
    rec = synth_records
    split = make_split("artist", rec, seed=1)
    train, test = rec.subset(split.train), rec.subset(split.test)
    for name in ("weighted_log", "bookmark_rate", "age_aware"):
        target = Target.fit(name, train)
        s_train = target.score(train)
        assert s_train.min() == pytest.approx(0.0) and s_train.max() == pytest.approx(1.0)
        refit = Target.fit(name, test)
        assert target.to_dict()["scalers"] != refit.to_dict()["scalers"]  # the test split would give others
        restored = Target.from_dict(json.loads(json.dumps(target.to_dict())))
        np.testing.assert_allclose(restored.score(test), target.score(test))
    t = Target.fit("weighted_log", train, alpha=0.7)
    lb, lv = np.log1p(train.bookmarks), np.log1p(train.views)
    w = 0.7 * (lb - lb.min()) / np.ptp(lb) + 0.3 * (lv - lv.min()) / np.ptp(lv)
    np.testing.assert_allclose(t.score(train), (w - w.min()) / np.ptp(w))
    assert Target.value(np.array([0.0, 1.0, 2.0, -1.0])).tolist() == [1.0, 100.0, 100.0, 1.0]
    rate = Target.fit("bookmark_rate", train, k=50)
    p = train.bookmarks.sum() / train.views.sum()
    assert rate.params["prior"] == pytest.approx(p)
    lr = np.log((test.bookmarks + 50 * p) / (test.views + 50))
    lr_train = np.log((train.bookmarks + 50 * p) / (train.views + 50))
    np.testing.assert_allclose(rate.score(test), (lr - lr_train.min()) / np.ptp(lr_train))
    aged = Target.fit("age_aware", train)
    la = np.log1p(train.age_days)
    eb, ev = aged._age_residuals(train)
    assert abs(np.corrcoef(eb, la)[0, 1]) < 1e-6 and abs(np.corrcoef(ev, la)[0, 1]) < 1e-6  # age removed


def test_splits(synth_records):
    rec = synth_records
    a = make_split("artist", rec, seed=0)
    assert artists_on_both_sides(rec, a) == 0
    assert len(set(rec.user_id[a.train]) & set(rec.user_id[a.val])) == 0
    assert len(np.intersect1d(a.train, a.test)) == 0 and len(a.train) + len(a.val) + len(a.test) == len(rec)
    assert not np.array_equal(make_split("artist", rec, seed=1).test, a.test)
    t = make_split("time", rec)
    assert rec.uploaded[t.train].max() <= rec.uploaded[t.val].min() <= rec.uploaded[t.test].min()
    r = make_split("random", rec, seed=0)
    assert artists_on_both_sides(rec, r) > 0  # ungrouped: the leak is possible
    with pytest.raises(ConfigError, match="split must be"):
        make_split("by-magic", rec)


def test_cli_ingest_reports_skipped_inputs(tmp_path, capsys):
    from cityclf_core.cli import main

    put(tmp_path, 30000001)
    put(tmp_path, 30000002, text="{")
    report = tmp_path / "skipped.jsonl"
    assert main(["pixiv", "ingest", str(tmp_path), "--report", str(report)]) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "30000002_p0.png.json" in err and "1 row(s) added" in err
    lines = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()]
    assert [Path(x["path"]).name for x in lines] == ["30000002_p0.png.json"]
    assert main(["pixiv", "ingest", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


def test_the_backup_of_a_wal_database_holds_its_uncheckpointed_commits(tmp_path):
    db_path = database_path(tmp_path)
    db_path.parent.mkdir(parents=True)
    writer = sqlite3.connect(db_path)  # kept open: its commits stay in the write-ahead log, not the main file
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute(DOCUMENT_SCHEMA)
    writer.execute("INSERT INTO illusts (filename, total_bookmarks) VALUES ('99999999_p0', 7)")
    writer.commit()
    assert db_path.with_name("metadata.sqlite3-wal").stat().st_size > 0
    try:
        put(tmp_path, 12345678, views=400, bookmarks=41)
        ingest(tmp_path)
    finally:
        writer.close()
    backup = sqlite3.connect(db_path.with_name("metadata.sqlite3.before-cityclf"))
    assert backup.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert backup.execute("SELECT filename, total_bookmarks FROM illusts").fetchall() == [("99999999_p0", 7)]
    assert "total_view" not in {r[1] for r in backup.execute("PRAGMA table_info(illusts)")}  # the state before
    backup.close()
    assert not db_path.with_name("metadata.sqlite3.before-cityclf.tmp").exists()


# ---------------------------------------------------------------- real gallery-dl settings, old schemas


FIRST_SCHEMA = """CREATE TABLE illusts (id INTEGER PRIMARY KEY, title TEXT, type TEXT, restrict INTEGER,
    user_name TEXT, user_account TEXT, tags TEXT, create_date TIMESTAMP, page_count INTEGER, width INTEGER,
    height INTEGER, sanity_level INTEGER, x_restrict INTEGER, total_view INTEGER, total_bookmarks INTEGER,
    is_bookmarked BOOLEAN, visible BOOLEAN, is_muted BOOLEAN, illust_ai_type INTEGER, illust_book_style INTEGER,
    num INTEGER, date TIMESTAMP, rating TEXT, suffix TEXT, category TEXT, subcategory TEXT, url TEXT,
    date_url TEXT, filename TEXT, extension TEXT)"""  # the original project's first CreateMetadataSqlite.py


def test_first_schema_of_the_original_is_migrated_on_a_copy(tmp_path):
    db_path = database_path(tmp_path)
    db_path.parent.mkdir(parents=True)
    db = sqlite3.connect(db_path)
    db.execute(FIRST_SCHEMA)
    db.execute("INSERT INTO illusts (id, title, tags, total_view, total_bookmarks, num, date, filename) VALUES "
               "(12345678, 'old', 'x,y', 300, 30, 0, '2020-01-01 00:00:00', '12345678_p0.jpg')")
    db.execute("INSERT INTO illusts (id, title, total_view, total_bookmarks, num) VALUES (87654321, 'no file', "
               "50, 5, 0)")
    db.commit()
    db.close()
    dump = lambda p: list(sqlite3.connect(p).iterdump())  # noqa: E731
    original = dump(db_path)
    put(tmp_path, 12345678, views=400, bookmarks=41)
    report = ingest(tmp_path)
    assert report.updated == 1 and not report.skipped
    assert any("first schema" in n for _, n in report.notes)
    assert dump(db_path.with_name("metadata.sqlite3.before-cityclf")) == original  # the backup
    assert not db_path.with_name("metadata.sqlite3.migrating").exists()
    table = rows(tmp_path)
    assert set(table) == {"12345678_p0", "87654321_p0"}  # filename is the key now; no row lost
    assert table["12345678_p0"]["total_view"] == 400 and table["12345678_p0"]["title"] == "old"  # old columns kept
    assert table["87654321_p0"]["illust_id"] == 87654321 and table["87654321_p0"]["total_view"] == 50
    assert ingest(tmp_path).unchanged == 1  # and it is the current schema from now on


def test_an_empty_folder_is_an_error_and_creates_nothing(tmp_path, capsys):
    from cityclf_core.cli import main

    (tmp_path / "12").mkdir()
    assert main(["pixiv", "ingest", str(tmp_path)]) == 2
    assert "no sidecars found" in capsys.readouterr().err
    assert not (tmp_path / ".database").exists()


def test_debug_works_on_every_subcommand(tmp_path, capsys):
    from cityclf_core.cli import main

    for argv in (["pixiv", "ingest", str(tmp_path), "--debug"], ["pixiv", "synth", str(tmp_path / "s"), "--works",
                                                                  "0", "--debug"]):
        try:
            code = main(argv)
        except SystemExit as e:  # refused while parsing (--works 0), still not as an unknown option
            code = e.code
        assert code == 2  # the clear error of the command itself
        assert "unknown option" not in capsys.readouterr().err


def test_translated_and_dict_tags_feed_the_ai_rule(tmp_path):
    put(tmp_path, 40000001, tags=["AI-generated", "original", "girl"], illust_ai_type=0)  # tags: translated
    put(tmp_path, 40000002, tags=["AI illustration", "landscape"], illust_ai_type=1)
    put(tmp_path, 40000003, tags=["girl", "original"], illust_ai_type=1)
    put(tmp_path, 40000004, tags=[{"name": "AIイラスト", "translated_name": "AI illustration"},  # tags: original
                                  {"name": "オリジナル", "translated_name": "original"}], illust_ai_type=0)
    report = ingest(tmp_path)
    assert len(report.warnings) == 1 and "look translated" in report.warnings[0]
    assert rows(tmp_path)["40000004_p0"]["tags"] == "AIイラスト,オリジナル"
    rec, _ = load_records(tmp_path)
    assert dict(zip(rec.filename, rec.ai.tolist())) == {"40000001_p0": True, "40000002_p0": True,
                                                        "40000003_p0": False, "40000004_p0": True}
    assert is_ai(0, "AI生成") and is_ai(0, "ai-generated")


def test_sidecar_mtime_equal_to_upload_time_is_not_a_crawl_time(tmp_path):
    upload = 1_682_910_000.0  # 2023-05-01 03:00:00 UTC, the sidecar's date
    for i in range(3):
        put(tmp_path, 50000001 + i, mtime=upload, views=1000 + 700 * i, bookmarks=50 + 90 * i * i)
    report = ingest(tmp_path)
    assert len(report.warnings) == 1 and "--crawled" in report.warnings[0]
    assert {r["crawled"] for r in rows(tmp_path).values()} == {None}
    rec, _ = load_records(tmp_path)
    with pytest.raises(ConfigError, match="--crawled"):
        Target.fit("age_aware", rec)
    again = ingest(tmp_path, crawled="2025-01-15")
    assert again.updated == 3 and not again.warnings
    assert {r["crawled"] for r in rows(tmp_path).values()} == {"2025-01-15 00:00:00"}
    rec, _ = load_records(tmp_path)
    assert np.isfinite(Target.fit("age_aware", rec).score(rec)).all()
    with pytest.raises(ConfigError, match="--crawled"):
        ingest(tmp_path, crawled="last tuesday")


def test_ugoira_zip_is_skipped_with_its_reason(tmp_path):
    side = put(tmp_path, 60000001, image=False)
    side.rename(side.with_name("60000001_p0.zip.json"))
    (side.parent / "60000001_p0.zip").write_bytes(b"PK\x03\x04")
    put(tmp_path, 60000002)
    report = ingest(tmp_path)
    assert [(Path(p).name, why.split(" (")[0]) for p, why in report.skipped] == [
        ("60000001_p0.zip.json", "ugoira: no still image")]
    assert set(rows(tmp_path)) == {"60000002_p0"}
    assert ingest(tmp_path, require_images=False).added == 1  # --metadata-only: its metadata alone


def test_weighted_log_ratio_and_per_artist_targets(synth_records):
    rec = synth_records
    split = make_split("artist", rec, seed=1)
    train, test = rec.subset(split.train), rec.subset(split.test)
    t = Target.fit("weighted_log_ratio", train)
    assert (t.params["alpha"], t.params["beta"], t.params["gamma"]) == (0.5, 0.2, 0.3)
    mm = lambda x, ref: (x - ref.min()) / np.ptp(ref)  # noqa: E731
    p = train.bookmarks.sum() / train.views.sum()
    rate = lambda r: np.log((r.bookmarks + 100 * p) / (r.views + 100))  # noqa: E731
    w = lambda r: (0.5 * mm(np.log1p(r.bookmarks), np.log1p(train.bookmarks))  # noqa: E731
                   + 0.2 * mm(np.log1p(r.views), np.log1p(train.views)) + 0.3 * mm(rate(r), rate(train)))
    np.testing.assert_allclose(t.score(test), mm(w(test), w(train)), atol=1e-12)  # scalers from train only
    restored = Target.from_dict(json.loads(json.dumps(t.to_dict())))
    np.testing.assert_allclose(restored.score(test), t.score(test))
    per = Target.fit("weighted_log", train, per_artist=True)
    base = Target.fit("weighted_log", train).score(train)
    s = per.score(train)
    assert s.min() == pytest.approx(0.0) and s.max() == pytest.approx(1.0)
    for u in np.unique(train.user_id)[:3]:  # within an artist: the same order, the artist's mean removed
        mine = train.user_id == u
        np.testing.assert_allclose(np.argsort(s[mine]), np.argsort(base[mine]))
    np.testing.assert_allclose(Target.from_dict(json.loads(json.dumps(per.to_dict()))).score(test), per.score(test))
    nobody = train.subset(np.arange(len(train)))
    nobody.user_id = np.full(len(train), -1)
    with pytest.raises(ConfigError, match="target.per_artist needs the artists' user ids"):
        Target.fit("weighted_log", nobody, per_artist=True)
    with pytest.raises(ConfigError, match="must sum to 1"):
        Target.fit("weighted_log_ratio", train, alpha=0.5, beta=0.5, gamma=0.5)
    with pytest.raises(ConfigError, match="target.alpha must be between 0 and 1"):
        Target.fit("weighted_log", train, alpha=-0.1)
