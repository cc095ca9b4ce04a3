"""Renders each example workflow in a real ComfyUI, in headless Chromium: a layout preview with example results.

Needs a ComfyUI checkout with its requirements (COMFYUI_DIR, see
scripts/comfyui_harness.sh), Chromium, and Playwright's Python package (only its
driver: the system Chromium is used, nothing is downloaded):

    COMFYUI_DIR=/tmp/comfyui CHROMIUM=/usr/bin/chromium python docs/screenshot_workflows.py

For each workflow it loads the file into ComfyUI's frontend, delivers example
results to our nodes the way the server does after a run (an `executed` message;
consistent with each other, see simulate_run), checks that no node overlaps another,
labels the picture as a layout preview, and
writes docs/workflows/<name>.png (for the README) and example_workflows/<name>.jpg
(the template thumbnail ComfyUI shows beside each workflow). The same functions
drive the browser test in tests/test_comfyui_e2e.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
#: Lines of results each node reports after a run: more than its box shows (it scrolls past 16) for the
#: nodes that list images; a loader lists the heads of its chain.
RESULT_LINES = {"CityClfPredict": 20, "CityClfTag": 20, "CityClfLoadImages": 20, "CityClfLoader": 1,
                "CityClfGate": 1, "CityClfSort": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_comfy(comfy: Path, work: Path) -> tuple[subprocess.Popen, str]:
    for d in ("custom_nodes", "user", "out"):
        (work / d).mkdir(parents=True)
    (work / "custom_nodes" / "cityclf").symlink_to(ROOT, target_is_directory=True)
    yaml = work / "extra.yaml"
    yaml.write_text(f"shots:\n    base_path: {work}\n    custom_nodes: custom_nodes\n")
    port = free_port()
    python = comfy / "venv" / "bin" / "python"
    cmd = [str(python if python.exists() else sys.executable), "main.py", "--cpu", "--listen", "127.0.0.1",
           "--port", str(port), "--disable-auto-launch", "--extra-model-paths-config", str(yaml),
           "--output-directory", str(work / "out"), "--user-directory", str(work / "user")]
    proc = subprocess.Popen(cmd, cwd=comfy, stdout=open(work / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/system_stats", timeout=2)
            return proc, url
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit("ComfyUI did not start; see " + str(work / "server.log"))


def open_page(playwright, url: str, chromium: str):
    """(browser, page) on ComfyUI's frontend, ready, with the minimap and canvas info off."""
    browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1920, "height": 1000}, device_scale_factor=1)
    page.goto(url)
    page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=120_000)
    page.wait_for_timeout(3000)
    page.evaluate("""async () => {
        try { await window.app.extensionManager.setting.set("Comfy.Minimap.Visible", false); } catch (e) {}
        window.app.canvas.render_info = false; window.app.canvas.show_info = false;
    }""")
    return browser, page


def load_workflow(page, workflow: dict) -> None:
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf, true, true); }", workflow)
    page.wait_for_timeout(1500)
    page.keyboard.press("Escape")  # close a missing-models dialog, if one opened
    page.evaluate("""() => document.querySelectorAll('.p-dialog-mask, .p-dialog').forEach(e => e.remove())""")


def simulate_run(page, lines: dict[str, int] = RESULT_LINES) -> int:
    """Deliver example results to our nodes through the frontend's own `executed` handler, as after a run;
    returns how many nodes got results.

    The results are examples, not a run's (the workflows generate with a checkpoint this project does not
    ship), but consistent with each other and with the workflow: as many images as its Empty Latent Image
    makes (else `lines`), one score per image, the gate passing exactly the scores that meet its rule and
    threshold, the sort keeping the best top_k of those scores, tags from the same scores."""
    count = page.evaluate("""(lines) => {
        const nodes = window.app.graph._nodes;
        const widget = (node, name) => node.widgets?.find((w) => w.name === name)?.value;
        const latent = nodes.find((n) => n.type === "EmptyLatentImage");
        const folder = nodes.find((n) => n.type === "CityClfLoadImages");  // 20 files: 18 images, 2 skipped
        const batch = latent ? Number(widget(latent, "batch_size")) : folder ? lines.CityClfLoadImages - 2 : null;
        const score = (i) => Math.round(1000 * (0.31 + ((i * 37) % 61) / 100)) / 1000;  // 0.310 .. 0.910
        const fmt = (v) => v.toFixed(3);
        // the heads of a loader's chain (add_to), first loaded first, by their file's stem
        const chain = (node) => {
            const heads = [];
            for (let up = node; up; up = up.getInputNode(up.findInputSlot("add_to")))
                heads.unshift(widget(up, "head").replace(/\\.[^.]+$/, ""));
            return heads;
        };
        // one head's result for image i, as its kind writes it: LAION and waifu-scorer (.pth) rate 0..10
        const result = (head, i) => /aesthetic|waifu/i.test(head) && !head.startsWith("CityAesthetics")
            ? `${(10 * score(i)).toFixed(1)}/10` : `${fmt(score(i))} (aesthetic score)`;
        let n = 0;
        for (const node of nodes) {
            let k = lines[node.type];
            if (!k) continue;
            const images = batch ?? k;
            const all = Array.from({length: images}, (_, i) => i);
            let text;
            if (node.type === "CityClfLoader") {  // one line per head of its chain (add_to)
                text = chain(node).map((h) => `${h} on CLIP_VISION`);
            } else if (node.type === "CityClfPredict") {
                const model = node.getInputNode(node.findInputSlot("model"));
                const heads = model ? chain(model) : ["CityAesthetics-Anime-v1.8"];
                text = all.map((i) => `#${i}: ` + heads.map((h) => `${h}: ${result(h, i)}`).join("; "));
            } else if (node.type === "CityClfTag") {
                text = all.map((i) => `#${i}: aesthetic_${Math.floor(score(i) * 10) * 10}` +
                                      (i % 3 === 1 ? ", jpeg_artifacts" : i % 5 === 2 ? ", chromatic_aberration" : ""));
            } else if (node.type === "CityClfLoadImages") {
                text = [`loaded ${images} image(s)`, `skipped dataset/img_${images}.png: truncated or corrupt`,
                        `skipped dataset/img_${images + 1}.txt: not an image`];
            } else if (node.type === "CityClfGate") {
                const t = Number(widget(node, "threshold") ?? 0.6);
                const passed = all.filter((i) => score(i) >= t);
                text = [`${passed.length} of ${images} passed (at least ${t}): [${passed.join(", ")}]`];
            } else if (node.type === "CityClfSort") {
                const topK = Number(widget(node, "top_k") ?? 0) || images;
                const keep = [...all].sort((a, b) => score(b) - score(a)).slice(0, topK);
                text = [`order [${keep.join(", ")}]; scores ${keep.map((i) => fmt(score(i))).join(", ")}`];
            }
            const detail = {node: String(node.id), display_node: String(node.id), output: {text},
                            prompt_id: "example"};
            window.app.api.dispatchEvent(new CustomEvent("executed", {detail}));
            n += 1;
        }
        return n;
    }""", lines)
    page.wait_for_timeout(800)
    return count


def label_preview(png: Path) -> None:
    """Write on the picture that it is a layout preview with example results."""
    from PIL import Image, ImageDraw

    sys.path.insert(0, str(ROOT))
    from cityclf_core.annotate import font

    img = Image.open(png).convert("RGB")
    draw = ImageDraw.Draw(img)
    note = "Layout preview: the results shown are examples, not from a run"
    size = max(14, img.width // 70)
    fnt = font(size)
    w = int(draw.textlength(note, font=fnt))
    draw.rectangle([0, 0, w + 24, size + 16], fill=(24, 24, 27))
    draw.text((12, 8), note, font=fnt, fill=(235, 235, 235))
    img.save(png)


def node_boxes(page) -> list[dict]:
    """Every node's title, type and bounds (title bar included), in graph coordinates."""
    return page.evaluate("""() => window.app.graph._nodes.map(n => {
        const b = n.getBounding ? Array.from(n.getBounding()) :
            [n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT, n.size[0], n.size[1] + LiteGraph.NODE_TITLE_HEIGHT];
        return {title: n.title, type: n.type, box: b};
    })""")


def overlaps(boxes: list[dict]) -> list[tuple[str, str]]:
    """Pairs of nodes whose bounds intersect."""
    found = []
    for i, a in enumerate(boxes):
        ax, ay, aw, ah = a["box"]
        for b in boxes[i + 1:]:
            bx, by, bw, bh = b["box"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                found.append((a["title"], b["title"]))
    return found


def frame_and_shoot(page, png: Path) -> None:
    """Fit the whole graph in the canvas and save a screenshot of it."""
    page.evaluate("""() => {
        const c = window.app.canvas; const g = window.app.graph;
        const b = [Infinity, Infinity, -Infinity, -Infinity];
        for (const n of g._nodes) {
            b[0] = Math.min(b[0], n.pos[0]); b[1] = Math.min(b[1], n.pos[1] - 40);
            b[2] = Math.max(b[2], n.pos[0] + n.size[0]); b[3] = Math.max(b[3], n.pos[1] + n.size[1]);
        }
        const W = c.canvas.width, H = c.canvas.height;
        const scale = Math.min(W / (b[2] - b[0] + 80), H / (b[3] - b[1] + 80));
        c.ds.scale = scale;
        c.ds.offset[0] = -b[0] + 40 / scale + (W / scale - (b[2] - b[0] + 80)) / 2;
        c.ds.offset[1] = -b[1] + 40 / scale + (H / scale - (b[3] - b[1] + 80)) / 2;
        c.setDirty(true, true); c.draw(true, true);
    }""")
    page.wait_for_timeout(800)
    page.locator("canvas#graph-canvas").screenshot(path=str(png))


def main() -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    comfy = Path(os.environ.get("COMFYUI_DIR", "/tmp/comfyui"))
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    work = Path(tempfile.mkdtemp(prefix="cityclf-shots-"))
    proc, url = start_comfy(comfy, work)
    out_dir = ROOT / "docs" / "workflows"
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = []
    try:
        with sync_playwright() as p:
            browser, page = open_page(p, url, chromium)
            for path in sorted((ROOT / "example_workflows").glob("*.json")):
                load_workflow(page, json.loads(path.read_text()))
                simulate_run(page)
                bad = overlaps(node_boxes(page))
                if bad:
                    problems.append(f"{path.name}: overlapping nodes after a run: {bad}")
                png = out_dir / f"{path.stem}.png"
                frame_and_shoot(page, png)
                label_preview(png)
                thumb = Image.open(png).convert("RGB")
                thumb.thumbnail((768, 768))
                thumb.save(ROOT / "example_workflows" / f"{path.stem}.jpg", quality=85)
                print(f"rendered {png.relative_to(ROOT)}")
            browser.close()
    finally:
        proc.terminate()
    if problems:
        raise SystemExit("\n".join(problems))


if __name__ == "__main__":
    main()
