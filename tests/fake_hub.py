"""A stand-in for the Hugging Face hub on 127.0.0.1: serves folders as model repos, for huggingface_hub.

What huggingface_hub asks, and what this answers:

    GET  /api/models/OWNER/NAME[/revision/REV]       the repo's commit and file list
    GET  /api/models/OWNER/NAME/tree/REV[?...]       the files, with sizes and ids
    HEAD /OWNER/NAME/resolve/REV/FILE                commit, ETag, size (before a download)
    GET  /OWNER/NAME/resolve/REV/FILE                the file

Point a process at it with HF_ENDPOINT (set before huggingface_hub is imported: subprocesses, Ray
workers), or in this process with `redirect(monkeypatch, endpoint)`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123abcd" * 5


class FakeHub:
    def __init__(self, repos: dict[str, Path]):
        self.repos = {name: Path(folder) for name, folder in repos.items()}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo: str) -> list[Path]:
        return sorted(f for f in self.repos[repo].iterdir() if f.is_file())

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        self.requests.append((handler.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return self._send(handler, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            if len(parts) >= 5 and parts[4] == "tree":
                listing = [{"type": "file", "path": f.name, "size": f.stat().st_size,
                            "oid": hashlib.sha1(f.read_bytes()).hexdigest()} for f in self.files(repo)]
                return self._send(handler, 200, json.dumps(listing).encode(), body=body)
            info = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                    "siblings": [{"rfilename": f.name} for f in self.files(repo)]}
            return self._send(handler, 200, json.dumps(info).encode(), body=body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            file = self.repos.get(repo, Path("/nonexistent")) / name
            if repo not in self.repos:
                return self._send(handler, 404, b"", {"X-Error-Code": "RepoNotFound"})
            if not file.is_file():
                return self._send(handler, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
            data = file.read_bytes()
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
            return self._send(handler, 200, data, headers, body=body)
        return self._send(handler, 404, b"")

    @staticmethod
    def _send(handler, status: int, data: bytes, headers: dict | None = None, body: bool = True) -> None:
        handler.send_response(status)
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)


def redirect(monkeypatch, endpoint: str, cache: Path) -> None:
    """Point this process's huggingface_hub (already imported) and its children at `endpoint`, caching in
    `cache`."""
    import huggingface_hub
    from huggingface_hub import constants

    for name, value in {"HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_XET": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)


class _Pwn:
    """A pickle that would run code when unpickled (touch a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def make_repos(root: Path, safetensors_clip: Path):
    """Three CLIP repos under `root`: `fake/bin-clip`, only pytorch_model.bin (a full tiny CLIP, as openai's
    repos are); `fake/st-clip`, model.safetensors (`safetensors_clip`'s files); `fake/evil-clip`, a .bin holding
    a pickled callable that would touch `root/pwned`. Returns (repos, the full CLIP model, the marker)."""
    import shutil

    import torch
    from transformers import CLIPConfig, CLIPModel

    full = root / "bin-clip"
    full.mkdir(parents=True)
    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, vocab_size=100, max_position_embeddings=16),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8), projection_dim=768)
    torch.manual_seed(0)
    clip = CLIPModel(cfg).eval()
    cfg.save_pretrained(full)
    torch.save(clip.state_dict(), full / "pytorch_model.bin")
    st = root / "st-clip"
    shutil.copytree(safetensors_clip, st)
    evil = root / "evil-clip"
    evil.mkdir()
    cfg.save_pretrained(evil)
    marker = root / "pwned"
    torch.save({"vision_model.x": torch.zeros(1), "payload": _Pwn(marker)}, evil / "pytorch_model.bin")
    return {"fake/bin-clip": full, "fake/st-clip": st, "fake/evil-clip": evil}, clip, marker
