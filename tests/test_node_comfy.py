"""The nodes as ComfyUI users meet them, and the encoder interface the nodes rely on. Called directly, as ComfyUI calls them; no ComfyUI needed."""

from __future__ import annotations

import inspect
import os
import shutil

import pytest
import torch
from conftest import ROOT, as_image_tensor, illustration

from cityclf_core import ConfigError, TransformersClipEncoder
from cityclf_core.scoring.encoders import ComfyClipVisionEncoder, Encoder, TimedEncoder


@pytest.fixture
def nodes(pack, model_dir, monkeypatch, score_head_path, class_head_path):
    monkeypatch.setenv("CITYCLF_MODELS", str(model_dir))
    from importlib import import_module

    return import_module("cityclf_pack.nodes")


@pytest.fixture
def mod(pack):
    from importlib import import_module

    return lambda name: import_module(f"cityclf_pack.nodes.{name}")


# ---------------------------------------------------------------- outputs once, encoders declare


def test_outputs_are_declared_once_per_node(nodes, mod):
    common = mod("common")
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        outs = cls.OUTPUTS
        assert (cls.RETURN_TYPES, cls.RETURN_NAMES, cls.OUTPUT_IS_LIST, cls.OUTPUT_TOOLTIPS) == \
            common.declare_outputs(outs), node_id
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_IS_LIST) == \
            len(cls.OUTPUT_TOOLTIPS) == len(outs)
    assert len(nodes.NODE_CLASS_MAPPINGS["CityClfGate"].OUTPUTS) == 10
    with pytest.raises(ValueError, match="repeat"):
        common.declare_outputs([("INT", "a", False, "x"), ("INT", "a", False, "y")])
    with pytest.raises(ValueError, match="tooltip"):
        common.declare_outputs([("INT", "a", False, "")])


def test_encoders_declare_source_prepare_and_device(tiny_clip_dir):
    enc = TransformersClipEncoder.from_folder(tiny_clip_dir, name="tiny", device=torch.device("cpu"),
                                              dtype=torch.float32, source="/models/tiny")
    assert enc.source == "/models/tiny" and enc.device.type == "cpu"
    assert enc.prepare() is None  # part of the interface: nothing to do outside a model manager
    plain = TransformersClipEncoder.from_folder(tiny_clip_dir, name="tiny", device=torch.device("cpu"),
                                                dtype=torch.float32)
    assert plain.source == "tiny"
    timed = TimedEncoder(enc)
    assert timed.source == enc.source and timed.identity == enc.identity
    for cls in (TransformersClipEncoder, ComfyClipVisionEncoder, TimedEncoder):
        assert issubclass(cls, Encoder) and callable(cls.prepare)
    # nothing grafted from outside, no getattr fallbacks for the interface
    import cityclf_core.dataset.embed as embed
    import cityclf_core.dataset.from_store as from_store
    import cityclf_core.loading.clips as clips
    import cityclf_core.loading.models as models
    import cityclf_core.scoring.pipeline as pipeline

    for module in (clips, models, pipeline, embed, from_store):
        text = inspect.getsource(module)
        assert "encoder.source =" not in text and 'getattr(enc, "source"' not in text
        assert "getattr(g.encoder, \"source\"" not in text and "encoder.prepare is not None" not in text
    bridge_text = (ROOT / "nodes" / "comfy_bridge.py").read_text()
    assert "encoder.prepare =" not in bridge_text and "encoder.patcher =" not in bridge_text


def test_loaded_encoder_records_its_source(tiny_clip_dir):
    from cityclf_core.loading.clips import load_encoder

    enc = load_encoder(tiny_clip_dir, device="cpu")
    assert enc.source == str(tiny_clip_dir.resolve())


# ---------------------------------------------------------------- Predict alone is a prompt


def test_predict_is_an_output_node_that_still_feeds_others(nodes, tiny_clip_dir):
    cls = nodes.NODE_CLASS_MAPPINGS["CityClfPredict"]
    assert cls.OUTPUT_NODE is True and cls.RETURN_NAMES == ("score", "label", "json")
    model = nodes.CityClfLoader().load(head="TestAesthetics-v1.safetensors", clip=str(tiny_clip_dir))["result"][0]
    out = cls().predict(model=[model], images=[as_image_tensor(illustration(64, 64, 0))], tiling=["auto"],
                        combine=["mean"], never_upscale=[False])
    assert out["ui"]["text"][0].startswith("#0: TestAesthetics-v1: ") and len(out["result"][0]) == 1


# ---------------------------------------------------------------- portable CLIP names


@pytest.fixture
def models_here(tmp_path, tiny_clip_dir, score_head_path, monkeypatch):
    def make(where):
        heads = where / "cityclassifiers"
        (heads / "clip").mkdir(parents=True)
        shutil.copy(score_head_path, heads / score_head_path.name)
        shutil.copy(score_head_path.with_name(score_head_path.stem + ".config.json"), heads)
        shutil.copytree(tiny_clip_dir, heads / "clip" / "tiny-clip")
        monkeypatch.setenv("CITYCLF_MODELS", str(heads))
        return heads

    return make


def test_clip_choices_are_relative_and_survive_a_moved_models_folder(nodes, models_here, tmp_path):
    a = models_here(tmp_path / "alice")
    loader = nodes.CityClfLoader
    choices = loader.INPUT_TYPES()["required"]["clip"][0]
    assert "cityclassifiers/clip/tiny-clip" in choices
    assert not [c for c in choices if os.path.isabs(c)]
    old_absolute = str(a / "clip" / "tiny-clip")  # what workflows saved before relative names
    assert loader.VALIDATE_INPUTS(clip="cityclassifiers/clip/tiny-clip") is True
    assert loader.VALIDATE_INPUTS(clip=old_absolute) is True
    shutil.rmtree(a)
    b = models_here(tmp_path / "bob")  # another machine: another models folder
    assert loader.VALIDATE_INPUTS(clip="cityclassifiers/clip/tiny-clip") is True
    assert loader.VALIDATE_INPUTS(clip=old_absolute) is True  # .../cityclassifiers/clip/NAME maps to Bob's
    out = loader().load(head="TestAesthetics-v1.safetensors", clip="cityclassifiers/clip/tiny-clip")
    assert out["result"][0].bindings[0].encoder.source == str((b / "clip" / "tiny-clip").resolve())
    out = loader().load(head="TestAesthetics-v1.safetensors", clip=old_absolute)
    assert out["result"][0].bindings[0].encoder.name == "tiny-clip"
    message = loader.VALIDATE_INPUTS(clip="/nowhere/at/all")
    assert isinstance(message, str) and "models/cityclassifiers/clip/" in message


# ---------------------------------------------------------------- managed CLIPs


def test_managed_clip_releases_its_weights_and_reads_them_again(nodes, mod, tiny_clip_dir):
    managed = mod("managed_clip")
    cpu = torch.device("cpu")
    enc = managed.ManagedClipEncoder(tiny_clip_dir, "tiny-clip", str(tiny_clip_dir), torch.float32,
                                     devices=lambda: (cpu, cpu))
    views = torch.rand(2, 3, enc.image_size, enc.image_size)
    before = enc.encode(views)
    identity = enc.identity
    enc.release()  # what ComfyUI's unload triggers on the CPU
    assert not enc.loaded
    enc.prepare()
    assert enc.loaded and enc.identity == identity
    assert torch.allclose(enc.encode(views), before)
    enc.release()
    assert torch.allclose(enc.encode(views), before)  # encode reads the weights again on its own


def test_unload_callback_frees_only_where_moving_frees_nothing(mod, tiny_clip_dir):
    managed = mod("managed_clip")
    cpu = torch.device("cpu")
    enc = managed.ManagedClipEncoder(tiny_clip_dir, "tiny-clip", str(tiny_clip_dir), torch.float32,
                                     devices=lambda: (cpu, cpu))

    class Patcher:
        def __init__(self, load, offload):
            self.load_device, self.offload_device = load, offload

    enc._on_unload(Patcher(torch.device("cuda", 0), cpu), True)  # GPU -> CPU: ComfyUI moved it, keep it
    assert enc.loaded
    enc._on_unload(Patcher(cpu, cpu), False)  # a partial detach: keep
    assert enc.loaded
    enc._on_unload(Patcher(cpu, cpu), True)
    assert not enc.loaded


def test_comfy_module_is_named_after_the_clip(mod):
    m = mod("managed_clip").module_for("clip-vit-large-patch14-336", torch.nn.Linear(2, 2), torch.device("cpu"))
    assert type(m).__name__ == "CityClfCLIP[clip-vit-large-patch14-336]"
    assert isinstance(m, torch.nn.Module) and m.device == torch.device("cpu")


def test_loaders_share_one_managed_clip_while_a_model_holds_it(nodes, tiny_clip_dir):
    import gc

    a = nodes.CityClfLoader().load(head="TestAesthetics-v1.safetensors", clip=str(tiny_clip_dir))["result"][0]
    b = nodes.CityClfLoader().load(head="TestCompression-v1.safetensors", clip=str(tiny_clip_dir))["result"][0]
    assert a.bindings[0].encoder is b.bindings[0].encoder
    clips = __import__("cityclf_pack.cityclf_core.loading.clips", fromlist=["_CACHE"])
    del a, b
    gc.collect()
    # nothing process-wide keeps a CLIP once ComfyUI drops the model
    assert [key for key in clips._CACHE.keys() if key[0] == "comfyui"] == []


# ---------------------------------------------------------------- fresh sidecars


def test_tag_is_changed_follows_the_sidecars(nodes, tmp_path):
    tag = nodes.CityClfTag
    img = tmp_path / "a.png"
    img.write_bytes(b"x")
    args = dict(write_sidecars=[True], paths=[str(img)], thresholds=["0.5"])
    first = tag.IS_CHANGED(**args)
    assert first == tag.IS_CHANGED(**args)  # unchanged: cached
    img.with_suffix(".txt").write_text("solo\n")
    second = tag.IS_CHANGED(**args)
    assert second != first
    os.utime(img.with_suffix(".txt"), ns=(1, 1))
    assert tag.IS_CHANGED(**args) != second  # edited
    img.with_suffix(".txt").unlink()
    assert tag.IS_CHANGED(**args) == first  # deleted again: differs from the last run's state
    for linked in (tag.IS_CHANGED(write_sidecars=[True]), tag.IS_CHANGED(write_sidecars=[True], paths=(None,))):
        assert linked != linked  # paths from another node (ComfyUI passes (None,)): NaN, always runs again
    assert tag.IS_CHANGED(write_sidecars=[False], paths=[str(img)]) == ""


# ---------------------------------------------------------------- Cancel within a view or two


def test_cancel_is_checked_before_every_single_view_forward_on_cpu(mod):
    managed = mod("managed_clip")

    class Counting(Encoder):
        image_size, embed_dim, identity, name = 8, 4, "x", "counting"

        def __init__(self, device):
            self._device, self.batches = torch.device(device), []

        @property
        def device(self):
            return self._device

        def encode(self, views):
            self.batches.append(int(views.shape[0]))
            return torch.zeros(views.shape[0], 4)

    class Cancelled(Exception):
        pass

    checks = []

    def check():
        checks.append(1)
        if len(checks) == 3:
            raise Cancelled

    inner = Counting("cpu")
    enc = managed.InterruptibleEncoder(inner, check=check)
    with pytest.raises(Cancelled):
        enc.encode(torch.zeros(8, 3, 8, 8))
    assert inner.batches == [1, 1]  # stopped after two one-view forwards, not after the chunk of 8
    ok = managed.InterruptibleEncoder(Counting("cpu"), check=lambda: None)
    assert ok.encode(torch.zeros(5, 3, 8, 8)).shape == (5, 4) and ok.inner.batches == [1] * 5
    gpu = managed.InterruptibleEncoder(Counting("cuda"), check=lambda: None)
    gpu.encode(torch.zeros(8, 3, 8, 8))
    assert gpu.inner.batches == [8]  # a GPU chunk stays one forward
    assert enc.identity == "x" and enc.image_size == 8 and enc.source == "counting"


def test_predict_scores_through_the_interruptible_encoder_unchanged(nodes, tiny_clip_dir, encoder, score_head):
    from cityclf_core import ScoringModel

    batch = as_image_tensor(*[illustration(96, 80, s) for s in range(3)])
    model = nodes.CityClfLoader().load(head="TestAesthetics-v1.safetensors", clip=str(tiny_clip_dir))["result"][0]
    got = nodes.CityClfPredict().predict(model=[model], images=[batch], tiling=["auto"], combine=["mean"],
                                         never_upscale=[False])["result"][0]
    want = [r[score_head.name].score for r in ScoringModel().add(score_head, encoder).score(batch)]
    assert got == pytest.approx(want, abs=1e-5)


# ---------------------------------------------------------------- precision with CLIP_VISION


def test_precision_with_clip_vision_is_said_to_be_ignored(nodes, tiny_clip_dir):
    from test_nodes import FakeClipVision

    enc = TransformersClipEncoder.load(tiny_clip_dir)
    fake = FakeClipVision(enc.model, enc.image_size)
    loader = nodes.CityClfLoader
    assert "Ignored when clip_vision is connected" in loader.INPUT_TYPES()["required"]["precision"][1]["tooltip"]
    out = loader().load(head="TestAesthetics-v1.safetensors", precision="bf16", clip_vision=fake)
    assert any("precision bf16 not applied" in t for t in out["ui"]["text"])
    out = loader().load(head="TestAesthetics-v1.safetensors", precision="auto", clip_vision=fake)
    assert not any("not applied" in t for t in out["ui"]["text"])


def test_load_images_refuses_with_a_clear_message(nodes, tmp_path, monkeypatch):
    monkeypatch.delenv("CITYCLF_ALLOWED_ROOTS", raising=False)
    with pytest.raises(ConfigError, match="CITYCLF_ALLOWED_ROOTS"):
        nodes.CityClfLoadImages().load(folder=str(tmp_path))


# ---------------------------------------------------------------- Show Scores on small images


@pytest.mark.parametrize("w, h", [(64, 64), (96, 80), (64, 40)])
def test_show_fits_every_character_on_small_images(w, h):
    from PIL import Image, ImageDraw

    from cityclf_core.annotate import caption, font, layout

    lines = ["TestAesthetics-v1: 0.734 (73%)", "TestCompression-v1: JPEG (not-pass 0.81)"]
    draw = ImageDraw.Draw(Image.new("RGB", (w, h)))
    size, pad, wrapped = layout(draw, lines, w, h, 9)
    assert all(draw.textlength(x, font=font(size)) <= w - 2 * pad for x in wrapped)  # nothing clipped
    assert (size + pad) * len(wrapped) + pad <= h  # nothing below the image
    if h >= 64:  # all of it, wrapped, not cut short
        assert "".join(wrapped).replace(" ", "") == "".join(lines).replace(" ", "")
    out = caption(Image.new("RGB", (w, h), (200, 200, 200)), lines)
    assert out.size == (w, h)


# ---------------------------------------------------------------- the ComfyUI harness


def test_comfyui_harness_checks_its_input(tmp_path):
    import subprocess

    script = ROOT / "scripts" / "comfyui_harness.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
    repo = tmp_path / "not-comfy"
    repo.mkdir()
    (repo / "README").write_text("x\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    out = subprocess.run(["bash", str(script), str(repo), str(tmp_path / "target")], capture_output=True, text=True)
    assert out.returncode == 2 and "not a ComfyUI tree" in out.stderr
    assert (tmp_path / "target" / "README").is_file() and not (tmp_path / "target" / "venv").exists()


def test_comfyui_harness_installs_torch_from_the_index_asked(tmp_path):
    """TORCH_INDEX=cpu takes torch, torchvision and torchaudio from PyTorch's CPU index; ComfyUI's own
    requirements come from pip's index (a fake python and pip record what would be installed)."""
    import subprocess

    script = ROOT / "scripts" / "comfyui_harness.sh"
    comfy = tmp_path / "comfy"
    comfy.mkdir()
    (comfy / "main.py").write_text("")
    (comfy / "requirements.txt").write_text("torch\ntorchaudio\naiohttp\n")
    log = tmp_path / "pip.log"
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n"
                    'if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin"\n'
                    f'  printf \'#!/bin/sh\\necho "$*" >> {log}\\n\' > "$3/bin/pip"; chmod +x "$3/bin/pip"\n'
                    '  printf \'#!/bin/sh\\nexit 1\\n\' > "$3/bin/python"; chmod +x "$3/bin/python"; fi\n')
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "TORCH_INDEX": "cpu"}
    subprocess.run(["bash", str(script), str(comfy), str(comfy)], env=env, capture_output=True, text=True)
    first, second = log.read_text().splitlines()[:2]
    assert first.split() == ["install", "-q", "--index-url", "https://download.pytorch.org/whl/cpu",
                             "torch", "torchvision", "torchaudio"]
    assert "--index-url" not in second and "requirements-without-torch.txt" in second
    bad = subprocess.run(["bash", str(script), str(comfy), str(comfy)], env={**env, "TORCH_INDEX": "cuda"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "give cpu or an index URL" in bad.stderr
