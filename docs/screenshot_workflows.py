"""Renders each example workflow in a real ComfyUI, in headless Chromium, to PNG and a JPEG thumbnail.

Needs a ComfyUI checkout with its requirements (COMFYUI_DIR, see
../shared/tools/comfyui-setup.sh), Chromium, and Playwright's Python package
(only its driver: the system Chromium is used, nothing is downloaded):

    COMFYUI_DIR=/tmp/comfyui CHROMIUM=/usr/bin/chromium python docs/screenshot_workflows.py

Writes docs/workflows/<name>.png (for the README) and example_workflows/<name>.jpg
(the template thumbnail ComfyUI shows beside each workflow).
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


def main() -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    comfy = Path(os.environ.get("COMFYUI_DIR", "/tmp/comfyui"))
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    work = Path(tempfile.mkdtemp(prefix="cityclf-shots-"))
    proc, url = start_comfy(comfy, work)
    out_dir = ROOT / "docs" / "workflows"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1920, "height": 1000}, device_scale_factor=1)
            page.goto(url)
            page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=120_000)
            page.wait_for_timeout(3000)
            page.evaluate("""async () => {
                try { await window.app.extensionManager.setting.set("Comfy.Minimap.Visible", false); } catch (e) {}
                window.app.canvas.render_info = false; window.app.canvas.show_info = false;
            }""")
            for path in sorted((ROOT / "example_workflows").glob("*.json")):
                workflow = json.loads(path.read_text())
                page.evaluate("async (wf) => { await window.app.loadGraphData(wf, true, true); }", workflow)
                page.wait_for_timeout(1500)
                page.keyboard.press("Escape")  # close a missing-models dialog, if one opened
                page.evaluate("""() => {
                    document.querySelectorAll('.p-dialog-mask, .p-dialog, [class*="minimap"]')
                        .forEach(e => e.remove());
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
                png = out_dir / f"{path.stem}.png"
                page.locator("canvas#graph-canvas").screenshot(path=str(png))
                thumb = Image.open(png).convert("RGB")
                thumb.thumbnail((768, 768))
                thumb.save(ROOT / "example_workflows" / f"{path.stem}.jpg", quality=85)
                print(f"rendered {png.relative_to(ROOT)}")
            browser.close()
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
