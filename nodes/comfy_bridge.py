"""Everything the nodes need from ComfyUI, imported lazily, with plain fallbacks.

Inside ComfyUI these reach `folder_paths`, `comfy.model_management`,
`comfy.utils.ProgressBar` and the execution blocker. Outside it (pytest, plain
Python) the fallbacks keep the node classes callable: no progress UI, no model
manager, the CPU, a stand-in blocker.
"""

from __future__ import annotations

import functools
import os
import tempfile

import torch

MODEL_FOLDER = "cityclassifiers"  # models/cityclassifiers: heads, and clip/ for transformers CLIPs
CLIP_SUBFOLDER = "clip"


@functools.lru_cache(maxsize=1)
def in_comfy() -> bool:
    try:
        import comfy.model_management  # noqa: F401
        import folder_paths  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- model folders


def register_model_folder() -> None:
    """Register models/cityclassifiers, keeping paths extra_model_paths.yaml already added for it."""
    if not in_comfy():
        return
    import folder_paths

    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    paths, _ = folder_paths.folder_names_and_paths.get(MODEL_FOLDER, ([], set()))
    paths = [default, *[p for p in paths if p != default]]
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, {".safetensors"})


def model_paths() -> list[str]:
    """The folders heads are looked up in (the default one first)."""
    if in_comfy():
        import folder_paths

        if MODEL_FOLDER in folder_paths.folder_names_and_paths:
            return folder_paths.get_folder_paths(MODEL_FOLDER)
    env = os.environ.get("CITYCLF_MODELS")
    return [env] if env else []


def download_dir() -> str:
    """Where missing catalogue heads are downloaded."""
    paths = model_paths()
    if paths:
        return paths[0]
    from ..cityclf_core import default_models_dir

    return str(default_models_dir())


def head_files() -> list[str]:
    """Head files in the model folders, relative names, without the CLIP subfolder."""
    if in_comfy():
        import folder_paths

        if MODEL_FOLDER in folder_paths.folder_names_and_paths:
            names = folder_paths.get_filename_list(MODEL_FOLDER)
            return [n for n in names if not n.replace("\\", "/").startswith(CLIP_SUBFOLDER + "/")]
    found = []
    for root in model_paths():
        if os.path.isdir(root):
            found += [f for f in os.listdir(root) if f.endswith(".safetensors")]
    return sorted(set(found))


def head_path(name: str) -> str | None:
    if in_comfy():
        import folder_paths

        return folder_paths.get_full_path(MODEL_FOLDER, name)
    for root in model_paths():
        p = os.path.join(root, name)
        if os.path.isfile(p):
            return p
    return None


def clip_folders() -> list[str]:
    """Transformers CLIP folders (with config.json) under cityclassifiers/clip and clip_vision."""
    roots = [os.path.join(p, CLIP_SUBFOLDER) for p in model_paths()]
    if in_comfy():
        import folder_paths

        roots += folder_paths.get_folder_paths("clip_vision")
    found = []
    for root in roots:
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            if os.path.isfile(os.path.join(root, name, "config.json")):
                found.append(os.path.join(root, name))
    return found


def clip_download_dir() -> str | None:
    paths = model_paths()
    return os.path.join(paths[0], CLIP_SUBFOLDER) if paths else None


# ---------------------------------------------------------------- devices and memory


def clip_devices() -> tuple[torch.device, torch.device]:
    """(where a CLIP runs, where it waits between runs), as ComfyUI places text and vision encoders."""
    if in_comfy():
        import comfy.model_management as mm

        return mm.text_encoder_device(), mm.text_encoder_offload_device()
    return torch.device("cpu"), torch.device("cpu")


def manage_encoder(encoder) -> None:
    """Let ComfyUI's model manager place (and evict) a transformers CLIP we loaded.

    The model is wrapped in a ModelPatcher once; `encoder.prepare`, called before
    every run, asks ComfyUI to load it onto the GPU, offloading others if needed.
    """
    if not in_comfy() or getattr(encoder, "prepare", None) is not None or not hasattr(encoder, "model"):
        return
    import comfy.model_management as mm
    import comfy.model_patcher

    load_device, offload_device = clip_devices()
    if load_device == offload_device:
        return
    holder = _Holder(encoder.model, offload_device)
    encoder.model.to(offload_device)  # loaded there already; kept as a guard
    patcher = comfy.model_patcher.ModelPatcher(holder, load_device=load_device, offload_device=offload_device)
    encoder.patcher = patcher
    encoder.prepare = lambda: mm.load_models_gpu([patcher])


class _Holder(torch.nn.Module):
    """A plain module around a transformers model, whose `device` ModelPatcher may set."""

    def __init__(self, model, device):
        super().__init__()
        self.clip = model
        self.device = device


# ---------------------------------------------------------------- progress, interrupts, blocking


class _NullBar:
    def __init__(self, total):
        self.total = total

    def update_absolute(self, value, total=None, preview=None):
        pass


def progress_bar(total: int):
    if in_comfy():
        import comfy.utils

        return comfy.utils.ProgressBar(total)
    return _NullBar(total)


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel."""
    if in_comfy():
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()


def progress_callback(bar):
    """An on_progress(done, total) for the pipeline: moves the node's bar and honours Cancel."""

    def on_progress(done: int, total: int) -> None:
        bar.update_absolute(done, total)
        check_interrupt()

    return on_progress


class Blocked:
    """Stand-in for ComfyUI's ExecutionBlocker outside ComfyUI (tests)."""

    def __init__(self, message=None):
        self.message = message


def blocker():
    """A silent execution blocker: nodes fed from this output are skipped, without an error."""
    try:
        from comfy_execution.graph_utils import ExecutionBlocker
    except ImportError:
        return Blocked(None)
    return ExecutionBlocker(None)


def message_blocker(message: str):
    """An execution blocker that fails the nodes fed from it with `message` (a wiring mistake)."""
    try:
        from comfy_execution.graph_utils import ExecutionBlocker
    except ImportError:
        return Blocked(message)
    return ExecutionBlocker(message)


def input_dir() -> str:
    if in_comfy():
        import folder_paths

        return folder_paths.get_input_directory()
    return os.getcwd()


def temp_dir() -> str:
    if in_comfy():
        import folder_paths

        return folder_paths.get_temp_directory()
    return os.path.join(tempfile.gettempdir(), "cityclf-preview")
