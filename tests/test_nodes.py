"""The ComfyUI nodes, called directly as ComfyUI would (no ComfyUI needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT, as_image_tensor, illustration

from cityclf_core import ScoringModel, TransformersClipEncoder


@pytest.fixture
def nodes(pack, model_dir, monkeypatch, score_head_path, class_head_path):
    monkeypatch.setenv("CITYCLF_MODELS", str(model_dir))
    from importlib import import_module

    return import_module("cityclf_pack.nodes")


def test_registration_ids_and_category(nodes):
    mappings = nodes.NODE_CLASS_MAPPINGS
    assert set(mappings) >= {"CityClfLoader", "CityClfPredict"}
    assert all(k.startswith("CityClf") for k in mappings)
    assert set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == set(mappings)
    assert {cls.CATEGORY for cls in mappings.values()} == {"CityClassifiers"}


def test_every_input_and_output_has_a_tooltip(nodes):
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (kind, *opts) in spec.get(section, {}).items():
                assert opts and opts[0].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES), node_id
        assert all(cls.OUTPUT_TOOLTIPS), node_id
        assert getattr(cls, "DESCRIPTION", ""), node_id
        assert callable(getattr(cls(), cls.FUNCTION))


def test_loader_lists_local_heads_and_the_catalogue(nodes):
    choices = nodes.CityClfLoader.INPUT_TYPES()["required"]["head"][0]
    assert "TestCompression-v1.safetensors" in choices
    assert "CCAnime-Compression-v1.5.safetensors" in choices  # downloadable release


def load(nodes, head, clip, **kw):
    return nodes.CityClfLoader().load(head=head, clip=str(clip), **kw)["result"][0]


def test_loader_builds_a_model_and_chains(nodes, tiny_clip_dir):
    first = load(nodes, "TestAesthetics-v1.safetensors", tiny_clip_dir)
    both = load(nodes, "TestCompression-v1.safetensors", tiny_clip_dir, add_to=first)
    assert isinstance(both, ScoringModel)
    assert both.names == ["TestAesthetics-v1", "TestCompression-v1"]
    assert len({id(b.encoder) for b in both.bindings}) == 1  # one CLIP, loaded once
    again = load(nodes, "TestAesthetics-v1.safetensors", tiny_clip_dir)
    assert again.bindings[0].encoder is first.bindings[0].encoder  # kept loaded between runs
    assert first.names == ["TestAesthetics-v1"]  # chaining does not change the upstream model


def predict(nodes, model, images, **kw):
    args = dict(model=[model], images=images if isinstance(images, list) else [images], tiling=["auto"],
                combine=["mean"], never_upscale=[False])
    args.update({k: [v] for k, v in kw.items()})
    return nodes.CityClfPredict().predict(**args)


@pytest.fixture
def two_head_model(nodes, tiny_clip_dir):
    first = load(nodes, "TestAesthetics-v1.safetensors", tiny_clip_dir)
    return load(nodes, "TestCompression-v1.safetensors", tiny_clip_dir, add_to=first)


def test_predict_scores_every_image_of_a_batch(nodes, two_head_model):
    batch = as_image_tensor(*[illustration(96, 80, s) for s in range(4)])
    out = predict(nodes, two_head_model, batch)
    scores, labels, payload = out["result"]
    assert len(scores) == len(labels) == len(payload) == 4
    assert all(isinstance(s, float) for s in scores)
    assert len(set(scores)) == 4  # not image[0] four times
    direct = two_head_model.score(batch)
    assert scores == pytest.approx([r["TestAesthetics-v1"].score for r in direct])
    first = json.loads(payload[0])
    assert set(first) == {"TestAesthetics-v1", "TestCompression-v1"}
    assert set(first["TestCompression-v1"]["probs"]) == {"Pass", "JPEG", "WEBP"}
    assert len(out["ui"]["text"]) == 4 and out["ui"]["text"][0].startswith("#0: TestAesthetics-v1: ")


def test_predict_head_and_class_choice(nodes, two_head_model):
    batch = as_image_tensor(*[illustration(120, 100, s) for s in range(3)])
    out = predict(nodes, two_head_model, batch, head="TestCompression", score_class="JPEG")
    direct = two_head_model.score(batch)
    assert out["result"][0] == pytest.approx([r["TestCompression-v1"].value_of("JPEG") for r in direct])
    assert out["result"][1] == [r["TestCompression-v1"].label for r in direct]
    out = predict(nodes, two_head_model, batch, head="TestCompression-v1")
    assert out["result"][0] == pytest.approx([r["TestCompression-v1"].score for r in direct])
    with pytest.raises(Exception, match="no head 'Nope'"):
        predict(nodes, two_head_model, batch, head="Nope")


def test_predict_on_a_list_of_sizes_and_empty(nodes, two_head_model):
    images = [as_image_tensor(illustration(70, 70, 1), illustration(70, 70, 2)), as_image_tensor(illustration(200, 50))]
    out = predict(nodes, two_head_model, images)
    assert len(out["result"][0]) == 3
    empty = predict(nodes, two_head_model, torch.zeros(0, 64, 64, 3))
    assert empty["result"] == ([], [], [])


def test_predict_progress_and_interrupt(nodes, two_head_model, monkeypatch):
    from importlib import import_module

    bridge = import_module("cityclf_pack.nodes.comfy_bridge")
    updates = []

    class Bar:
        def __init__(self, total):
            pass

        def update_absolute(self, value, total=None, preview=None):
            updates.append((value, total))

    monkeypatch.setattr(bridge, "progress_bar", Bar)
    batch = as_image_tensor(*[illustration(100, 100, s) for s in range(3)])
    predict(nodes, two_head_model, batch, batch_size=2)
    assert updates[-1][0] == updates[-1][1] and len(updates) > 3

    class Interrupted(Exception):
        pass

    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) > 2:
            raise Interrupted

    monkeypatch.setattr(bridge, "check_interrupt", interrupt)
    with pytest.raises(Interrupted):
        predict(nodes, two_head_model, batch, batch_size=2)


class FakeClipVision:
    """Behaves like ComfyUI's CLIP_VISION: its own preprocessing, skipping the resize at image_size."""

    def __init__(self, model, image_size):
        self.model_ = model
        self.image_size = image_size
        self.image_mean = [0.48145466, 0.4578275, 0.40821073]
        self.image_std = [0.26862954, 0.26130258, 0.27577711]
        self.load_device = torch.device("cpu")
        self.shapes = []

    def encode_image(self, image, crop=True):
        self.shapes.append(tuple(image.shape))
        x = image[..., :3].movedim(-1, 1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise AssertionError("the pack must hand CLIP_VISION crops at its own size")
        x = torch.clip(x * 255, 0, 255).round() / 255
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        out = self.model_(pixel_values=(x - mean) / std)
        return {"image_embeds": out.image_embeds}

    def get_sd(self):
        return self.model_.state_dict()


def test_clip_vision_input_is_handed_crops_at_its_size(nodes, tiny_clip_dir):
    enc = TransformersClipEncoder.load(tiny_clip_dir)
    fake = FakeClipVision(enc.model, enc.image_size)
    model = nodes.CityClfLoader().load(head="TestCompression-v1.safetensors", clip_vision=fake)["result"][0]
    reference = load(nodes, "TestCompression-v1.safetensors", tiny_clip_dir)
    batch = as_image_tensor(*[illustration(150, 120, s) for s in range(2)])
    got = predict(nodes, model, batch)["result"][0]
    want = predict(nodes, reference, batch)["result"][0]
    assert got == pytest.approx(want, abs=1e-4)
    assert all(s[1:] == (32, 32, 3) for s in fake.shapes)


def test_package_import_outside_comfyui_registers_nothing():
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("pack", {str(ROOT / '__init__.py')!r},
                                                      submodule_search_locations=[{str(ROOT)!r}])
        m = importlib.util.module_from_spec(spec); sys.modules["pack"] = m; spec.loader.exec_module(m)
        print(len(m.NODE_CLASS_MAPPINGS), "comfy" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "False"]


def test_package_inside_a_comfyui_like_host_registers_nodes_and_keeps_yaml_paths(tmp_path):
    """With stand-ins for comfy and folder_paths, the pack registers its nodes and model folder."""
    fake = tmp_path / "fakecomfy"
    (fake / "comfy").mkdir(parents=True)
    (fake / "comfy" / "__init__.py").write_text("")
    (fake / "comfy" / "model_management.py").write_text("")
    (fake / "folder_paths.py").write_text(textwrap.dedent(f"""
        models_dir = {str(tmp_path / 'models')!r}
        folder_names_and_paths = {{"cityclassifiers": ([{str(tmp_path / 'from_yaml')!r}], set())}}
        def get_folder_paths(name): return folder_names_and_paths[name][0][:]
    """))
    code = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(fake)!r})
        spec = importlib.util.spec_from_file_location("pack", {str(ROOT / '__init__.py')!r},
                                                      submodule_search_locations=[{str(ROOT)!r}])
        m = importlib.util.module_from_spec(spec); sys.modules["pack"] = m; spec.loader.exec_module(m)
        import folder_paths
        print(sorted(m.NODE_CLASS_MAPPINGS), m.WEB_DIRECTORY)
        print(folder_paths.folder_names_and_paths["cityclassifiers"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "CityClfLoader" in lines[0] and "./web" in lines[0]
    assert str(tmp_path / "models" / "cityclassifiers") in lines[1]
    assert str(tmp_path / "from_yaml") in lines[1]
    assert lines[1].endswith(("{'.safetensors', '.pth'})", "{'.pth', '.safetensors'})"))  # .pth: LAION, waifu
