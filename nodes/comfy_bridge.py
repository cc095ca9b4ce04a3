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

from ..cityclf_core.loading.catalogue import default_models_dir

MODEL_FOLDER = "cityclassifiers"  # models/cityclassifiers: heads, and clip/ for transformers CLIPs
HEAD_SUFFIXES = (".safetensors", ".pth")  # .pth: LAION's and waifu-scorer's heads, read weights-only
CLIP_SUBFOLDER = "clip"
REFERENCE_SUBFOLDER = "reference"  # models/cityclassifiers/reference: score percentiles (cityclf percentiles)


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
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, set(HEAD_SUFFIXES))


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
            found += [f for f in os.listdir(root) if f.endswith(HEAD_SUFFIXES)]
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


def _clip_roots() -> list[tuple[str, str]]:
    """(prefix, folder) pairs where transformers CLIP folders are looked for, in search order."""
    roots = [(f"{MODEL_FOLDER}/{CLIP_SUBFOLDER}", os.path.join(p, CLIP_SUBFOLDER)) for p in model_paths()]
    if in_comfy():
        import folder_paths

        roots += [("clip_vision", p) for p in folder_paths.get_folder_paths("clip_vision")]
    return roots


def clip_roots() -> list[str]:
    """The folders transformers CLIP folders are looked for in (models/cityclassifiers/clip, models/clip_vision)."""
    return [root for _, root in _clip_roots()]


def clip_folders() -> dict[str, str]:
    """Transformers CLIP folders (with config.json), by a name relative to the models folder
    (`cityclassifiers/clip/NAME`, `clip_vision/NAME`), as ComfyUI's own loaders name files, so a
    workflow that names one works on another machine. The first folder of a name wins."""
    found: dict[str, str] = {}
    for prefix, root in _clip_roots():
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            if os.path.isfile(os.path.join(root, name, "config.json")):
                found.setdefault(f"{prefix}/{name}", os.path.join(root, name))
    return found


def clip_folder(choice: str) -> str | None:
    """The folder behind a `clip` choice: a relative name from clip_folders(), or an absolute path
    that workflows saved before relative names carried (still accepted while it is a CLIP folder)."""
    folders = clip_folders()
    if choice in folders:
        return folders[choice]
    if not os.path.isabs(choice):
        return None
    if os.path.isfile(os.path.join(choice, "config.json")):
        return choice
    parts = choice.replace("\\", "/").rstrip("/").split("/")
    for tail in ("/".join(parts[-3:]), "/".join(parts[-2:])):  # .../cityclassifiers/clip/NAME, .../clip_vision/NAME
        if tail in folders:
            return folders[tail]
    return None


def reference_files() -> dict[str, str]:
    """Reference files (`cityclf percentiles` output) in models/cityclassifiers/reference/, by file name (the
    first folder of a name wins), so a workflow that names one works on another machine."""
    found: dict[str, str] = {}
    for root in model_paths():
        folder = os.path.join(root, REFERENCE_SUBFOLDER)
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                if name.lower().endswith(".json") and os.path.isfile(os.path.join(folder, name)):
                    found.setdefault(name, os.path.join(folder, name))
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


def output_dir() -> str:
    if in_comfy():
        import folder_paths

        return folder_paths.get_output_directory()
    return os.getcwd()


def temp_dir() -> str:
    if in_comfy():
        import folder_paths

        return folder_paths.get_temp_directory()
    return os.path.join(tempfile.gettempdir(), "cityclf-preview")


def metadata_disabled() -> bool:
    """Whether ComfyUI runs with --disable-metadata (then no prompt or workflow is written into saved files)."""
    if in_comfy():
        try:
            from comfy.cli_args import args
        except ImportError:
            return False
        return bool(getattr(args, "disable_metadata", False))
    return False


def save_image_path(prefix: str, width: int, height: int) -> tuple[str, str, int, str]:
    """(folder, file name stem, first free counter, subfolder) for saving under `prefix` in the output folder,
    as ComfyUI's Save Image numbers its files (`stem_00001_.png`); a prefix leading outside it is refused."""
    if in_comfy():
        import folder_paths

        folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, output_dir(), width, height)
        return folder, stem, counter, subfolder
    subfolder = os.path.dirname(os.path.normpath(prefix))
    stem = os.path.basename(os.path.normpath(prefix))
    folder = os.path.join(output_dir(), subfolder)
    os.makedirs(folder, exist_ok=True)
    taken = [n[len(stem) + 1:].split("_")[0] for n in os.listdir(folder) if n.startswith(stem + "_")]
    counter = max([int(t) for t in taken if t.isdigit()], default=0) + 1
    return folder, stem, counter, subfolder


def short_error_titles() -> None:
    """ComfyUI titles a node's error with the exception's module and class (`full_type_name`), and loads this
    pack by its folder path, so our errors read `/…/custom_nodes/X.cityclf_core.errors.DownloadError`. It
    writes the class alone only for `builtins`: our error classes are named so, in the ComfyUI process only
    (nothing pickles them there), and the message still says what to do."""
    from ..cityclf_core import errors

    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == errors.__name__:
            value.__module__ = "builtins"
