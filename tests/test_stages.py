"""The dataset job's stages, each on its own: reader, writer, block scoring, selection."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import illustration
from PIL import Image

from cityclf_core import CropPolicy, ScoringModel
from cityclf_core.dataset import EmbedReport, ScoreOptions, Selection, embed_files, score_files
from cityclf_core.dataset.embed import register_passes
from cityclf_core.dataset.reader import FileReader, Known
from cityclf_core.dataset.writer import StoreWriter
from cityclf_core.kinds import get_kind
from cityclf_core.scoring.embedding import ClipPass
from cityclf_core.scoring.results import HeadResult
from cityclf_core.store import EmbeddingStore


@pytest.fixture
def files(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    paths = []
    for i, (w, h) in enumerate([(40, 30), (90, 80)]):
        p = d / f"f{i}.png"
        Image.fromarray(illustration(w, h, 60 + i)).save(p)
        paths.append(str(p))
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    return paths + [str(d / "broken.png")]


@pytest.fixture
def passes(encoder):
    return [ClipPass(encoder, CropPolicy(tiling=False)), ClipPass(encoder, CropPolicy(tiling=True, tile_size=32))]


def test_clip_pass_resolves_its_policy_and_names_its_views(encoder):
    p = ClipPass(encoder, CropPolicy(tiling=True))
    assert p.policy.tile_size == 2 * encoder.image_size and p.key == f"tiles:{2 * encoder.image_size}:1536:up"
    assert ClipPass(encoder, CropPolicy()).key == "whole"


def test_reader_makes_only_the_missing_views(tmp_path, files, passes):
    with EmbeddingStore(tmp_path / "s.db") as store:
        reader = FileReader(store, passes, Known([set(), set()]))
        item = reader.read(0, files[1])  # 90x80 with 32 px tiles: one whole view, five tiles
        assert item.error is None and item.size == os.path.getsize(files[1])
        assert {i: v.shape[0] for i, v in item.views.items()} == {0: 1, 1: 5}
        assert all(v.dtype == torch.uint8 for v in item.views.values())
        # content already embedded for pass 0 only: only pass 1 is made
        reader = FileReader(store, passes, Known([{item.content}, set()]))
        again = reader.read(1, files[1])
        assert list(again.views) == [1] and again.content == item.content
        # a broken file is an error for that file, not an exception
        bad = reader.read(2, files[2])
        assert bad.error and not bad.views
        reader.close()


def test_writer_records_a_file_once_all_its_embeddings_are_in(tmp_path, files, passes):
    with EmbeddingStore(tmp_path / "s.db") as store:
        rows = register_passes(store, passes)
        known = Known([set(), set()])
        report = EmbedReport(total=1)
        seen = []
        writer = StoreWriter(store, rows, [p.key for p in passes], known, report, lambda p, e: seen.append((p, e)))
        item = FileReader(store, passes, known).read(0, files[1])  # 90x80: a whole view and five tiles
        writer.expect(item)
        writer.write([[(0, torch.zeros(1, 768))], []])
        assert store.file(files[1]) is None and not seen  # pass 1 not in yet: no file row
        writer.write([[], [(0, torch.ones(5, 768))]])
        assert store.file(files[1]).content == item.content and seen == [(files[1], None)]
        assert report.embedded == 1 and not known.missing(item.content)


def test_a_small_images_shared_view_is_made_once_and_stored_for_both_passes(tmp_path, files, passes):
    with EmbeddingStore(tmp_path / "s.db") as store:
        item = FileReader(store, passes, Known([set(), set()])).read(0, files[0])  # 40x30: its tiles are its whole
        assert list(item.views) == [0] and item.aliases == {1: 0}


def test_block_scoring_isolates_a_bad_image(files, encoder, score_head):
    model = ScoringModel().add(score_head, encoder)
    skipped = []
    rows = list(score_files(model, files, ScoreOptions(batch_size=8), lambda p, why: skipped.append(p)))
    assert [p for p, _ in rows] == files[:2]
    assert [os.path.basename(p) for p in skipped] == ["broken.png"]


def test_selection_is_inactive_without_bounds():
    rows = [(f"{i}.png", {"h": HeadResult("h", get_kind("score"), ["score"], [v], v, 1)}) for i, v in enumerate([0.2, 0.9, 0.5])]
    assert Selection().apply(rows) == rows and not Selection().active
    sel = Selection.parse(mins=["0.3"], top=1)
    assert [p for p, _ in sel.apply(rows)] == ["1.png"]


# ---------------------------------------------------------------- before loading a CLIP


def test_files_to_embed_names_new_changed_unreadable_and_half_embedded_files(tmp_path, files, passes):
    from cityclf_core.dataset.plan import files_to_embed

    ok, other = files[0], files[1]
    with EmbeddingStore(tmp_path / "s.db") as store:
        embed_files(store, passes, [ok, other])
        rows = register_passes(store, passes)
        known = [store.known_contents(r.id, p.key) for r, p in zip(rows, passes)]
        plan = list(files_to_embed(store, known, [ok, other, str(tmp_path / "gone.png")]))
        assert [needed for *_, needed in plan] == [False, False, True]
        assert plan[0][1:3] == (os.path.getsize(ok), os.stat(ok).st_mtime_ns) and plan[2][1:3] == (None, None)
        os.utime(other, ns=(1, 1))  # touched: its stats differ from the stored ones
        assert [needed for *_, needed in files_to_embed(store, known, [ok, other])] == [False, True]
        first = store.file(ok).content  # embedded for pass 0 only
        assert [needed for *_, needed in files_to_embed(store, [known[0], known[1] - {first}], [ok])] == [True]


def test_choose_clips_takes_the_stored_clip_when_nothing_needs_embedding_and_reads_each_head_once(
        tmp_path, tiny_clip_dir, score_head_path, monkeypatch):
    from cityclf_core.loading import catalogue, clips, models
    from dataclasses import replace

    from cityclf_core.dataset.passes import ModelSpec, choose_clips

    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(illustration(40 + i, 30, i)).save(paths[-1])
    spec = ModelSpec((str(score_head_path),), str(tiny_clip_dir), dtype="fp32")
    bare = ModelSpec(clip=str(tiny_clip_dir), dtype="fp32")
    heads, loaded = [], []
    real_head, real_clip = catalogue.load_head, clips.load_encoder
    monkeypatch.setattr(catalogue, "load_head", lambda *a, **k: heads.append(a[0]) or real_head(*a, **k))
    for module in (clips, models):  # the one resolver, where each caller finds it
        monkeypatch.setattr(module, "load_encoder", lambda *a, **k: loaded.append(a[0]) or real_clip(*a, **k))
    with EmbeddingStore(tmp_path / "s.db") as store:
        first = choose_clips(store, spec, paths, "cpu")  # the store knows no CLIP yet: loaded
        assert first.loaded and first.model.names == [b.name for b in first.model.bindings]
        assert (len(heads), len(loaded)) == (1, 1)
        embed_files(store, first.passes, paths)
        heads.clear(), loaded.clear()
        again = choose_clips(store, spec, paths, "cpu")  # every file embedded: no CLIP loaded
        assert not again.loaded and (len(heads), len(loaded)) == (1, 0)
        assert [p.key for p in again.passes] == [p.key for p in first.passes]
        assert again.groups[0].encoder.identity == first.groups[0].encoder.identity
        assert [p.key for p in again.passes] == ["whole"]
        assert not choose_clips(store, bare, paths, "cpu").loaded  # a bare CLIP: its whole views are stored
        assert choose_clips(store, replace(bare, tiling="on"), paths, "cpu").loaded  # its tiles are not
        heads.clear(), loaded.clear()
        os.utime(paths[0], ns=(1, 1))  # changed since: the CLIP is loaded, the head still read once
        changed = choose_clips(store, spec, paths, "cpu")
        assert changed.loaded and (len(heads), len(loaded)) == (1, 1)


def test_embed_then_score_embeds_what_the_store_lacks_under_its_lock(tmp_path, files, encoder, score_head,
                                                                     monkeypatch):
    from cityclf_core.dataset import embed_then_score
    from cityclf_core.errors import StoreError
    from cityclf_core.store.lock import store_writer

    model = ScoringModel().add(score_head, encoder)
    db, options = tmp_path / "s.db", ScoreOptions(tiling="off")
    direct = dict(score_files(model, files[:2], options, lambda p, e: None))
    for run, embedded in ((1, 2), (2, 0)):  # the second time nothing is embedded
        told, reports, absent = [], [], []
        rows = embed_then_score(db, model, [os.path.relpath(p) for p in files], options,
                                on_file=lambda p, e: told.append((p, e)), on_embedded=reports.append,
                                on_absent=lambda p, why: absent.append(p))
        assert [r.embedded for r in reports] == [embedded], run
        assert [p for p, _ in rows] == files[:2]  # absolute, in order; the broken file not scored
        assert [p for p, e in told if e] == [files[2]] and absent == []  # failed: told once, not again as absent
        for path, result in rows:
            assert result[score_head.name].score == pytest.approx(direct[path][score_head.name].score, abs=1e-5)
    monkeypatch.setenv("CITYCLF_LOCK_WAIT", "0")
    with store_writer(db):  # another writer holds the store: refused, nothing done
        with pytest.raises(StoreError, match="is in use"):
            embed_then_score(db, model, files, options)
