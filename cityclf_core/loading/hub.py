"""CLIPs on the Hugging Face hub: what is a hub id, whether the hub may be asked, and fetching a repo.

`snapshot` fetches a repo's safetensors files (the only caller of
`snapshot_download`). A repository with no safetensors weights
(openai/clip-vit-large-patch14-336 has only `pytorch_model.bin`) goes through
`bin_only_folder` instead: its config files and
`pytorch_model.bin`, fetched at one commit (the one the hub names when it is first
asked, or the revision given), loaded only through torch's weights-only loader (no
arbitrary unpickling: a file holding code is refused), and converted once to
`model.safetensors` in cityclf's cache (`$CITYCLF_CACHE`, default ~/.cache/cityclf,
under clip/). Later loads use the converted folder and never touch the hub.
Repositories that have safetensors weights are left to the ordinary download.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

from ..errors import DownloadError, WeightsError
from ..notices import note

BIN = "pytorch_model.bin"
CONFIG_FILES = ("config.json", "preprocessor_config.json")
KEEP_PREFIXES = ("vision_model.", "visual_projection.")  # CLIPVisionModelWithProjection's part of a full CLIP
CLIP_FILES = ["config.json", "preprocessor_config.json", "model.safetensors", "model.safetensors.index.json",
              "model-*.safetensors"]


def cache_dir() -> Path:
    return Path(os.environ.get("CITYCLF_CACHE") or "~/.cache/cityclf").expanduser() / "clip"


def is_hub_id(source: str) -> bool:
    """`owner/name`, not an existing path (the one rule for telling hub ids from paths)."""
    text = str(source)
    return not Path(text).expanduser().exists() and text.count("/") == 1 and not text.startswith((".", "/", "~"))


def converted_folder(repo_id: str, root: str | os.PathLike | None = None) -> Path:
    return Path(root or cache_dir()) / repo_id.replace("/", "--")


def offline() -> bool:
    """Whether HF_HUB_OFFLINE forbids the hub (the one place it is read)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0", "false", "False")


def bin_only_folder(repo_id: str, allow_download: bool = False, revision: str | None = None,
                    root: str | os.PathLike | None = None) -> Path | None:
    """For a hub repo with only `pytorch_model.bin`: the folder it was (or is now) converted to; else None."""
    folder = converted_folder(repo_id, root)
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    if not allow_download or offline():
        return None  # the ordinary lookup says what is missing
    import huggingface_hub

    try:
        info = huggingface_hub.model_info(repo_id, revision=revision)
    except Exception:  # noqa: BLE001  (unreachable, unknown: the ordinary download reports it)
        return None
    files = {s.rfilename for s in (info.siblings or [])}
    if any(f.endswith(".safetensors") for f in files) or BIN not in files:
        return None
    commit = info.sha or revision or "main"
    note(f"CLIP {repo_id} has no safetensors weights on the hub; fetching {BIN} at commit {commit} and "
         f"converting it once to safetensors in {folder}")
    try:
        fetched = {name: huggingface_hub.hf_hub_download(repo_id, name, revision=commit)
                   for name in (*CONFIG_FILES, BIN) if name in files}
    except Exception as e:  # noqa: BLE001
        raise DownloadError(f"could not download CLIP {repo_id} ({type(e).__name__}: {e})") from None
    return convert_bin(Path(fetched[BIN]), folder, [Path(fetched[n]) for n in CONFIG_FILES if n in fetched],
                       {"repo_id": repo_id, "revision": commit, "converted_from": BIN})


def snapshot(repo_id: str, allow_download: bool = False, download_dir: str | os.PathLike | None = None) -> Path:
    """A hub CLIP's safetensors files: in `download_dir/<owner>--<name>` or the Hugging Face cache, fetched
    there only with `allow_download` (and HF_HUB_OFFLINE unset)."""
    from huggingface_hub import snapshot_download

    local_dir = Path(download_dir) / repo_id.replace("/", "--") if download_dir else None
    if local_dir is not None and (local_dir / "config.json").is_file():
        return local_dir
    kw = {"allow_patterns": CLIP_FILES}
    if local_dir is not None:
        kw["local_dir"] = str(local_dir)
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **kw))
    except Exception:
        if not allow_download or offline():
            raise DownloadError(
                f"CLIP {repo_id} is not on this machine and downloads are off. Allow downloads "
                f"(cityclf: drop --offline; the loader node: download_missing), or give a local folder."
            ) from None
    try:
        return Path(snapshot_download(repo_id, **kw))
    except Exception as e:
        raise DownloadError(
            f"could not download CLIP {repo_id} ({type(e).__name__}: {e}). If this machine is offline, "
            f"save it elsewhere with save_pretrained and give the folder."
        ) from None


def read_bin(path: Path, what: str) -> dict:
    """The tensors of a PyTorch pickle, through the weights-only loader: never runs code it holds.

    A Lightning checkpoint's weights are its `state_dict` entry."""
    import torch

    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{what} holds more than tensors (pickled code or objects), so it is not loaded: "
                           f"{first}. Use a copy with safetensors weights, or the original file.") from None
    except Exception as e:  # noqa: BLE001  (truncated, not a pickle at all)
        raise WeightsError(f"{what} could not be read as PyTorch weights ({type(e).__name__}: {e}); it may be "
                           "truncated: download it again") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{what} is not a state dict of tensors")
    return sd


def vision_config(path: Path) -> dict:
    """The vision part of a full CLIP's config.json (with its projection size), as a vision config."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.get("model_type") != "clip" or not isinstance(cfg.get("vision_config"), dict):
        return cfg
    vision = dict(cfg["vision_config"])
    vision["projection_dim"] = cfg.get("projection_dim", vision.get("projection_dim"))
    vision["model_type"] = "clip_vision_model"
    vision["architectures"] = ["CLIPVisionModelWithProjection"]
    return vision


def convert_bin(bin_path: Path, folder: Path, config_files: list[Path], provenance: dict) -> Path:
    """Write `folder` (config files + model.safetensors of the vision tower) from a weights-only-loaded .bin."""
    from ..filemode import save_safetensors

    sd = read_bin(bin_path, f"{provenance.get('repo_id', bin_path)}: {bin_path.name}")
    kept = {k: v for k, v in sd.items() if k.startswith(KEEP_PREFIXES)} or sd
    tensors = {k: v.detach().contiguous().clone() for k, v in kept.items()}  # no shared storage in safetensors
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for f in config_files:
        if f.name == "config.json":
            (tmp / f.name).write_text(json.dumps(vision_config(f), indent=2) + "\n", encoding="utf-8")
        else:
            shutil.copyfile(f, tmp / f.name)
    save_safetensors(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    (tmp / "cityclf-source.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    try:
        os.replace(tmp, folder)
    except OSError:  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


__all__ = ["bin_only_folder", "cache_dir", "convert_bin", "converted_folder", "is_hub_id", "offline", "read_bin",
           "snapshot"]
