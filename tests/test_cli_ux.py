"""cityclf as its users meet it: each test drives the command line as a user types it."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import illustration
from PIL import Image

from cityclf_core.cli import main
from cityclf_core.samples import build_head


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def jsonl(out):
    return [json.loads(x) for x in out.splitlines() if x.strip()]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A small labelled folder: 0_dark and 1_bright pictures."""
    root = tmp_path_factory.mktemp("labelled")
    for folder, bright in (("0_dark", False), ("1_bright", True)):
        (root / folder).mkdir()
        for i in range(8):
            a = illustration(70 + 4 * i, 60, 300 + i + (50 if bright else 0))
            a = (a // 2 + (120 if bright else 0)).astype("uint8")
            Image.fromarray(a).save(root / folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(labelled, tiny_clip_dir, tmp_path_factory):
    """A head trained through `cityclf train` on the tiny CLIP (a copy, so tests may move it away)."""
    base = tmp_path_factory.mktemp("trained")
    clip = base / "my-clip"
    shutil.copytree(tiny_clip_dir, clip)
    cfg = base / "cfg.yaml"
    cfg.write_text("model: {base: Bright, rev: v1, arch: class}\n"
                   "train: {lr: 1.0e-3, steps: 256, batch: 16, val_fraction: 0.25}\n"
                   "labels:\n  0: {name: Dark, loss: 1.0}\n  1: {name: Bright, loss: 1.0}\n")
    code = main(["train", "--config", str(cfg), "--data", str(labelled), "--out", str(base / "m"),
                 "--clip", str(clip), "--no-progress"])
    assert code == 0
    return base / "m" / "Bright-v1.safetensors", clip


# ---------------------------------------------------------------- a head remembers its CLIP


def test_trained_head_records_its_clip_and_uses_it_by_default(trained, labelled, tiny_clip_dir_b, capsys):
    head, clip = trained
    sidecar = json.loads(head.with_name("Bright-v1.config.json").read_text())
    assert list(sidecar)[:5] == ["name", "rev", "arch", "labels", "model_params"]  # the released format, first
    rec = sidecar["clip"]
    assert rec["source"] == str(clip.resolve()) and rec["image_size"] == 32
    assert rec["tiling"] is True and rec["tile_size"] == 64 and len(rec["identity"]) > 8
    img = labelled / "1_bright" / "0.png"
    # no --clip and offline: the recorded CLIP, not ViT-L/14-336
    code, out, err = run(["score", img, "-m", head, "--offline", "--format", "jsonl", "--no-progress"], capsys)
    assert code == 0, err
    code, out2, _ = run(["score", img, "-m", head, "--clip", clip, "--format", "jsonl", "--no-progress"], capsys)
    assert jsonl(out)[0]["probs"] == pytest.approx(jsonl(out2)[0]["probs"])
    assert "warning" not in err
    # another CLIP: a warning naming both
    code, _, err = run(["score", img, "-m", head, "--clip", tiny_clip_dir_b, "--no-progress"], capsys)
    assert code == 0
    assert "warning" in err and str(clip.resolve()) in err and str(tiny_clip_dir_b) in err


def test_stored_scoring_uses_the_recorded_clip(trained, labelled, tmp_path, capsys):
    head, clip = trained
    db = tmp_path / "s.db"
    code, _, err = run(["embed", labelled, "--store", db, "-m", head, "--no-progress"], capsys)
    assert code == 0, err
    code, out, err = run(["score", "--store", db, "-m", head, "--format", "csv", "--no-progress"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 17


# ---------------------------------------------------------------- score --store without --clip


def test_score_store_uses_the_only_clip_that_fits(tmp_path, tiny_clip_dir, calibration, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(illustration(60 + 10 * i, 50, i)).save(folder / f"{i}.png")
    head = build_head(tmp_path / "Mine-v1.safetensors", "score", name="Mine", rev="v1", seed=3,
                      calibrate_with=calibration)  # no CLIP recorded (an older head)
    db = tmp_path / "s.db"
    code, _, err = run(["embed", folder, "--store", db, "-m", head, "--clip", tiny_clip_dir, "--no-progress"], capsys)
    assert code == 0, err
    code, out, err = run(["score", "--store", db, "-m", head, "--format", "csv", "--no-progress"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 4
    assert "using the store's only 768-d CLIP" in err and str(tiny_clip_dir) in err


# ---------------------------------------------------------------- export and store-info on a mixed store


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(illustration(80 + 10 * i, 70 + 5 * i, 40 + i)).save(
            folder / ("sub" if i % 2 else "") / f"p{i}.png")
    return folder


@pytest.fixture
def mixed_store(tmp_path, photos, tiny_clip_dir, score_head_path, class_head_path, capsys):
    db = tmp_path / "ds.db"
    code, _, err = run(["score", photos, "--store", db, "-m", score_head_path, "-m", class_head_path, "--clip",
                        tiny_clip_dir, "--no-progress"], capsys)
    assert code == 0, err
    return db


def test_export_as_the_readme_writes_it_on_a_store_with_a_score_head_and_a_classifier(mixed_store, tmp_path,
                                                                                     capsys):
    import numpy as np

    out = tmp_path / "emb.npz"
    code, _, err = run(["export", "--store", mixed_store, "--out", out], capsys)
    assert code == 0, err
    data = np.load(out)
    assert sorted(data["sets"]) == ["tiles-64-1536-up", "whole"]
    assert len(data["whole.paths"]) == 6 and data["whole.embeddings"].shape == (6, 768)
    assert data["tiles-64-1536-up.offsets"][-1] == data["tiles-64-1536-up.embeddings"].shape[0]
    code, _, err = run(["export", "--store", mixed_store, "--out", tmp_path / "w.npz", "--policy", "whole"], capsys)
    assert code == 0 and np.load(tmp_path / "w.npz")["embeddings"].shape == (6, 768)
    code, out, _ = run(["store-info", "--store", mixed_store, "--json"], capsys)
    info = json.loads(out)
    assert sorted(p["policy"] for p in info["policies"]) == ["tiles:64:1536:up", "whole"]
    assert info["heads"] == {"TestAesthetics-v1": {"mean": 6}, "TestCompression-v1": {"mean": 6}}


# ---------------------------------------------------------------- forgetting files that are gone


def test_prune_forgets_gone_files_and_selections_skip_them(mixed_store, photos, tmp_path, score_head_path,
                                                          tiny_clip_dir, capsys):
    from cityclf_core.store import EmbeddingStore

    (photos / "p0.png").rename(photos / "renamed.png")  # renamed outside the tool
    (photos / "sub" / "p1.png").unlink()  # deleted
    shutil.copy(photos / "p2.png", photos / "p2-copy.png")  # a duplicate: shares p2's embeddings
    # before pruning: stored scores skip (and report) the gone files instead of failing
    code, out, err = run(["score", "--store", mixed_store, "-m", score_head_path, "--format", "csv",
                          "--no-progress"], capsys)
    assert code == 1 and len(out.splitlines()) == 1 + 4 and "p0.png: the file is gone" in err
    assert "scored 4 image(s)" in err
    code, out, err = run(["query", "--store", mixed_store, "--top", "10", "--sort-by", "TestAesthetics",
                          "--copy", tmp_path / "keep", "--format", "csv"], capsys)
    assert len(out.splitlines()) == 1 + 4 and "p0.png: the file is gone" in err and "cityclf prune" in err
    assert len(list((tmp_path / "keep").rglob("*.png"))) == 4
    code, _, err = run(["grid", "--store", mixed_store, "--out", tmp_path / "sheet.png"], capsys)
    assert "(4 images)" in err and "p1.png: the file is gone" in err
    # prune: a dry run first, then for real
    code, _, err = run(["prune", "--store", mixed_store, "--dry-run"], capsys)
    assert code == 0 and "would forget 2 file(s)" in err
    with EmbeddingStore(mixed_store) as store:
        assert len(store.files()) == 6
    code, _, err = run(["score", photos, "--store", mixed_store, "-m", score_head_path, "--clip", tiny_clip_dir,
                        "--no-progress"], capsys)  # records the renamed file and the copy
    assert code == 0, err
    code, _, err = run(["prune", "--store", mixed_store], capsys)
    assert code == 0 and f"forgot {photos / 'p0.png'} (gone)" in err and "forgot 2 file(s)" in err
    with EmbeddingStore(mixed_store) as store:
        files = {f.path for f in store.files()}
        assert str(photos / "p0.png") not in files and str(photos / "renamed.png") in files
        assert store.stats()["embeddings"] == 2 * 5  # p1's are gone, p0's are kept for renamed.png
        assert str(photos / "sub" / "p1.png") not in store.scores()
    code, out, err = run(["query", "--store", mixed_store, "--format", "csv"], capsys)
    assert code == 0 and "gone" not in err


# ---------------------------------------------------------------- hub CLIPs with only pytorch_model.bin


@pytest.fixture
def fake_hub(tmp_path, tiny_clip_dir, monkeypatch):
    """The hub stand-in on 127.0.0.1 (tests/fake_hub.py): a repo with only pytorch_model.bin (a full tiny CLIP,
    as openai's repos are), one with model.safetensors, one whose .bin holds a pickled callable."""
    import types

    from fake_hub import FakeHub, make_repos, redirect

    repos, clip, marker = make_repos(tmp_path / "hub", tiny_clip_dir)
    with FakeHub(repos) as hub:
        redirect(monkeypatch, hub.endpoint, tmp_path / "hf-cache")
        monkeypatch.setenv("CITYCLF_CACHE", str(tmp_path / "cache"))
        yield types.SimpleNamespace(calls=hub.requests, clip=clip, marker=marker, cache=tmp_path / "cache")


def test_hub_clip_with_only_a_bin_is_converted_once_and_scores(fake_hub, photos, score_head_path, capsys):
    import torch
    from fake_hub import COMMIT

    from cityclf_core.errors import WeightsError
    from cityclf_core.loading.clips import load_encoder

    img = photos / "p0.png"
    code, out, err = run(["score", img, "-m", score_head_path, "--clip", "fake/bin-clip", "--format", "jsonl",
                          "--no-progress"], capsys)
    assert code == 0, err
    assert "no safetensors weights" in err and "converting it once to safetensors" in err
    converted = fake_hub.cache / "clip" / "fake--bin-clip"
    assert (converted / "model.safetensors").is_file() and not list(converted.glob("*.bin"))
    assert ("GET", f"/fake/bin-clip/resolve/{COMMIT}/pytorch_model.bin") in fake_hub.calls  # at one commit
    # the converted CLIP is the original's vision tower
    enc = load_encoder("fake/bin-clip")
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        want = fake_hub.clip.visual_projection(fake_hub.clip.vision_model(pixel_values=x).pooler_output)
    assert torch.allclose(enc.model(pixel_values=x).image_embeds, want, atol=1e-5)
    assert enc.name == "bin-clip"
    # converted once: later runs (offline too) never ask the hub again
    fake_hub.calls.clear()
    code, out2, err = run(["score", img, "-m", score_head_path, "--clip", "fake/bin-clip", "--offline",
                           "--format", "jsonl", "--no-progress"], capsys)
    assert code == 0 and out2 == out and not fake_hub.calls
    # a repo with model.safetensors takes the ordinary download
    enc = load_encoder("fake/st-clip", allow_download=True)
    assert enc.image_size == 32 and ("GET", f"/fake/st-clip/resolve/{COMMIT}/model.safetensors") in fake_hub.calls
    assert not (fake_hub.cache / "clip" / "fake--st-clip").exists()
    # a .bin holding a pickled callable is refused, and its code never runs
    with pytest.raises(WeightsError, match="holds more than tensors"):
        load_encoder("fake/evil-clip", allow_download=True)
    assert not fake_hub.marker.exists()
    code, _, err = run(["score", img, "-m", score_head_path, "--clip", "fake/evil-clip", "--no-progress"], capsys)
    assert code == 2 and "fake/evil-clip: pytorch_model.bin holds more than tensors" in err


# ---------------------------------------------------------------- a local file that is not the release


def test_a_file_named_like_a_release_but_not_it_is_a_custom_head(tmp_path, photos, tiny_clip_dir, calibration,
                                                                   capsys):
    models = tmp_path / "models"
    fake = build_head(models / "CCAnime-Compression-v1.5.safetensors", "class", name="x", rev=None,
                      calibrate_with=calibration, labels={"0": "a", "1": "b", "2": "c"})
    fake.with_name("CCAnime-Compression-v1.5.config.json").unlink()
    code, out, _ = run(["models", "--models-dir", models], capsys)
    block = out.split("CCAnime-Compression-v1.5\n")[1].split("\n\n")[0]
    assert code == 0 and "on disk, but not the released file (sha256 " in block
    assert "on disk: " not in block
    code, out, err = run(["score", photos / "p0.png", "-m", "CCAnime-Compression-v1.5", "--models-dir", models,
                          "--clip", tiny_clip_dir, "--offline", "--no-progress", "--format", "jsonl"], capsys)
    assert code == 0, err
    assert "is not the released file" in err and "custom head" in err


# ---------------------------------------------------------------- smaller rough edges


def test_top_must_be_positive_and_its_help_says_what_it_means_for_a_classifier(mixed_store, capsys):
    with pytest.raises(SystemExit) as e:
        main(["query", "--store", str(mixed_store), "--top", "-1"])
    assert e.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["query", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "worst" in text and "--bottom N for the cleanest" in text


def test_misspelt_option_is_named_with_the_nearest_one(capsys):
    with pytest.raises(SystemExit) as e:
        main(["score", "x.png", "--modle", "h.safetensors"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown option --modle; did you mean --model?" in err
    assert "required" not in err


def test_grid_names_without_an_extension_are_clear_errors(mixed_store, tmp_path, capsys):
    code, _, err = run(["grid", "--store", mixed_store, "--out", tmp_path / "sheet"], capsys)
    assert code == 2 and "give a picture file name ending in .png" in err and "Traceback" not in err
    code, _, err = run(["grid", "--store", mixed_store, "--histogram", tmp_path / "hist"], capsys)
    assert code == 2 and "--histogram" in err


def test_query_with_another_combine_says_how_to_get_those_scores(mixed_store, capsys):
    code, _, err = run(["query", "--store", mixed_store, "--combine", "max"], capsys)
    assert code == 2 and "made with --combine mean" in err and "--combine max" in err
    assert "cityclf score --store" in err


def test_merge_with_a_missing_part_leaves_the_target_as_it_was(mixed_store, tmp_path, capsys):
    from cityclf_core.store import EmbeddingStore

    other = tmp_path / "empty.db"
    EmbeddingStore(other).close()
    target = tmp_path / "all.db"
    shutil.copy(other, target)
    before = target.read_bytes()
    code, _, err = run(["merge", mixed_store, tmp_path / "missing.db", "--store", target], capsys)
    assert code == 2 and "missing.db" in err
    assert target.read_bytes() == before and not list(tmp_path.glob("all.db.merging*"))
    code, _, err = run(["merge", mixed_store, "--store", target], capsys)
    assert code == 0
    with EmbeddingStore(target) as store:
        assert len(store.files()) == 6


def test_score_paths_with_store_reports_a_bad_file_once(tmp_path, photos, score_head_path, tiny_clip_dir, capsys):
    (photos / "broken.png").write_bytes(b"not a picture")
    code, out, err = run(["score", photos, "--store", tmp_path / "s.db", "-m", score_head_path, "--clip",
                          tiny_clip_dir, "--no-progress"], capsys)
    assert code == 1 and err.count("broken.png") == 1 and "not in the store" not in err
    assert "1 skipped" in err


def test_train_refuses_an_existing_rev_before_loading_data(trained, labelled, capsys):
    head, clip = trained
    cfg = head.parent.parent / "cfg.yaml"
    code, _, err = run(["train", "--config", cfg, "--data", labelled, "--out", head.parent, "--clip",
                        clip / "nowhere", "--no-progress"], capsys)  # no CLIP there: it must not get that far
    assert code == 2 and "already exists" in err


def test_demo_says_building_only_when_it_builds(tmp_path, capsys):
    from cityclf_core.demo import run_demo

    run_demo(tmp_path / "demo", main, progress=False)
    assert "building tiny models" in capsys.readouterr().out
    run_demo(tmp_path / "demo", main, progress=False)
    out = capsys.readouterr().out
    assert "building tiny models" not in out and "already in" in out


def test_tables_line_up_in_a_terminal_and_stay_tsv_in_a_pipe(score_head, class_head, encoder):
    import io

    import torch

    from cityclf_core import ScoringModel
    from cityclf_core.cli.common import ResultWriter

    model = ScoringModel().add(score_head, encoder).add(class_head, encoder)
    res = model.score([torch.from_numpy(illustration(60, 50, 1)), torch.from_numpy(illustration(90, 70, 2))])

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stream, tty in ((Tty(), True), (io.StringIO(), False)):
        w = ResultWriter("table", model.names, stream)
        w.write("a.png", res[0])
        w.write("a-much-longer-name.png", res[1])
        lines = stream.getvalue().splitlines()
        if tty:
            assert "\t" not in stream.getvalue()
            col = lines[2].index(lines[2].split()[1])
            assert lines[1].index(lines[1].split()[1]) <= col
        else:
            assert all(line.count("\t") == 2 for line in lines)


def test_library_score_takes_paths_and_pil_images(photos, score_head, encoder):
    import torch

    from cityclf_core import ScoringModel

    model = ScoringModel().add(score_head, encoder)
    img = Image.open(photos / "p0.png")
    by_tensor = model.score(torch.from_numpy(illustration(80, 70, 40)).float()[None] / 255)
    by_path = model.score([photos / "p0.png", str(photos / "p0.png")])
    by_pil = model.score(img)
    name = score_head.name
    assert by_path[0][name].score == pytest.approx(by_pil[0][name].score, abs=1e-4)
    assert by_path[0][name].score == pytest.approx(by_tensor[0][name].score, abs=1e-4)
    assert len(by_path) == 2


def test_first_eta_is_unknown_rather_than_wild(monkeypatch):
    from cityclf_core import progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])  # a clock the test moves, not a sleep
    bar = progress.ProgressBar(1000, enabled=False)
    clock[0] += 0.3  # e.g. loading a model before the first image
    bar.set(1)
    assert "ETA ?" in bar.text()


# ---------------------------------------------------------------- review without re-embedding


def test_review_with_a_store_embeds_once(trained, labelled, tmp_path, capsys):
    head, clip = trained
    db = tmp_path / "review.db"
    code, plain, _ = run(["review", labelled, "-m", head, "--format", "jsonl", "--no-progress"], capsys)
    assert code == 0
    code, first, err = run(["review", labelled, "-m", head, "--store", db, "--format", "jsonl", "--no-progress"],
                           capsys)
    assert code == 0 and "16 embedded" in err
    code, second, err = run(["review", labelled, "-m", head, "--store", db, "--format", "jsonl", "--no-progress"],
                            capsys)
    assert code == 0 and "0 embedded, 16 already in the store" in err
    key = lambda rows: [(r["path"], r["predicted"], round(r["loss"], 4)) for r in jsonl(rows)]  # noqa: E731
    assert key(first) == key(second) == key(plain)


# ---------------------------------------------------------------- one rule for a bare --min in score and query


def test_a_bare_min_means_the_same_head_in_score_and_query(mixed_store, score_head_path, class_head_path, capsys):
    # score: the first --model is the classifier (named after the score head alphabetically)
    code, out, err = run(["score", "--store", mixed_store, "-m", class_head_path, "-m", score_head_path, "--min",
                          "0.3", "--format", "csv", "--no-progress"], capsys)
    by_score = sorted(line.split(",")[0] for line in out.splitlines()[1:])
    code, out, err = run(["query", "--store", mixed_store, "--min", "0.3", "--format", "csv"], capsys)
    assert code == 2 and "needs a head" in err and "TestAesthetics-v1, TestCompression-v1" in err
    code, out, err = run(["query", "--store", mixed_store, "--head", "TestCompression-v1", "--head",
                          "TestAesthetics-v1", "--min", "0.3", "--format", "csv"], capsys)
    assert code == 0 and sorted(line.split(",")[0] for line in out.splitlines()[1:]) == by_score
    assert out.splitlines()[0].startswith("path,TestCompression-v1")
    assert f"selected {len(by_score)} of 6 image(s)" in err and "scored" not in err


# ---------------------------------------------------------------- an unchanged rerun does not load the CLIP


def test_unchanged_rerun_never_loads_the_clip(photos, tmp_path, tiny_clip_dir, score_head_path, class_head_path,
                                              monkeypatch, capsys):
    from cityclf_core.loading import clips, fingerprints

    monkeypatch.setenv("CITYCLF_CACHE", str(tmp_path / "cache"))
    clip = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, clip)
    db = tmp_path / "s.db"
    argv = ["embed", photos, "--store", db, "-m", score_head_path, "-m", class_head_path, "--clip", clip,
            "--no-progress"]
    code, _, err = run(argv, capsys)
    assert code == 0 and "6 embedded" in err
    clips.forget_encoders()

    def no_loading(*a, **k):
        raise AssertionError("the CLIP was loaded")

    monkeypatch.setattr(clips.TransformersClipEncoder, "from_folder", no_loading)
    computed = []
    real = fingerprints.folder_fingerprint
    monkeypatch.setattr(fingerprints, "folder_fingerprint", lambda f: computed.append(f) or real(f))
    code, _, err = run(argv, capsys)
    assert code == 0 and "6 already in the store" in err and "the CLIP was not loaded" in err
    assert computed == []  # remembered by the folder's files' sizes and mtimes
    code, out, err = run(["score", photos, "--store", db, "-m", score_head_path, "-m", class_head_path, "--clip",
                          clip, "--format", "csv", "--no-progress"], capsys)
    assert code == 0 and len(out.splitlines()) == 7 and computed == []
    # one new file: now the CLIP is needed, and loaded
    Image.fromarray(illustration(64, 64, 99)).save(photos / "new.png")
    code, _, err = run(argv, capsys)  # the stand-in's AssertionError is an internal error to the command
    assert code == 3 and "the CLIP was loaded" in err


# ---------------------------------------------------------------- stored selections run in SQL, in blocks


def test_query_selects_in_sql_and_never_reads_the_whole_store(mixed_store, monkeypatch, capsys):
    from cityclf_core.dataset import Selection, stored_results
    from cityclf_core.store import EmbeddingStore

    with EmbeddingStore(mixed_store) as store:
        rows = stored_results(store, None, "mean")
        plan = " ".join(str(r) for r in store.db.execute(
            "EXPLAIN QUERY PLAN SELECT path FROM scores WHERE head = 'x' AND combine = 'mean' ORDER BY score DESC"))
        assert "scores_rank" in plan  # the index on the stored scores serves a top-N
    expected = {}
    for argv in (["--min", "TestAesthetics=0.3", "--sort-by", "TestCompression:JPEG", "--top", "4"],
                 ["--max", "TestCompression:Pass=0.9", "--bottom", "3", "--sort-by", "TestAesthetics"],
                 ["--min", "TestCompression=0.1", "--max", "TestAesthetics=0.99"]):
        sel = Selection.parse([a for i, a in enumerate(argv) if i and argv[i - 1] == "--min"],
                              [a for i, a in enumerate(argv) if i and argv[i - 1] == "--max"],
                              int(argv[argv.index("--top") + 1]) if "--top" in argv else None,
                              int(argv[argv.index("--bottom") + 1]) if "--bottom" in argv else None,
                              argv[argv.index("--sort-by") + 1] if "--sort-by" in argv else None)
        expected[tuple(argv)] = [p for p, _ in sel.apply(rows)]

    real = EmbeddingStore.scores

    def by_blocks_only(self, heads=None, combine=None, paths=None):
        assert paths is not None and len(paths) <= 1000, "query read the whole store"
        return real(self, heads, combine, paths)

    assert any(expected.values())
    monkeypatch.setattr(EmbeddingStore, "scores", by_blocks_only)
    for argv, want in expected.items():
        code, out, err = run(["query", "--store", mixed_store, *argv, "--format", "csv"], capsys)
        assert code == 0, err
        assert [line.split(",")[0] for line in out.splitlines()[1:]] == want, argv


# ---------------------------------------------------------------- each distinct view embedded once


def test_embed_runs_clip_once_for_a_small_images_shared_view(tmp_path, tiny_clip_dir, score_head_path,
                                                             class_head_path, monkeypatch, capsys):
    from cityclf_core.loading import clips
    from cityclf_core.store import EmbeddingStore

    folder = tmp_path / "small"
    folder.mkdir()
    for i in range(5):  # short side 50 <= the 64 px tiles: the whole view and the "tiles" view are the same crop
        Image.fromarray(illustration(50 + 5 * i, 60, i)).save(folder / f"{i}.png")
    Image.fromarray(illustration(100, 90, 9)).save(folder / "big.png")  # really tiled: 1 + 5 views
    seen = []
    real = clips.TransformersClipEncoder.encode
    monkeypatch.setattr(clips.TransformersClipEncoder, "encode",
                        lambda self, views: seen.append(int(views.shape[0])) or real(self, views))
    db = tmp_path / "s.db"
    code, _, err = run(["embed", folder, "--store", db, "-m", score_head_path, "-m", class_head_path, "--clip",
                        tiny_clip_dir, "--no-progress"], capsys)
    assert code == 0, err
    assert sum(seen) == 5 * 1 + (1 + 5)
    with EmbeddingStore(db) as store:
        assert {p.policy: p.count for p in store.policies()} == {"whole": 6, "tiles:64:1536:up": 6}
    code, out, err = run(["score", "--store", db, "-m", score_head_path, "-m", class_head_path, "--format", "jsonl",
                          "--no-progress"], capsys)
    stored = sorted((r["path"], r["model"], r.get("score"), str(r.get("probs"))) for r in jsonl(out))
    code, out, err = run(["score", folder, "-m", score_head_path, "-m", class_head_path, "--clip", tiny_clip_dir,
                          "--format", "jsonl", "--no-progress"], capsys)
    direct = sorted((r["path"], r["model"], r.get("score"), str(r.get("probs"))) for r in jsonl(out))
    assert [d[:2] for d in direct] == [s[:2] for s in stored]


def test_score_store_reads_files_in_blocks_and_keeps_no_rows_when_streaming(mixed_store, score_head_path,
                                                                            monkeypatch, capsys):
    from cityclf_core.dataset import from_store
    from cityclf_core.store import EmbeddingStore

    def no_full_list(self, paths=None, status="ok"):
        raise AssertionError("score --store listed every stored file at once")

    monkeypatch.setattr(EmbeddingStore, "files", no_full_list)
    monkeypatch.setattr(EmbeddingStore, "file_paths", lambda self, block=8192: iter(
        [p] for p in [r[0] for r in self.db.execute("SELECT path FROM files ORDER BY path")]))  # blocks of 1
    calls = []
    real = from_store.head_scores
    monkeypatch.setattr(from_store, "head_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    code, out, err = run(["score", "--store", mixed_store, "-m", score_head_path, "--format", "csv",
                          "--no-progress"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 7 and len(calls) == 6  # one chunk per block
    assert "scored 6 image(s)" in err


def test_class_probabilities_have_an_index_that_a_class_sort_uses(mixed_store):
    from cityclf_core.store import EmbeddingStore
    from cityclf_core.store.sqlite import label_expr

    with EmbeddingStore(mixed_store) as store:
        expr = label_expr("", "JPEG")
        plan = " ".join(str(r) for r in store.db.execute(
            f"EXPLAIN QUERY PLAN SELECT path FROM scores WHERE head = 'TestCompression-v1' AND combine = 'mean' "
            f"AND {expr} IS NOT NULL ORDER BY {expr} DESC"))
    assert "scores_p_" in plan  # made when the classifier's scores were saved
