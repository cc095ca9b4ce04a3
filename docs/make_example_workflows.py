"""Writes the UI-format example workflows in example_workflows/ (run from the repo root).

Our nodes' widget order is read from their INPUT_TYPES, so the files stay in
step with the code (tests/test_example_workflows.py checks that they do); the
few core nodes used are described by hand below. Thumbnails are rendered from
ComfyUI itself by docs/screenshot_workflows.py.

    python docs/make_example_workflows.py
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "example_workflows"

# core nodes: (link inputs [(name, type)], widget names, outputs [(name, type)])
CORE = {
    "CheckpointLoaderSimple": ([], ["ckpt_name"], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("clip", "CLIP")], ["text"], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([], ["width", "height", "batch_size"], [("LATENT", "LATENT")]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")],
                 ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
                 [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], ["filename_prefix"], []),
    "PreviewImage": ([("images", "IMAGE")], [], []),
    "CLIPVisionLoader": ([], ["clip_name"], [("CLIP_VISION", "CLIP_VISION")]),
    "PreviewAny": ([("source", "*")], [], []),
    "Note": ([], ["text"], []),
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}

#: CLIP files for the core Load CLIP Vision node, listed only where the file surely exists. ViT-L/14-336's hub
#: repo has no model.safetensors (only pytorch_model.bin): the Compression head's loader fetches that CLIP
#: itself (clip "auto" = its pairing, converted once to safetensors through torch's weights-only loader).
CLIP_FILES = {
    224: ("clip-vit-large-patch14.safetensors",
          "https://huggingface.co/openai/clip-vit-large-patch14/resolve/main/model.safetensors"),
}
PROMPT = ("masterpiece, best quality, 1girl, solo, upper body, looking at viewer, smile, outdoors, cherry blossoms")
NEGATIVE = "lowres, bad anatomy, bad hands, text, error, worst quality, jpeg artifacts, watermark, blurry"
CHECKPOINT = "your-anime-checkpoint.safetensors"


def load_nodes():
    """The pack's nodes, imported as ComfyUI would (a package by path), reusing an earlier import."""
    if "cityclf_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("cityclf_pack", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["cityclf_pack"] = pack
        spec.loader.exec_module(pack)
    return importlib.import_module("cityclf_pack.nodes"), importlib.import_module("cityclf_pack.cityclf_core")


NODES, CORE_LIB = load_nodes()


def our_spec(node_type: str):
    cls = NODES.NODE_CLASS_MAPPINGS[node_type]
    spec = cls.INPUT_TYPES()
    links, widgets = [], []
    for section in ("required", "optional"):
        for name, (kind, *opts) in spec.get(section, {}).items():
            opts = opts[0] if opts else {}
            is_widget = isinstance(kind, list) or (kind in WIDGET_TYPES and not opts.get("forceInput"))
            (widgets if is_widget else links).append((name, kind if not isinstance(kind, list) else "COMBO"))
    widget_names = [n for n, _ in widgets]
    outputs = list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES))
    return links, widget_names, outputs, dict(widgets)


class Workflow:
    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, node_type, pos, widgets: dict, size=(320, 160), title=None, models=None) -> dict:
        if node_type in CORE:
            links, widget_names, outputs = CORE[node_type]
            widget_kinds = {}
        else:
            links, widget_names, outputs, widget_kinds = our_spec(node_type)
        unknown = set(widgets) - set(widget_names)
        assert not unknown, f"{node_type}: unknown widgets {unknown}"
        defaults = {}
        if node_type not in CORE:
            spec = NODES.NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES()
            for section in ("required", "optional"):
                for name, (kind, *opts) in spec.get(section, {}).items():
                    if name in widget_names:
                        o = opts[0] if opts else {}
                        defaults[name] = o.get("default", kind[0] if isinstance(kind, list) else None)
        missing = [w for w in widget_names if w not in widgets and w not in defaults]
        assert not missing, f"{node_type}: give values for {missing}"
        node = {
            "id": len(self.nodes) + 1,
            "type": node_type,
            "pos": list(pos),
            "size": list(size),
            "flags": {},
            "order": len(self.nodes),
            "mode": 0,
            "inputs": [{"name": n, "type": t, "link": None} for n, t in links],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
            "properties": {"Node name for S&R": node_type, "cnr_id": "cityclf" if node_type.startswith("CityClf")
                           else "comfy-core"},
            "widgets_values": [widgets.get(w, defaults.get(w)) for w in widget_names],
        }
        if title:
            node["title"] = title
        if models:
            node["properties"]["models"] = models
        node["_widget_kinds"] = widget_kinds
        self.nodes.append(node)
        return node

    def link(self, src: dict, out_name: str, dst: dict, in_name: str) -> None:
        out_slot = next(i for i, o in enumerate(src["outputs"]) if o["name"] == out_name)
        inputs = dst["inputs"]
        slot = next((i for i, x in enumerate(inputs) if x["name"] == in_name), None)
        if slot is None:  # a widget turned into an input
            kind = dst["_widget_kinds"].get(in_name, "STRING")
            inputs.append({"name": in_name, "type": kind, "widget": {"name": in_name}, "link": None})
            slot = len(inputs) - 1
        link_id = len(self.links) + 1
        kind = src["outputs"][out_slot]["type"]
        self.links.append([link_id, src["id"], out_slot, dst["id"], slot, kind])
        src["outputs"][out_slot]["links"].append(link_id)
        inputs[slot]["link"] = link_id

    def to_json(self) -> dict:
        nodes = [{k: v for k, v in n.items() if k != "_widget_kinds"} for n in self.nodes]
        return {
            "id": "00000000-0000-4000-8000-000000000000",
            "revision": 0,
            "last_node_id": len(nodes),
            "last_link_id": len(self.links),
            "nodes": nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}},
            "version": 0.4,
        }


def release(name: str):
    return CORE_LIB.find_release(name)


def other_head(name: str):
    return next(o for o in CORE_LIB.OTHER_HEADS if o.name == name)


def head_model(name: str) -> list[dict]:
    r = release(name) or other_head(name)
    return [{"name": r.filename, "url": r.url, "directory": "cityclassifiers"}]


def clip_model(size: int) -> list[dict]:
    name, url = CLIP_FILES[size]
    return [{"name": name, "url": url, "directory": "clip_vision"}]


def generation(w: Workflow, batch: int, y=0):
    ckpt = w.add("CheckpointLoaderSimple", (0, y), {"ckpt_name": CHECKPOINT}, (320, 100))
    pos = w.add("CLIPTextEncode", (360, y), {"text": PROMPT}, (400, 160), title="Positive")
    neg = w.add("CLIPTextEncode", (360, y + 230), {"text": NEGATIVE}, (400, 160), title="Negative")
    latent = w.add("EmptyLatentImage", (0, y + 160), {"width": 832, "height": 1216, "batch_size": batch}, (320, 110))
    sampler = w.add("KSampler", (800, y), {"seed": 1, "control_after_generate": "randomize", "steps": 28,
                                           "cfg": 6.0, "sampler_name": "euler_ancestral", "scheduler": "normal",
                                           "denoise": 1.0}, (300, 262))
    vae = w.add("VAEDecode", (1130, y), {}, (200, 50))
    w.link(ckpt, "CLIP", pos, "clip")
    w.link(ckpt, "CLIP", neg, "clip")
    w.link(ckpt, "MODEL", sampler, "model")
    w.link(pos, "CONDITIONING", sampler, "positive")
    w.link(neg, "CONDITIONING", sampler, "negative")
    w.link(latent, "LATENT", sampler, "latent_image")
    w.link(sampler, "LATENT", vae, "samples")
    w.link(ckpt, "VAE", vae, "vae")
    return vae, sampler


def clip_vision(w: Workflow, clip_size: int, pos):
    return w.add("CLIPVisionLoader", pos, {"clip_name": CLIP_FILES[clip_size][0]}, (320, 60),
                 models=clip_model(clip_size))


def loader(w: Workflow, head: str, clip, pos, add_to=None):
    """A head loader fed by `clip` (a CLIPVisionLoader node, shared by heads on the same CLIP), or None: the
    loader fetches the head's paired CLIP itself."""
    filename = head_model(head)[0]["name"]
    ld = w.add("CityClfLoader", pos, {"head": filename}, (320, 180), models=head_model(head))
    if clip is not None:
        w.link(clip, "CLIP_VISION", ld, "clip_vision")
    if add_to is not None:
        w.link(add_to, "model", ld, "add_to")
    return ld


def generate_and_score(w: Workflow, batch: int):
    """Generation, then CityAesthetics (on its ViT-L/14) scoring the decoded images: (VAE decode, Predict)."""
    images, _ = generation(w, batch=batch)
    ld = loader(w, "CityAesthetics-Anime-v1.8", clip_vision(w, 224, (1130, 120)), (1130, 220))
    predict = w.add("CityClfPredict", (1500, 0), {}, (320, 260))
    w.link(ld, "model", predict, "model")
    w.link(images, "IMAGE", predict, "images")
    return images, predict


def gate_workflow() -> dict:
    w = Workflow()
    w.add("Note", (0, -220), {"text": (
        "Generate a batch, score it with CityAesthetics, keep only images scoring at least 0.6, save them.\n"
        "Pick any anime checkpoint in the loader. The aesthetic head and its CLIP (ViT-L/14) are listed in the "
        "workflow, so ComfyUI offers to download them.\nWhen nothing passes, Save is skipped quietly.")},
        (700, 140))
    images, predict = generate_and_score(w, batch=4)
    gate = w.add("CityClfGate", (1860, 0), {"rule": "at least", "threshold": 0.6}, (320, 330))
    save = w.add("SaveImage", (2220, 0), {"filename_prefix": "cityclf/passed"}, (400, 420))
    rejected = w.add("PreviewImage", (2220, 460), {}, (400, 300), title="Rejected")
    w.link(images, "IMAGE", gate, "images")
    w.link(predict, "score", gate, "scores")
    w.link(gate, "passed", save, "images")
    w.link(gate, "failed", rejected, "images")
    return w.to_json()


def tag_workflow() -> dict:
    w = Workflow()
    w.add("Note", (0, -240), {"text": (
        "Tag a folder of images with three heads in one pass per CLIP: the aesthetic bucket "
        "(aesthetic_70), chromatic_aberration, jpeg_artifacts / webp_artifacts.\n"
        "Set the folder (inside ComfyUI/input, or the output folder). With write_sidecars on, tags go to "
        "image.txt beside each image; rerunning replaces only these tags and keeps the rest of the file.\n"
        "The Tag node lists every image's tags after a run.")}, (700, 160))
    folder = w.add("CityClfLoadImages", (0, 0), {"folder": "dataset", "recursive": False}, (320, 160))
    vit_l = clip_vision(w, 224, (0, 520))
    aes = loader(w, "CityAesthetics-Anime-v1.8", vit_l, (0, 620))
    ca = loader(w, "CCAnime-ChromaticAberration-v1.16", vit_l, (360, 620), add_to=aes)
    comp = loader(w, "CCAnime-Compression-v1.5", None, (720, 620), add_to=ca)  # its CLIP: fetched by the loader
    tag = w.add("CityClfTag", (1100, 0), {"thresholds": "0.5", "score_bucket": "decile", "write_sidecars": True},
                (360, 420))
    show = w.add("CityClfShow", (1500, 0), {}, (420, 460))
    w.link(comp, "model", tag, "model")
    w.link(folder, "images", tag, "images")
    w.link(folder, "paths", tag, "paths")
    w.link(folder, "images", show, "images")
    w.link(tag, "tags", show, "labels")
    return w.to_json()


def best_of_n_workflow() -> dict:
    w = Workflow()
    w.add("Note", (0, -220), {"text": (
        "Best of N: generate 8, score them with CityAesthetics, keep the best 2 and save them, with their "
        "scores drawn on a preview. Change top_k and the batch size as you like.")}, (700, 120))
    images, predict = generate_and_score(w, batch=8)
    sort = w.add("CityClfSort", (1860, 0), {"order": "best first", "top_k": 2}, (320, 200))
    save = w.add("SaveImage", (2220, 0), {"filename_prefix": "cityclf/best"}, (400, 420))
    show = w.add("CityClfShow", (1860, 260), {}, (320, 300))
    preview = w.add("PreviewImage", (2220, 460), {}, (400, 300), title="Best, with scores")
    w.link(images, "IMAGE", sort, "images")
    w.link(predict, "score", sort, "scores")
    w.link(sort, "images", save, "images")
    w.link(sort, "images", show, "images")
    w.link(sort, "scores", show, "scores")
    w.link(show, "images", preview, "images")
    return w.to_json()


def compare_workflow() -> dict:
    w = Workflow()
    w.add("Note", (0, -260), {"text": (
        "Compare three aesthetic scorers on the same images: CityAesthetics (score 0..1), LAION's aesthetic "
        "predictor and waifu-scorer v3 (ratings 0..10, shown as 6.3/10; their score for Gate and Sort is "
        "rating / 10). All three run on ViT-L/14, so the images go through CLIP once.\n"
        "Put the images in ComfyUI/input/compare. LAION's file downloads from GitHub and waifu-scorer's is "
        "model.pth on Hugging Face: save them in models/cityclassifiers under the names the loaders show. "
        "The .pth files are read weights-only and converted once to .safetensors beside them.\n"
        "The JSON preview lists every head's score, label and rating per image.")}, (760, 180))
    folder = w.add("CityClfLoadImages", (0, 0), {"folder": "compare", "recursive": False}, (320, 160))
    vit_l = clip_vision(w, 224, (0, 520))
    city = loader(w, "CityAesthetics-Anime-v1.8", vit_l, (0, 620))
    laion = loader(w, "LAION-Aesthetic-v2", vit_l, (360, 620), add_to=city)
    waifu = loader(w, "waifu-scorer-v3", vit_l, (720, 620), add_to=laion)
    predict = w.add("CityClfPredict", (1100, 0), {}, (360, 300))
    show = w.add("CityClfShow", (1500, 0), {}, (420, 460))
    scores = w.add("PreviewAny", (1500, 520), {}, (420, 300), title="Scores (JSON)")
    w.link(waifu, "model", predict, "model")
    w.link(folder, "images", predict, "images")
    w.link(folder, "images", show, "images")
    w.link(predict, "json", show, "json")
    w.link(predict, "json", scores, "source")
    return w.to_json()


WORKFLOWS = {
    "score_gate_save": gate_workflow,
    "tag_folder": tag_workflow,
    "best_of_n": best_of_n_workflow,
    "compare_aesthetic_scorers": compare_workflow,
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, make in WORKFLOWS.items():
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(make(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
