"""End to end in a real, headless ComfyUI: the pack loads, its nodes run over HTTP.

Runs when COMFYUI_DIR points at a ComfyUI checkout with its requirements
installed (e.g. built by scripts/comfyui_harness.sh, which makes
COMFYUI_DIR/venv); skipped otherwise. ComfyUI is started on the CPU with this
repo on an extra custom_nodes path and tiny test models on an extra
`cityclassifiers` model path (extra_model_paths.yaml), nothing copied into it:

    COMFYUI_DIR=/tmp/comfyui python -m pytest tests/test_comfyui_e2e.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch
from conftest import ROOT, illustration

from cityclf_core.samples import build_tiny_clip

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR,
    reason="set COMFYUI_DIR to a ComfyUI checkout with its requirements installed to run the end-to-end tests "
           "(scripts/comfyui_harness.sh builds one from a ComfyUI git checkout)",
)
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}


def comfy_python(folder: Path) -> str:
    for candidate in (os.environ.get("COMFYUI_PYTHON"), folder / "venv" / "bin" / "python"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Comfy:
    def __init__(self, url: str, log: Path, proc=None):
        self.url, self.log, self.proc = url, log, proc

    def rss(self) -> int:
        """The server's resident memory, in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def post(self, path: str, payload: dict) -> int:
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post_prompt(self, prompt: dict) -> tuple[int, dict]:
        body = json.dumps({"prompt": prompt, "client_id": uuid.uuid4().hex}).encode()
        req = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        status, reply = self.post_prompt(prompt)
        assert status == 200, f"prompt refused: {reply}"
        pid = reply["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{pid}")
            if pid in history and history[pid].get("status", {}).get("completed") is not None:
                entry = history[pid]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.5)
        raise AssertionError(f"prompt {pid} did not finish in {timeout}s; log tail:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_clip_dir, score_head_path, class_head_path):
    base = tmp_path_factory.mktemp("comfy-e2e")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "cityclf").symlink_to(ROOT, target_is_directory=True)
    heads = base / "models" / "cityclassifiers"
    (heads / "clip").mkdir(parents=True)
    for p in (score_head_path, class_head_path):
        shutil.copy(p, heads / p.name)
        shutil.copy(p.with_name(p.stem + ".config.json"), heads / (p.stem + ".config.json"))
    shutil.copytree(tiny_clip_dir, heads / "clip" / "tiny-clip")
    # a CLIP large enough (230 MB in fp32) that freeing it shows in the server's resident memory
    build_tiny_clip(heads / "clip" / "big-clip", image_size=32, patch_size=8, hidden_size=768, layers=8, heads=12,
                    seed=3)
    (base / "extra_model_paths.yaml").write_text(
        f"cityclf_test:\n    base_path: {base}\n    custom_nodes: custom_nodes\n"
        f"    cityclassifiers: models/cityclassifiers\n"
    )
    for d in ("output", "input", "temp"):
        (base / d).mkdir()
    return base


def start_comfy(workspace: Path, log_name: str = "server.log"):
    folder = Path(COMFYUI_DIR)
    assert (folder / "main.py").is_file(), f"COMFYUI_DIR={folder} has no main.py"
    port = free_port()
    log = workspace / log_name
    cmd = [comfy_python(folder), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--extra-model-paths-config", str(workspace / "extra_model_paths.yaml"),
           "--output-directory", str(workspace / "output"), "--input-directory", str(workspace / "input"),
           "--temp-directory", str(workspace / "temp")]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    server = Comfy(f"http://127.0.0.1:{port}", log, proc)
    deadline = time.time() + 240
    while True:
        try:
            server.get("/system_stats")
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"ComfyUI did not start; log tail:\n{server.tail()}")
            time.sleep(1)


def stop_comfy(server: Comfy) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()


@pytest.fixture(scope="module")
def comfy(workspace):
    server = start_comfy(workspace)
    yield server
    stop_comfy(server)


@pytest.fixture(scope="module")
def object_info(comfy):
    return comfy.get("/object_info")


def test_every_node_of_the_pack_is_registered(comfy, object_info, pack):
    from importlib import import_module

    ours = set(import_module("cityclf_pack.nodes").NODE_CLASS_MAPPINGS)
    assert ours <= set(object_info), f"missing: {ours - set(object_info)}\n{comfy.tail()}"
    assert "IMPORT FAILED" not in "\n".join(l for l in comfy.log.read_text().splitlines() if "cityclf" in l)
    loader = object_info["CityClfLoader"]["input"]["required"]
    assert "TestCompression-v1.safetensors" in loader["head"][0]  # from the extra_model_paths.yaml folder
    assert "cityclassifiers/clip/tiny-clip" in loader["clip"][0]  # relative to the models folder
    assert not [c for c in loader["clip"][0] if c.startswith("/")]
    assert object_info["CityClfPredict"]["output_is_list"] == [True, True, True]


def empty_image(color: int, batch: int, w=96, h=80) -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": w, "height": h, "batch_size": batch, "color": color}}


def expected_tensor(color: int, batch: int, w=96, h=80) -> torch.Tensor:
    rgb = [((color >> 16) & 0xFF) / 0xFF, ((color >> 8) & 0xFF) / 0xFF, (color & 0xFF) / 0xFF]
    return torch.tensor(rgb, dtype=torch.float32).view(1, 1, 1, 3).expand(batch, h, w, 3).clone()


COLORS = [(0xE04020, 2), (0x2040E0, 1), (0x30C060, 1)]


def gate_prompt(workspace, threshold: float, fail_when_none: bool = False) -> dict:
    clip = "cityclassifiers/clip/tiny-clip"
    prompt = {
        "1": {"class_type": "CityClfLoader", "inputs": {
            "head": "TestAesthetics-v1.safetensors", "clip": clip, "pairing": "best", "precision": "auto",
            "download_missing": False}},
        "10": empty_image(*COLORS[0]), "11": empty_image(*COLORS[1]), "12": empty_image(*COLORS[2]),
        "13": {"class_type": "ImageBatch", "inputs": {"image1": ["10", 0], "image2": ["11", 0]}},
        "2": {"class_type": "ImageBatch", "inputs": {"image1": ["13", 0], "image2": ["12", 0]}},
        "3": {"class_type": "CityClfPredict", "inputs": {
            "model": ["1", 0], "images": ["2", 0], "tiling": "auto", "combine": "mean", "never_upscale": False}},
        "4": {"class_type": "CityClfGate", "inputs": {
            "images": ["2", 0], "scores": ["3", 0], "rule": "at least", "threshold": threshold, "upper": 1.0,
            "fail_when_none_pass": fail_when_none}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "passed"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["4", 1], "filename_prefix": "failed"}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["4", 8]}},
        "8": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}},
    }
    return prompt


@pytest.fixture(scope="module")
def expected_scores(encoder, score_head):
    from cityclf_core import ScoringModel

    images = torch.cat([expected_tensor(c, b) for c, b in COLORS])
    results = ScoringModel().add(score_head, encoder).score(images)
    return [r[score_head.name].score for r in results]


def test_score_gate_save_over_http(comfy, workspace, expected_scores):
    ordered = sorted({round(s, 6) for s in expected_scores})
    assert len(ordered) >= 2, expected_scores
    threshold = (ordered[0] + ordered[1]) / 2  # the lowest score fails, the others pass
    entry = comfy.run(gate_prompt(workspace, threshold))
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = entry["outputs"]
    n_pass = sum(s >= threshold for s in expected_scores)
    assert len(outputs["5"]["images"]) == n_pass
    assert len(outputs["6"]["images"]) == len(expected_scores) - n_pass
    assert outputs["7"]["text"] == [str(n_pass)]
    payloads = [json.loads(t) for t in outputs["8"]["text"]]  # one JSON per image, from the predict node
    got = [p["TestAesthetics-v1"]["score"] for p in payloads]
    assert got == pytest.approx(expected_scores, abs=1e-4)  # the server computed what the library computes
    for item in outputs["5"]["images"]:
        assert (workspace / "output" / item["subfolder"] / item["filename"]).is_file()


def test_nothing_passes_blocks_quietly(comfy, workspace, expected_scores):
    entry = comfy.run(gate_prompt(workspace, threshold=2.0))
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = entry["outputs"]
    assert "5" not in outputs  # SaveImage on the empty side never ran: no black placeholder, no error
    assert len(outputs["6"]["images"]) == len(expected_scores)
    assert outputs["7"]["text"] == ["0"]


def test_fail_when_none_pass_stops_the_prompt(comfy, workspace):
    entry = comfy.run(gate_prompt(workspace, threshold=2.0, fail_when_none=True))
    assert entry["status"]["status_str"] == "error"
    messages = json.dumps(entry["status"].get("messages", []))
    assert "no image passed the gate" in messages


def test_folder_of_mixed_sizes_tags_sidecars_over_http(comfy, workspace):
    from PIL import Image

    folder = workspace / "input" / "dataset"
    folder.mkdir()
    for i, (w, h) in enumerate([(40, 30), (120, 90), (200, 140)]):
        Image.fromarray(illustration(w, h, i)).save(folder / f"img{i}.png")
    (folder / "img0.txt").write_text("1girl, solo\n")
    clip = str(workspace / "models" / "cityclassifiers" / "clip" / "tiny-clip")
    prompt = {
        "1": {"class_type": "CityClfLoader", "inputs": {
            "head": "TestAesthetics-v1.safetensors", "clip": clip, "pairing": "best", "precision": "auto",
            "download_missing": False}},
        "2": {"class_type": "CityClfLoader", "inputs": {
            "head": "TestCompression-v1.safetensors", "clip": clip, "pairing": "best", "precision": "auto",
            "download_missing": False, "add_to": ["1", 0]}},
        "3": {"class_type": "CityClfLoadImages", "inputs": {"folder": "dataset", "recursive": False, "limit": 0,
                                                            "skip": 0}},
        "4": {"class_type": "CityClfTag", "inputs": {
            "model": ["2", 0], "images": ["3", 0], "thresholds": "0.3", "score_bucket": "decile", "tag_names": "",
            "separator": ", ", "tiling": "auto", "combine": "mean", "write_sidecars": True, "paths": ["3", 1]}},
    }
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    text = entry["outputs"]["4"]["text"]
    assert len(text) == 4 and text[-1].startswith("sidecars: 3 updated")
    first = (folder / "img0.txt").read_text()
    assert first.startswith("1girl, solo, testaesthetics_")
    snapshot = [(folder / f"img{i}.txt").read_text() for i in range(3)]
    prompt["4"]["inputs"]["separator"] = ",  "  # change an input so ComfyUI runs the node again
    entry = comfy.run(prompt)
    assert entry["outputs"]["4"]["text"][-1].startswith("sidecars: 0 updated")
    assert [(folder / f"img{i}.txt").read_text() for i in range(3)] == snapshot


def predict_alone(clip: str, color: int = 0x808080) -> dict:
    return {
        "1": {"class_type": "CityClfLoader", "inputs": {
            "head": "TestAesthetics-v1.safetensors", "clip": clip, "pairing": "best", "precision": "auto",
            "download_missing": False}},
        "2": empty_image(color, 2),
        "3": {"class_type": "CityClfPredict", "inputs": {
            "model": ["1", 0], "images": ["2", 0], "tiling": "auto", "combine": "mean", "never_upscale": False}},
    }


def test_loader_and_predict_alone_run_and_show_scores(comfy):
    """The simplest graph is a valid prompt, and its scores are on the node."""
    entry = comfy.run(predict_alone("cityclassifiers/clip/tiny-clip"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    text = entry["outputs"]["3"]["text"]
    assert len(text) == 2 and all(t.startswith(f"#{i}: TestAesthetics-v1: ") for i, t in enumerate(text))


def test_save_with_scores_writes_the_record_through_comfyui(comfy, workspace):
    """The Save node in a real server: numbered PNGs in the output folder carrying the prompt (as Save Image
    writes it) and Predict's scores for every head, read back with Pillow."""
    from PIL import Image

    prompt = predict_alone("cityclassifiers/clip/tiny-clip", color=0xC08040)
    prompt["4"] = {"class_type": "CityClfSave", "inputs": {
        "images": ["2", 0], "json": ["3", 2], "filename_prefix": "scored/%score%_%head%"}}
    prompt["5"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}}
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = entry["outputs"]["4"]["images"]
    predicted = [json.loads(t) for t in entry["outputs"]["5"]["text"]]
    assert len(saved) == len(predicted) == 2
    for item, want in zip(saved, predicted):
        score = want["TestAesthetics-v1"]["score"]
        assert item["subfolder"] == "scored" and item["filename"].startswith(f"{round(score * 1000):03d}_TestAes")
        with Image.open(workspace / "output" / "scored" / item["filename"]) as im:
            info = dict(im.info)
        assert json.loads(info["prompt"])["4"]["class_type"] == "CityClfSave"
        record = json.loads(info["cityclf"])
        entry_ = record["heads"]["TestAesthetics-v1"]
        assert entry_["score"] == pytest.approx(score, abs=1e-6) and entry_["label"] == want["TestAesthetics-v1"]["label"]
        assert entry_["sha256"] == want["TestAesthetics-v1"]["sha256"] and len(entry_["sha256"]) == 64
        assert entry_["clip"]["name"] == "tiny-clip"
        assert info["aesthetic_score"] == f"{score:.4f}"


def test_workflow_validates_after_the_models_folder_moved(comfy, workspace, tmp_path_factory):
    """A prompt saved against one models folder runs on a server whose models live elsewhere."""
    saved_absolute = str(workspace / "models" / "cityclassifiers" / "clip" / "tiny-clip")  # older workflows
    other = tmp_path_factory.mktemp("other-machine")
    shutil.copytree(workspace / "models", other / "models", ignore=shutil.ignore_patterns("big-clip"))
    for d in ("input", "output", "temp"):
        (other / d).mkdir()
    (other / "custom_nodes").mkdir()
    (other / "custom_nodes" / "cityclf").symlink_to(ROOT, target_is_directory=True)
    (other / "extra_model_paths.yaml").write_text(
        f"cityclf_test:\n    base_path: {other}\n    custom_nodes: custom_nodes\n"
        f"    cityclassifiers: models/cityclassifiers\n")
    moved = workspace / "models-moved-away"
    (workspace / "models").rename(moved)  # the first machine's files are gone
    server = start_comfy(other, "moved.log")
    try:
        for clip in ("cityclassifiers/clip/tiny-clip", saved_absolute):
            entry = server.run(predict_alone(clip))
            assert entry["status"]["status_str"] == "success", (clip, entry["status"], server.tail())
        status, reply = server.post_prompt(predict_alone("/somewhere/else/entirely"))
        assert status == 400 and "models/cityclassifiers/clip" in json.dumps(reply)
    finally:
        stop_comfy(server)
        moved.rename(workspace / "models")


def test_free_unloads_the_clip_and_the_next_prompt_scores(comfy, workspace):
    """/free with unload_models releases a CLIP we loaded, and it loads again when needed."""
    size = sum(f.stat().st_size for f in (workspace / "models" / "cityclassifiers" / "clip" / "big-clip").iterdir())
    requested = "Requested to load CityClfCLIP[big-clip]"
    entry = comfy.run(predict_alone("cityclassifiers/clip/big-clip", 0x102030))
    assert entry["status"]["status_str"] == "success", entry["status"]
    scores = entry["outputs"]["3"]["text"]
    assert comfy.log.read_text().count(requested) == 1  # known to the model manager, named after the CLIP
    entry = comfy.run(predict_alone("cityclassifiers/clip/big-clip", 0x102031))
    assert comfy.log.read_text().count(requested) == 1  # still loaded: not requested again
    loaded_rss = comfy.rss()
    assert comfy.post("/free", {"unload_models": True}) == 200
    deadline = time.time() + 60
    while comfy.rss() > loaded_rss - size / 2 and time.time() < deadline:
        time.sleep(0.5)
    freed = loaded_rss - comfy.rss()
    assert freed >= size / 2, f"freed {freed / 2**20:.0f} MiB of a {size / 2**20:.0f} MiB CLIP"
    entry = comfy.run(predict_alone("cityclassifiers/clip/big-clip", 0x102030))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["outputs"]["3"]["text"] == scores  # the same scores from the CLIP read again
    assert comfy.log.read_text().count(requested) == 2  # the manager had let it go, and loads it again


def test_deleted_or_edited_sidecar_is_rewritten_on_requeue(comfy, workspace):
    """ComfyUI's cache does not hide sidecars that changed since the last run."""
    from PIL import Image

    folder = workspace / "input" / "requeue"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(illustration(64, 48, 10 + i)).save(folder / f"r{i}.png")
    prompt = {
        "1": {"class_type": "CityClfLoader", "inputs": {
            "head": "TestAesthetics-v1.safetensors", "clip": "cityclassifiers/clip/tiny-clip", "pairing": "best",
            "precision": "auto", "download_missing": False}},
        "3": {"class_type": "CityClfLoadImages", "inputs": {"folder": "requeue", "recursive": False, "limit": 0,
                                                            "skip": 0}},
        "4": {"class_type": "CityClfTag", "inputs": {
            "model": ["1", 0], "images": ["3", 0], "thresholds": "0.5", "score_bucket": "decile", "tag_names": "",
            "separator": ", ", "tiling": "auto", "combine": "mean", "write_sidecars": True, "paths": ["3", 1]}},
    }
    assert comfy.run(prompt)["status"]["status_str"] == "success"
    written = (folder / "r0.txt").read_text()
    (folder / "r0.txt").unlink()
    (folder / "r1.txt").write_text("1girl\n")
    entry = comfy.run(prompt)  # the very same prompt, queued again
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert (folder / "r0.txt").read_text() == written
    assert (folder / "r1.txt").read_text().startswith("1girl, testaesthetics_")
    literal = json.loads(json.dumps(prompt))
    literal["4"]["inputs"]["paths"] = f"{folder / 'r0.png'}\n{folder / 'r1.png'}"  # paths typed in the widget
    literal["4"]["inputs"]["images"] = ["3", 0]
    assert comfy.run(literal)["status"]["status_str"] == "success"
    (folder / "r0.txt").unlink()
    assert comfy.run(literal)["status"]["status_str"] == "success"
    assert (folder / "r0.txt").read_text() == written


def test_partial_loading_is_refused_for_our_clips(workspace):
    """Simulated on a CPU: ComfyUI's manager given two distinct devices and too little free
    memory loads a plain patcher only partly; ours is always loaded fully."""
    script = Path(__file__).with_name("comfyui_partial_load.py")
    clip = workspace / "models" / "cityclassifiers" / "clip" / "big-clip"
    out = subprocess.run([comfy_python(Path(COMFYUI_DIR)), str(script), COMFYUI_DIR, str(ROOT), str(clip)],
                         cwd=COMFYUI_DIR, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0 < facts["partial"] < facts["size"]  # the simulation does squeeze: a plain load is partial
    assert facts["full"] == facts["size"] and not facts["lowvram_ours"]
    assert facts["shape"] == [2, 768]  # and it encodes


def test_example_workflows_have_no_missing_nodes(comfy, object_info):
    templates = comfy.get("/workflow_templates")
    ours = next((names for pack, names in templates.items() if pack == "cityclf"), None)
    files = sorted((ROOT / "example_workflows").glob("*.json"))
    assert files and sorted(ours or []) == sorted(f.stem for f in files)
    for f in files:
        workflow = json.loads(f.read_text())
        missing = {n["type"] for n in workflow["nodes"]} - set(object_info) - FRONTEND_ONLY
        assert not missing, f"{f.name}: missing node types {missing}"


def shots():
    """docs/screenshot_workflows.py, whose functions drive the frontend for these tests too."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cityclf_shots", ROOT / "docs" / "screenshot_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def browser_page(comfy):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright's Python package")
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        pytest.skip(f"needs a Chromium at {chromium} (set CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser, page = shots().open_page(p, comfy.url, chromium)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page, errors
        browser.close()


def test_scores_show_on_the_node_in_the_browser(browser_page):
    """The pack's web extension loads in ComfyUI's frontend and shows a node's scores, all of them."""
    page, errors = browser_page
    names = page.evaluate("() => window.app.extensions.map(e => e.name)")
    lines = [f"#{i}: A-v1: 0.{70 + i}0 ({70 + i}%)" for i in range(6)]
    page.evaluate("""(lines) => {
        window.app.graph.clear();
        const node = LiteGraph.createNode('CityClfPredict'); node.pos = [100, 100]; window.app.graph.add(node);
        node.onExecuted({text: lines});
        window.app.canvas.ds.offset = [0, 0]; window.app.canvas.ds.scale = 1; window.app.canvas.setDirty(true, true);
    }""", lines)
    page.wait_for_timeout(1000)
    shown = page.evaluate("""() => {
        const node = window.app.graph._nodes[0];
        const w = node.widgets.find(w => w.name === 'cityclf_results');
        const el = w ? w.element : null;
        return {text: el ? el.value : null, serialized: node.serialize().widgets_values.length,
                widgets: node.widgets.length, clientHeight: el ? el.clientHeight : 0,
                scrollHeight: el ? el.scrollHeight : 1};
    }""")
    assert "cityclf.ShowResults" in names
    assert shown["text"] == "\n".join(lines)
    assert shown["serialized"] == shown["widgets"] - 1  # the results box is not saved into workflows
    assert shown["scrollHeight"] <= shown["clientHeight"] + 1, shown  # six lines show without scrolling
    assert not [e for e in errors if "cityclf" in e.lower()]


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "example_workflows").glob("*.json")))
def test_example_workflow_nodes_do_not_overlap_after_a_run(browser_page, name, tmp_path):
    """Results boxes grow to their content, and the example workflows leave room for them."""
    page, errors = browser_page
    helper = shots()
    helper.load_workflow(page, json.loads((ROOT / "example_workflows" / f"{name}.json").read_text()))
    before = helper.node_boxes(page)
    assert helper.simulate_run(page) >= 3
    after = helper.node_boxes(page)
    grown = [a["type"] for a, b in zip(after, before) if a["box"][3] > b["box"][3]]
    assert "CityClfLoader" in grown  # results arrived and the nodes grew to show them
    png = tmp_path / f"{name}.png"
    helper.frame_and_shoot(page, png)
    assert helper.overlaps(after) == [], f"overlapping nodes after a run; see {png}"
    assert not [e for e in errors if "cityclf" in e.lower()]




def test_node_help_and_translations_are_served(comfy, pack):
    """The frontend's node library fetches /extensions/<pack>/docs/<NodeId>.md; /i18n merges locales/."""
    for nid in ("CityClfLoader", "CityClfGate", "CityClfTag"):
        with urllib.request.urlopen(f"{comfy.url}/extensions/cityclf/docs/{nid}.md", timeout=30) as r:
            assert r.status == 200 and r.read().decode().startswith("# ")
    i18n = comfy.get("/i18n")
    for lang in ("en", "ja", "zh"):
        mine = json.loads((ROOT / "locales" / lang / "nodeDefs.json").read_text(encoding="utf-8"))
        assert i18n[lang]["nodeDefs"]["CityClfGate"]["display_name"] == mine["CityClfGate"]["display_name"]
    assert i18n["en"]["templateWorkflows"]["category"]["cityclf"] == "CityClassifiers"


def test_linked_widget_hides_and_language_switches_in_the_browser(browser_page):
    """Tag's `paths` box hides while Load Images feeds it (and returns when unlinked); with the language set
    to Japanese, a new node is titled from locales/ja."""
    page, errors = browser_page
    out = page.evaluate("""async () => {
        const g = window.app.graph; g.clear();
        const load = LiteGraph.createNode('CityClfLoadImages'); load.pos = [0, 0]; g.add(load);
        const tag = LiteGraph.createNode('CityClfTag'); tag.pos = [400, 0]; g.add(tag);
        const paths = () => tag.widgets.find(w => w.name === 'paths');
        const res = {before: !!paths().hidden};
        load.connect(load.findOutputSlot('paths'), tag, tag.findInputSlot('paths'));
        await new Promise(r => setTimeout(r, 300));
        res.linked = !!paths().hidden && !!paths().element?.hidden;
        tag.disconnectInput(tag.findInputSlot('paths'));
        await new Promise(r => setTimeout(r, 300));
        res.unlinked = !!paths().hidden;
        const setting = window.app.extensionManager.setting;
        const old = setting.get('Comfy.Locale');
        await setting.set('Comfy.Locale', 'ja');
        await new Promise(r => setTimeout(r, 1500));
        const gate = LiteGraph.createNode('CityClfGate'); g.add(gate);
        res.title = gate.title;
        await setting.set('Comfy.Locale', old || 'en');
        g.clear();
        return res;
    }""")
    ja = json.loads((ROOT / "locales" / "ja" / "nodeDefs.json").read_text(encoding="utf-8"))
    assert out == {"before": False, "linked": True, "unlinked": False, "title": ja["CityClfGate"]["display_name"]}
    assert not [e for e in errors if "cityclf" in e.lower()]


def test_node_library_shows_our_help_page_in_the_browser(browser_page):
    """In the node library side panel, a node's help button ("?") opens the help panel, which fetches
    web/docs/<NodeId>.md and renders it (not the frontend's fallback made from the node's description)."""
    page, errors = browser_page
    md = (ROOT / "web" / "docs" / "CityClfGate.md").read_text(encoding="utf-8").splitlines()
    heading = md[0].removeprefix("# ").strip()
    paragraph = next(line for line in md[1:] if line.strip())
    name = json.loads((ROOT / "locales" / "en" / "nodeDefs.json").read_text(encoding="utf-8"))["CityClfGate"][
        "display_name"]
    page.locator(".node-library-tab-button").click()
    page.locator(".node-lib-search-box input").fill(name)
    entry = page.locator(".node-lib-tree-explorer .node-lib-node-container").filter(
        has=page.get_by_text(name, exact=True)).first
    entry.hover()
    with page.expect_response(lambda r: r.url.endswith("/extensions/cityclf/docs/CityClfGate.md")) as doc:
        entry.locator(".help-button").click()
    assert doc.value.status == 200
    shown = page.locator(".node-help-content .markdown-content")
    shown.locator("h1", has_text=heading).wait_for()
    assert shown.locator("h1").first.inner_text().strip() == heading
    assert paragraph in shown.inner_text()
    assert shown.locator("h2", has_text="Inputs").count() == 1  # the page's own sections, not the fallback's
    assert page.locator(".node-help-content .fallback-content").count() == 0
    page.locator("div:has(> .node-help-content) button:has(.pi-arrow-left)").click()  # back to the library
    page.locator(".node-help-content").wait_for(state="detached")
    page.locator(".node-library-tab-button").click()  # and close the side panel
    assert not [e for e in errors if "cityclf" in e.lower()]


def test_the_packs_requirements_are_what_comfyuis_python_needs():
    """`pip install -r requirements.txt` (the install step in docs/comfyui.md), dry-run and offline in the
    Python that runs ComfyUI: it resolves, names no torch, and leaves nothing to install in the venv
    that the tests above load the pack into, so those tests show the listed packages are enough."""
    python = comfy_python(Path(COMFYUI_DIR))
    done = subprocess.run([python, "-m", "pip", "install", "--dry-run", "--no-index", "-r",
                           str(ROOT / "requirements.txt")], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Would install" not in done.stdout, done.stdout
    names = [line.split(">")[0].split("=")[0].strip().lower() for line in (ROOT / "requirements.txt").read_text()
             .splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert names and not {"torch", "torchvision", "torchaudio"} & set(names)
    for name in names:
        assert f"requirement already satisfied: {name}" in done.stdout.lower(), name
