"""ComfyUI entry point of the CityClassifiers node pack.

ComfyUI imports this folder as a package (named by its path) and reads
NODE_CLASS_MAPPINGS. Outside ComfyUI -- plain Python, pytest, people who only
use the `cityclf` command -- importing it registers nothing and needs
nothing from ComfyUI: the library lives in `cityclf_core/`, the nodes in `nodes/`.
"""

try:
    import comfy  # noqa: F401  (present only inside ComfyUI)
    import folder_paths  # noqa: F401
except ImportError:
    _IN_COMFY = False
else:
    _IN_COMFY = True

if _IN_COMFY:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .nodes.comfy_bridge import register_model_folder, short_error_titles

    register_model_folder()
    short_error_titles()
    WEB_DIRECTORY = "./web"
else:
    NODE_CLASS_MAPPINGS = {}
    NODE_DISPLAY_NAME_MAPPINGS = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
