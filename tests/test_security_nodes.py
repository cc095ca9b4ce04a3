"""The Tag and Load Images nodes touch files only inside the allowed roots.

A prompt comes from whoever can reach the server. It is driven here with absolute paths, `../`
paths and symlinks that lead out of the allowed roots; nothing outside is read or written.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import as_image_tensor, illustration
from PIL import Image

from cityclf_core import ConfigError


@pytest.fixture
def world(tmp_path, monkeypatch, pack, model_dir, score_head_path):
    """input/ and output/ (ComfyUI's folders), extra/ (opted in by env), outside/ (a victim folder)."""
    from importlib import import_module

    bridge = import_module("cityclf_pack.nodes.comfy_bridge")
    dirs = {n: tmp_path / n for n in ("input", "output", "extra", "outside")}
    for d in dirs.values():
        d.mkdir()
    monkeypatch.setattr(bridge, "input_dir", lambda: str(dirs["input"]))
    monkeypatch.setattr(bridge, "output_dir", lambda: str(dirs["output"]))
    monkeypatch.setenv("CITYCLF_ALLOWED_ROOTS", str(dirs["extra"]))
    monkeypatch.setenv("CITYCLF_MODELS", str(model_dir))
    for name in ("victim.png", "secret.png"):
        Image.fromarray(illustration(40, 30, 1)).save(dirs["outside"] / name)
    (dirs["outside"] / "victim.txt").write_text("do not touch\n")
    (dirs["outside"] / "settings.yaml").write_text("key: value\n")
    return dirs


def snapshot(folder):
    out = {}
    for root, subdirs, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns, open(p, "rb").read() if os.path.isfile(p) else None)
    return out


@pytest.fixture
def tag(pack, tiny_clip_dir):
    from importlib import import_module

    nodes = import_module("cityclf_pack.nodes")
    model = nodes.CityClfLoader().load(head="TestAesthetics-v1.safetensors", clip=str(tiny_clip_dir))["result"][0]

    def run(paths: list[str]):
        images = as_image_tensor(*[illustration(40, 30, i) for i in range(len(paths))])
        return nodes.CityClfTag().tag(model=[model], images=[images], thresholds=["0.5"], score_bucket=["decile"],
                                      tag_names=["TestAesthetics = pwned"], separator=[", "], tiling=["auto"],
                                      combine=["mean"], write_sidecars=[True], paths=["\n".join(paths)])

    return run


def inside_image(folder, name="img.png"):
    Image.fromarray(illustration(40, 30, 0)).save(folder / name)
    return folder / name


@pytest.mark.parametrize("how", ["absolute", "dotdot", "yaml", "dir-link", "dir-link-dotdot"])
def test_tag_refuses_paths_out_of_the_roots_and_writes_nothing(world, tag, how):
    ok = inside_image(world["input"])
    (world["outside"] / "deep").mkdir()
    os.symlink(world["outside"] / "deep", world["input"] / "escape", target_is_directory=True)
    target = {
        "absolute": str(world["outside"] / "victim.png"),
        "dotdot": "../outside/victim.png",  # relative to the input folder
        "yaml": str(world["outside"] / "settings.yaml"),  # the attack the issue describes: creates settings.txt
        "dir-link": "escape/../victim.png",  # textually inside input/, really outside/victim.png
        "dir-link-dotdot": str(world["input"] / "escape" / ".." / "victim.png"),
    }[how]
    before = snapshot(world["outside"])
    with pytest.raises(ConfigError, match="outside the folders this node may use") as e:
        tag([str(ok), target])
    assert "CITYCLF_ALLOWED_ROOTS" in str(e.value)
    assert snapshot(world["outside"]) == before
    assert not (world["input"] / "img.txt").exists()  # checked before anything is written


def test_tag_refuses_an_image_link_out_of_the_roots(world, tag):
    link = world["input"] / "link.png"
    os.symlink(world["outside"] / "victim.png", link)
    before = snapshot(world["outside"])
    with pytest.raises(ConfigError, match="outside the folders"):
        tag([str(link)])
    assert snapshot(world["outside"]) == before and not (world["input"] / "link.txt").exists()


def test_tag_does_not_write_through_a_sidecar_link_out_of_the_roots(world, tag):
    img = inside_image(world["input"])
    os.symlink(world["outside"] / "victim.txt", world["input"] / "img.txt")
    other = inside_image(world["output"], "b.png")
    before = snapshot(world["outside"])
    out = tag([str(img), str(other)])
    assert snapshot(world["outside"]) == before
    text = "\n".join(out["ui"]["text"])
    assert "1 updated" in text and "1 skipped" in text and "outside the allowed folders" in text
    assert (world["output"] / "b.txt").read_text().startswith("pwned_")  # the allowed one is written
    assert os.path.islink(world["input"] / "img.txt")


def test_tag_writes_inside_input_output_and_opted_in_roots(world, tag):
    files = [inside_image(world["input"], "a.png"), inside_image(world["output"], "b.png"),
             inside_image(world["extra"], "c.png")]
    os.makedirs(world["input"] / "sub")
    rel = inside_image(world["input"] / "sub", "d.png")
    out = tag([str(f) for f in files] + ["sub/d.png"])
    assert "4 updated" in out["ui"]["text"][-1]
    for f in [*files, rel]:
        assert f.with_suffix(".txt").read_text().startswith("pwned_")
    assert not [p for p in world["input"].iterdir() if p.name.endswith(".cityclf-tmp")]


@pytest.fixture
def load_images(pack):
    from importlib import import_module

    return import_module("cityclf_pack.nodes").CityClfLoadImages()


def test_load_images_refuses_folders_out_of_the_roots(world, load_images):
    os.symlink(world["outside"], world["input"] / "escape", target_is_directory=True)
    for folder in (str(world["outside"]), "../outside", "escape", "/etc", "~"):
        with pytest.raises(ConfigError, match="outside the folders this node may use"):
            load_images.load(folder=folder)


def test_load_images_skips_file_links_out_of_the_roots(world, load_images, monkeypatch):
    data = world["input"] / "data"
    data.mkdir()
    inside_image(data, "ok.png")
    os.symlink(world["outside"] / "secret.png", data / "secret.png")
    os.symlink(world["outside"], data / "sub", target_is_directory=True)
    os.symlink(data / "loop-b.png", data / "loop-a.png")  # a loop: skipped and reported, like the CLI's walk
    os.symlink(data / "loop-a.png", data / "loop-b.png")
    opened = []
    real_open = Image.open

    def spy(fp, *a, **kw):
        opened.append(os.path.realpath(str(fp)) if isinstance(fp, (str, os.PathLike)) else fp)
        return real_open(fp, *a, **kw)

    monkeypatch.setattr(Image, "open", spy)
    real_os_open, touched = os.open, []

    def os_spy(path, *a, **kw):
        touched.append(os.path.realpath(path) if isinstance(path, (str, os.PathLike)) else path)
        return real_os_open(path, *a, **kw)

    monkeypatch.setattr(os, "open", os_spy)
    import builtins

    real_builtin_open = builtins.open

    def open_spy(file, *a, **kw):
        if isinstance(file, (str, os.PathLike)):
            touched.append(os.path.realpath(file))
        return real_builtin_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", open_spy)
    for recursive in (False, True):
        out = load_images.load(folder="data", recursive=recursive)
        assert [os.path.basename(p) for p in out["result"][1]] == ["ok.png"]
        assert any("secret.png" in line and "outside the allowed folders" in line for line in out["ui"]["text"])
        assert any("loop-a.png" in line and "symbolic link loop" in line for line in out["ui"]["text"])
    outside = os.path.realpath(world["outside"])
    assert not [p for p in opened + touched if isinstance(p, str) and p.startswith(outside)]
    assert json.dumps(out["ui"])  # the report is plain text


def test_nul_bytes_and_over_long_paths_are_the_usual_clear_refusal(world, tag, load_images):
    for bad in ("data\0.png", "x" * 300 + ".png", "/".join(["d"] * 2100) + "/img.png"):
        with pytest.raises(ConfigError, match="NUL byte|longer than"):
            tag([bad])
        with pytest.raises(ConfigError, match="NUL byte|longer than"):
            load_images.load(folder=bad)
