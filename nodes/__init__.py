"""The ComfyUI nodes: thin wrappers over cityclf_core (types in, one library call, types out).

Node ids are stored in users' workflows: they are prefixed `CityClf` and never renamed.
"""

from __future__ import annotations

from .gate import CityClfGate
from .load_images import CityClfLoadImages
from .loader import CityClfLoader
from .predict import CityClfPredict
from .save import CityClfSave
from .show import CityClfShow
from .sort import CityClfSort
from .tags import CityClfTag

NODE_CLASS_MAPPINGS = {
    "CityClfLoader": CityClfLoader,
    "CityClfPredict": CityClfPredict,
    "CityClfGate": CityClfGate,
    "CityClfSort": CityClfSort,
    "CityClfTag": CityClfTag,
    "CityClfShow": CityClfShow,
    "CityClfLoadImages": CityClfLoadImages,
    "CityClfSave": CityClfSave,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CityClfLoader": "Load CityClassifier",
    "CityClfPredict": "CityClassifier Predict",
    "CityClfGate": "CityClassifier Gate",
    "CityClfSort": "CityClassifier Sort / Top-K",
    "CityClfTag": "CityClassifier Tag",
    "CityClfShow": "CityClassifier Show Scores",
    "CityClfLoadImages": "CityClassifier Load Images (folder)",
    "CityClfSave": "CityClassifier Save Image (with scores)",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
