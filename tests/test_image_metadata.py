"""Scores written into image files: PNG text chunks, JPEG and WebP XMP, without re-encoding (containers.py,
dataset/metadata.py, `--write-metadata`)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from cityclf_core.containers import (
    ContainerError,
    image_data,
    read_metadata,
    set_metadata,
    strip_metadata,
)
from cityclf_core.dataset.metadata import write_metadata
from cityclf_core.image_metadata import build_record, merge_records
from cityclf_core.kinds import result_from_dict
from cityclf_core.scoring.results import HeadResult

ROOT = Path(__file__).resolve().parents[1]
XMP_RATED = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
             b'<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4"/>'
             b'</rdf:RDF></x:xmpmeta>')


def results(aesthetic: float = 0.873, jpeg: float = 0.25) -> dict[str, HeadResult]:
    return {
        "Aesthetics": result_from_dict("Aesthetics", {"arch": "score", "score": aesthetic, "label": ""}),
        "Compression": result_from_dict("Compression", {
            "arch": "class", "score": jpeg, "label": "JPEG",
            "probs": {"Pass": 1 - jpeg, "JPEG": jpeg * 0.6, "WEBP": jpeg * 0.4}}),
    }


PROVENANCE = {"Aesthetics": {"sha256": "ab" * 32, "clip": {"name": "tiny-clip", "identity": "0123456789abcdef"}}}


def encoded(fmt: str, mode: str = "RGB", **kw) -> bytes:
    rng = np.random.default_rng(len(fmt) + len(mode))
    arr = rng.integers(0, 255, (29, 41, len(mode)), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, fmt, **kw)
    return buf.getvalue()


def png_with_parameters() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat, Steps: 20")
    info.add_text("prompt", json.dumps({"1": {"class_type": "KSampler"}}))
    return encoded("PNG", pnginfo=info)


FILES = {
    "png": lambda: encoded("PNG"),
    "png-rgba-with-text": lambda: png_with_parameters(),
    "jpeg": lambda: encoded("JPEG", quality=80),
    "jpeg-exif": lambda: encoded("JPEG", quality=80, exif=Image.Exif()),
    "jpeg-xmp": lambda: encoded("JPEG", quality=80, xmp=XMP_RATED),
    "webp-lossy": lambda: encoded("WEBP", quality=80),
    "webp-lossless-alpha": lambda: encoded("WEBP", "RGBA", lossless=True),
    "webp-extended-exif": lambda: encoded("WEBP", quality=70, exif=Image.Exif()),
}


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGBA"))


@pytest.mark.parametrize("name", list(FILES))
def test_scores_are_written_without_touching_the_image(name):
    data = FILES[name]()
    record = build_record(results(), PROVENANCE)
    new = set_metadata(data, record)
    assert new != data
    assert image_data(new) == image_data(data)  # the compressed image data, byte for byte
    assert np.array_equal(decoded(new), decoded(data))  # and so the pixels
    assert read_metadata(new) == record
    assert set_metadata(new, record) == new  # idempotent
    assert strip_metadata(new) == data  # the exact inverse
    newer = set_metadata(new, build_record(results(0.5, 0.75)))
    assert read_metadata(newer)["heads"]["Aesthetics"]["score"] == 0.5  # replaced, not added beside
    assert strip_metadata(newer) == data
    with Image.open(io.BytesIO(newer)) as im:
        im.load()
        info = dict(im.info)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        before = dict(im.info)
    for key, value in before.items():  # every other piece of metadata kept
        if key != "xmp":
            assert info[key] == value, key
    if name.startswith("png"):
        assert json.loads(info["cityclf"]) == read_metadata(newer)
        assert info["aesthetic_score"] == "0.5000"
    else:
        xmp = info["xmp"].decode("utf-8")
        assert 'cityclf:aesthetic_score="0.5000"' in xmp
        if name == "jpeg-xmp":
            assert 'xmp:Rating="4"' in xmp


def test_the_record_holds_every_value_read_back_with_pillow(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(encoded("PNG"))
    write_metadata([(str(path), results())], PROVENANCE)
    with Image.open(path) as im:
        record = json.loads(im.info["cityclf"])
        assert im.info["aesthetic_score"] == "0.8730"
    assert record == {
        "cityclf": 1, "aesthetic_score": "0.8730",
        "heads": {
            "Aesthetics": {"arch": "score", "score": 0.873, "label": "87%", "sha256": "ab" * 32,
                           "clip": {"name": "tiny-clip", "identity": "0123456789abcdef"}},
            "Compression": {"arch": "class", "score": 0.25, "label": "Pass",
                            "probs": {"Pass": 0.75, "JPEG": 0.15, "WEBP": 0.1}},
        },
    }


def test_a_foreign_aesthetic_score_is_kept_and_ours_not_added_beside_it():
    info = PngImagePlugin.PngInfo()
    info.add_text("aesthetic_score", "6.5")
    data = encoded("PNG", pnginfo=info)
    new = set_metadata(data, build_record(results()))
    with Image.open(io.BytesIO(new)) as im:
        assert im.info["aesthetic_score"] == "6.5"
    assert strip_metadata(new) == data


def test_other_heads_stay_when_one_head_is_written_again():
    both = build_record(results(), PROVENANCE)
    one = build_record({"Aesthetics": results()["Aesthetics"]})  # a query of stored scores: no provenance
    merged = merge_records(both, one)
    assert merged == both  # same result: its file hash and CLIP stay, the other head stays
    changed = merge_records(both, build_record({"Aesthetics": results(0.4)["Aesthetics"]}))
    assert changed["heads"]["Aesthetics"] == {"arch": "score", "score": 0.4, "label": "40%"}
    assert changed["heads"]["Compression"] == both["heads"]["Compression"]
    assert changed["aesthetic_score"] == "0.4000"


def damaged_png() -> bytes:
    data = bytearray(encoded("PNG"))
    at = bytes(data).index(b"IDAT") + 8
    data[at] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("data, why", [
    (b"GIF89a" + b"\0" * 20, "not a PNG, JPEG or WebP"),
    (damaged_png(), "CRC mismatch"),
    (encoded("PNG")[:-20], "truncated"),
    (encoded("PNG") + b"trailing", "after the PNG's IEND"),
    (encoded("JPEG")[:40], "JPEG"),
    (encoded("WEBP")[:-7], "RIFF size"),
])
def test_damaged_or_odd_files_are_refused(data, why):
    with pytest.raises(ContainerError, match=why):
        set_metadata(data, build_record(results()))


def test_skipped_files_are_reported_and_left_alone(tmp_path):
    good, bad, readonly, folder = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png", tmp_path / "d.png"
    good.write_bytes(encoded("PNG"))
    bad.write_bytes(damaged_png())
    readonly.write_bytes(encoded("PNG"))
    readonly.chmod(0o444)
    folder.mkdir()
    before = {p: p.read_bytes() for p in (bad, readonly)}
    out = write_metadata([(str(p), results()) for p in (good, bad, readonly, folder)])
    assert out.changed == [str(good)]
    reasons = dict(out.skipped)
    assert "CRC mismatch" in reasons[str(bad)]
    assert "read-only" in reasons[str(readonly)]
    assert "is a directory, not an image file" in reasons[str(folder)]
    assert all(p.read_bytes() == b for p, b in before.items())


def test_mtime_is_kept_unless_touch(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    for p in (a, b):
        p.write_bytes(encoded("JPEG"))
        os.utime(p, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    write_metadata([(str(a), results())])
    write_metadata([(str(b), results())], touch=True)
    assert a.stat().st_mtime_ns == 1_000_000_000_000_000_000
    assert b.stat().st_mtime_ns > 1_000_000_000_000_000_000
    assert sorted(os.listdir(tmp_path)) == ["a.jpg", "b.jpg"]  # no temporary file left


def scored_folder(folder: Path) -> tuple[Path, dict[Path, bytes]]:
    """A PNG and a WebP with stored scores (no CLIP needed): the store, and the files' bytes."""
    import hashlib

    from cityclf_core.store import EmbeddingStore
    from cityclf_core.store.rows import StoredScore

    folder.mkdir(parents=True)
    files = {folder / "a.png": encoded("PNG"), folder / "b.webp": encoded("WEBP")}
    db = folder.parent / (folder.name + ".db")
    with EmbeddingStore(db) as store, store.transaction():
        for i, (path, data) in enumerate(files.items()):
            path.write_bytes(data)
            st = path.stat()
            store.put_file(str(path), st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest())
            store.put_scores([(str(path), "Aes-v1", "mean", StoredScore(0.3 + i / 10, "", None, "score"))])
    return db, files


def forked_query(argv: list[str], spec: str):
    """`cityclf ARGV` in a forked child that stops at kill point `spec` (kill_points.py) and is killed there;
    (exit code, kill point counts) when it finished first, None when it was killed."""
    import signal

    import kill_points
    from cityclf_core.cli import main

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: quiet, counted, never back into pytest
        os.close(read_end)
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        try:
            kill_points.install(spec)
            code = main(argv)
            os.write(write_end, json.dumps(kill_points.counts).encode())
        finally:
            os._exit(locals().get("code", 99))
    os.close(write_end)
    status = kill_points.wait_stopped_or_exited(pid)
    if status is None:
        kill_points.signal_stopped(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        return None
    counts = json.loads(os.read(read_end, 4096) or b"{}")
    os.close(read_end)
    return os.waitstatus_to_exitcode(status), counts


def test_a_kill_at_any_point_leaves_each_file_old_or_new_and_the_rerun_finishes(tmp_path):
    """`query --write-metadata` killed at each of its file-system operations and store commits in turn."""
    argv = lambda db: ["query", "--store", str(db), "--write-metadata", "--format", "jsonl"]  # noqa: E731
    from cityclf_core.cli import main

    db, files = scored_folder(tmp_path / "whole")
    code, counts = forked_query(argv(db), "count")
    assert code == 0 and counts["fs"] >= 6 and counts["commit"] >= 2  # temp file, fsync, rename, per file
    final = {p.name: p.read_bytes() for p in files}
    assert all(final[p.name] != data and strip_metadata(final[p.name]) == data for p, data in files.items())
    for point in range(1, counts["any"] + 1):
        db, files = scored_folder(tmp_path / f"kill{point}")
        assert forked_query(argv(db), f"any:{point}") is None, f"finished before kill point {point}"
        for path, data in files.items():
            assert path.read_bytes() in (data, final[path.name]), f"kill point {point}: {path.name} half-written"
        assert main(argv(db)) == 0  # the rerun: nothing skipped (a file written before the kill is still "ours")
        assert {p.name: p.read_bytes() for p in files} == final
        assert sorted(os.listdir(db.parent / db.stem)) == ["a.png", "b.webp"]  # the kill's temporary swept


# ---------------------------------------------------------------- the commands, on the demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from cityclf_core.demo import build_demo

    folder = tmp_path_factory.mktemp("demo")
    clip, heads, images = build_demo(folder)
    return folder, clip, heads, images


def run(*argv):
    from cityclf_core.cli import main

    return main([str(a) for a in argv])


def test_score_and_query_write_metadata_idempotently(demo, tmp_path, capsys):
    folder, clip, heads, images = demo
    work = tmp_path / "images"
    work.mkdir()
    for p in sorted(images.iterdir()):
        (work / p.name).write_bytes(p.read_bytes())
    files = sorted(work.iterdir())
    pixels = {p: decoded(p.read_bytes()) for p in files}
    payload = {p: image_data(p.read_bytes()) for p in files}
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    db = tmp_path / "s.db"
    models = [a for h in heads for a in ("--model", h)]
    assert run("score", work, "--store", db, "--clip", clip, *models, "--no-progress", "--write-metadata") == 0
    err = capsys.readouterr().err
    assert f"metadata: {len(files)} file(s) updated" in err
    for p in files:
        data = p.read_bytes()
        assert image_data(data) == payload[p] and np.array_equal(decoded(data), pixels[p])
        assert p.stat().st_mtime_ns == mtimes[p]
        record = read_metadata(data)
        assert set(record["heads"]) == {h.stem for h in heads}
        assert all("sha256" in e and e["clip"]["name"] == "tiny-clip" for e in record["heads"].values())
    snapshot = {p: p.read_bytes() for p in files}
    assert run("query", "--store", db, "--write-metadata", "--head", heads[0].stem) == 0
    assert "0 file(s) updated" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in files} == snapshot  # a rerun changes nothing
    # files with our metadata are not embedded again
    assert run("score", work, "--store", db, "--clip", clip, *models, "--no-progress") == 0
    assert "0 embedded" in capsys.readouterr().err
    # a file changed since it was scored: skipped and reported, left as it is
    changed = files[0]
    with Image.open(changed) as im:
        im = im.convert("RGB")
    im.putpixel((0, 0), (255, 0, 0))
    im.save(changed)  # edited by another program
    now = changed.read_bytes()
    assert run("query", "--store", db, "--write-metadata", "--min", f"{heads[0].stem}=0") == 1
    err = capsys.readouterr().err
    assert "its content changed since it was scored" in err and changed.read_bytes() == now


def test_a_file_embedded_with_our_metadata_in_it_takes_new_scores(tmp_path):
    """A store that embedded the file after an earlier metadata write: the file is still the one it embedded."""
    import hashlib

    from cityclf_core.store import EmbeddingStore

    path = tmp_path / "a.png"
    path.write_bytes(encoded("PNG"))
    write_metadata([(str(path), results(0.3))])  # written before this store saw the file
    st = path.stat()
    with EmbeddingStore(tmp_path / "s.db") as store:
        with store.transaction():
            store.put_file(str(path), st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for score in (0.6, 0.7):  # new scores, twice: not mistaken for a changed file
            out = write_metadata([(str(path), results(score))], store=store)
            assert out.changed == [str(path)] and not out.skipped
            assert store.file(str(path)).size == path.stat().st_size  # the store learnt the new size
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB")).copy()
        pixels[0, 0] = 255 - pixels[0, 0]
        Image.fromarray(pixels).save(path)  # edited elsewhere: skipped
        out = write_metadata([(str(path), results(0.8))], store=store)
        assert not out.changed and "content changed since it was scored" in out.skipped[0][1]
