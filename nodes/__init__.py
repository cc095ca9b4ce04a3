"""The ComfyUI nodes: thin wrappers over cityclf_core (types in, one library call, types out).

Node ids are stored in users' workflows: they are prefixed `CityClf` and never renamed.
"""

from __future__ import annotations

from .loader import CityClfLoader
from .predict import CityClfPredict

NODE_CLASS_MAPPINGS = {
    "CityClfLoader": CityClfLoader,
    "CityClfPredict": CityClfPredict,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CityClfLoader": "Load CityClassifier",
    "CityClfPredict": "CityClassifier Predict",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
