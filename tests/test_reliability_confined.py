"""Confinement under a race: a folder or file inside the allowed folders is swapped with a symbolic link to
an outside folder, over and over, by another process, while the nodes and writers run. Nothing outside is
written, and Load Images never returns an outside image.

The swapper exchanges two names atomically with renameat2(RENAME_EXCHANGE) (through ctypes), or, where
that call is missing, with a loop of three renames. The test does not decide when anything happens: each
writer runs a fixed number of calls while the swapper runs, and every call is checked; the counts of calls
refused and written are printed (`pytest -s`) and show that the race was on.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import as_image_tensor, illustration
from PIL import Image

from cityclf_core.errors import CityClfError

pytestmark = pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="confined opens need O_NOFOLLOW (POSIX)")

SWAPPER = r"""
import ctypes, os, sys
a, b, ready = sys.argv[1:4]
libc = ctypes.CDLL(None, use_errno=True)
exchange = getattr(libc, "renameat2", None)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
if exchange is not None and exchange(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) != 0:
    exchange = None  # not on this kernel or file system: a loop of renames
open(ready, "w").close()
while True:
    if exchange is not None:
        exchange(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE)
    else:
        os.rename(a, a + ".hold"); os.rename(b, a); os.rename(a + ".hold", b)
"""


@contextlib.contextmanager
def swapping(a, b, tmp_path):
    """Exchange the names `a` and `b` in a loop in another process for the duration of the block."""
    ready = tmp_path / f"swapper-ready-{os.path.basename(a)}"
    proc = subprocess.Popen([sys.executable, "-c", SWAPPER, str(a), str(b), str(ready)])
    try:
        while not ready.exists():  # wait for the file the swapper writes once it runs
            assert proc.poll() is None, "the swapper stopped"
            time.sleep(0.01)
        yield
    finally:
        proc.kill()
        proc.wait()
        if os.path.lexists(str(a) + ".hold"):  # a rename loop stopped in its middle
            os.rename(str(b), str(a)) if not os.path.lexists(a) else None
            os.rename(str(a) + ".hold", b)


def tree(folder) -> dict:
    """Every entry under `folder` with its bytes (or link target): what must not change."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for f in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            p = os.path.join(root, f)
            out[p] = os.readlink(p) if os.path.islink(p) else open(p, "rb").read()
    return out


def save(path, seed):
    Image.fromarray(illustration(40, 30, seed)).save(path)
    return path


@pytest.fixture
def world(tmp_path, monkeypatch, pack, model_dir, score_head_path):
    """input/ and output/ (ComfyUI's folders), input/data (swapped with input/evil -> outside/)."""
    from importlib import import_module

    bridge = import_module("cityclf_pack.nodes.comfy_bridge")
    dirs = {n: tmp_path / n for n in ("input", "output", "outside")}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.setattr(bridge, "input_dir", lambda: str(dirs["input"]))
    monkeypatch.setattr(bridge, "output_dir", lambda: str(dirs["output"]))
    monkeypatch.delenv("CITYCLF_ALLOWED_ROOTS", raising=False)
    monkeypatch.setenv("CITYCLF_MODELS", str(model_dir))
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not what is tested here; thousands of fsyncs
    data = dirs["input"] / "data"
    data.mkdir()
    save(data / "img.png", 0)
    save(dirs["outside"] / "img.png", 7)  # the same name outside: what a swapped folder would lead to
    (dirs["outside"] / "img.txt").write_text("do not touch\n")
    os.symlink(dirs["outside"], dirs["input"] / "evil", target_is_directory=True)
    return dirs


def owned(tag: str) -> bool:
    return tag.startswith("aesthetic_")


def test_tag_node_and_update_sidecars_never_write_outside_under_a_folder_swap(world, tmp_path, tiny_clip_dir):
    from importlib import import_module

    from cityclf_core.sidecars import update_sidecars

    nodes = import_module("cityclf_pack.nodes")
    model = nodes.CityClfLoader().load(head="TestAesthetics-v1.safetensors", clip=str(tiny_clip_dir))["result"][0]
    images = [as_image_tensor(illustration(40, 30, 0))]
    path = str(world["input"] / "data" / "img.png")
    before = tree(world["outside"])
    counts = {"written": 0, "refused": 0, "skipped": 0}
    with swapping(world["input"] / "data", world["input"] / "evil", tmp_path):
        for i in range(1000):  # the node: each call's bucket differs from the last, so each call writes
            try:
                out = nodes.CityClfTag().tag(
                    model=[model], images=[images], thresholds=["0.5"], score_bucket=[("decile", "percent")[i % 2]],
                    tag_names=[""], separator=[", "], tiling=["auto"], combine=["mean"], write_sidecars=[True],
                    paths=[path])
                counts["skipped" if "skipped" in out["ui"]["text"][-1] else "written"] += 1
            except CityClfError:
                counts["refused"] += 1
        direct = {"updated": 0, "skipped": 0, "refused": 0}
        for i in range(1000):  # its writer, called directly
            try:
                report = update_sidecars([(path, [f"aesthetic_{i % 100}"])], owned, allowed_roots=[world["input"]])
                direct["skipped" if report.skipped else "updated"] += 1
            except CityClfError:
                direct["refused"] += 1
    print("Tag node:", counts, "update_sidecars:", direct)
    assert tree(world["outside"]) == before
    assert counts["written"] and direct["updated"]


def test_update_sidecars_never_writes_outside_under_a_sidecar_swap(world, tmp_path):
    from cityclf_core.sidecars import update_sidecars

    data = world["input"] / "data"
    (data / "img.txt").write_text("solo\n")
    os.symlink(world["outside"] / "img.txt", data / "evil.txt")
    before = tree(world["outside"])
    counts = {"updated": 0, "skipped": 0}
    with swapping(data / "img.txt", data / "evil.txt", tmp_path):
        for i in range(1000):
            report = update_sidecars([(data / "img.png", [f"aesthetic_{i % 100}"])], owned,
                                     allowed_roots=[world["input"]])
            counts["skipped" if report.skipped else "updated"] += 1
    print("sidecar swap:", counts)
    assert tree(world["outside"]) == before and counts["updated"]


@pytest.mark.parametrize("swap", ["folder", "file"])
def test_load_images_never_returns_an_outside_image_under_a_swap(world, tmp_path, swap):
    """Nor an outside name: the folder is listed (and its subfolders, recursively) through descriptors, so no
    name from outside appears in the images' paths, the "skipped" text or a refusal."""
    from importlib import import_module

    load = import_module("cityclf_pack.nodes").CityClfLoadImages()
    data = world["input"] / "data"
    (data / "sub").mkdir()
    save(data / "sub" / "inner.png", 3)
    (world["outside"] / "deep").mkdir()
    save(world["outside"] / "deep" / "far-away.png", 8)
    save(world["outside"] / "only-outside.png", 9)
    os.symlink(world["outside"] / "gone.png", world["outside"] / "dangling-outside.png")
    secret = np.asarray(Image.open(world["outside"] / "img.png").convert("RGB"))
    if swap == "folder":
        a, b = data, world["input"] / "evil"
    else:
        os.symlink(world["outside"] / "img.png", data / "evil.png")
        a, b = data / "img.png", data / "evil.png"
    outside_names = {"deep", "far-away", "only-outside", "dangling-outside", "gone.png", "img.txt"}
    counts = {"loaded": 0, "none": 0, "refused": 0}

    def no_outside_name(text):
        assert not [n for n in outside_names if n in text], f"an outside name in the node's output: {text}"

    with swapping(a, b, tmp_path):
        for i in range(1000):
            try:
                out = load.load(folder="data", recursive=bool(i % 2))
            except CityClfError as e:
                no_outside_name(str(e))
                counts["refused"] += 1
                continue
            for image in out["result"][0]:
                pixels = (image[0].numpy() * 255).round().astype(np.uint8)
                assert not np.array_equal(pixels, secret), "Load Images returned the outside image"
            for text in [*out["result"][1], *out["ui"]["text"]]:
                no_outside_name(text)
            counts["loaded"] += len(out["result"][0])
            counts["none"] += not out["result"][0]
    print(f"Load Images ({swap} swapped):", counts)
    assert counts["loaded"]


def test_write_tags_and_copy_move_destinations_never_write_outside_under_a_folder_swap(world, tmp_path):
    """The CLI's writers: --write-tags under the images' common folder, --copy/--move under the destination."""
    from cityclf_core.dataset import copy_or_move, write_tags
    from cityclf_core.kinds import get_kind
    from cityclf_core.scoring.results import HeadResult
    from cityclf_core.tags import TagRules

    data = world["input"] / "data"
    (data / "sub").mkdir()
    (world["input"] / "other").mkdir()
    images = [save(data / "sub" / "a.png", 1), save(world["input"] / "other" / "b.png", 2)]
    os.symlink(world["outside"], data / "evil", target_is_directory=True)
    (world["outside"] / "a.png").write_bytes(images[0].read_bytes())
    rows = [(str(p), {"Aes": HeadResult("Aes", get_kind("score"), ["score"], [0.72], 0.72, 1)}) for p in images]
    before = tree(world["outside"])
    counts = {"tags written": 0, "tags skipped": 0, "copied": 0, "moved": 0, "failed": 0}
    with swapping(data / "sub", data / "evil", tmp_path):
        for i in range(1000):
            outcome = write_tags(rows, TagRules.from_text("", "0.5", ("decile", "percent")[i % 2]))
            counts["tags written"] += outcome.changed
            counts["tags skipped"] += len(outcome.skipped)
    dest, src = world["output"] / "dest", world["input"] / "src"
    (dest / "sub").mkdir(parents=True)
    os.symlink(world["outside"], dest / "evil", target_is_directory=True)
    (src / "sub").mkdir(parents=True)
    with swapping(dest / "sub", dest / "evil", tmp_path):
        for i in range(1000):
            move = i % 2 == 1
            f = save(src / "sub" / f"f{i}.png", i)
            plan = copy_or_move([str(f)], [str(src)], dest, move=move)
            for t in plan:
                counts["failed" if t.error else "moved" if move else "copied"] += 1
    print("CLI writers:", counts)
    assert tree(world["outside"]) == before
    assert not [p for p in os.listdir(world["outside"]) if "cityclf" in p]
    assert counts["tags written"] and counts["copied"] and counts["moved"]
