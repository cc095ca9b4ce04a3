"""CLIP encoders as ComfyUI manages models: known to its model manager, freed by "Unload models",
and stoppable by Cancel within a forward of a view or two.

* :class:`ManagedClipEncoder` -- a transformers CLIP that ComfyUI's model
  manager loads (fully: transformers layers cannot run partly offloaded) onto
  the device it runs on, and unloads like its own models. Where it runs and
  waits on the same device (the CPU), unloading drops the weights, and the next
  run reads them again.
* :class:`InterruptibleEncoder` -- splits a chunk of views into single-view
  forwards on a CPU and checks for Cancel before each; on a GPU a chunk is one
  forward, as before.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import torch

from ..cityclf_core.loading.clips import TransformersClipEncoder
from ..cityclf_core.scoring.encoders import Encoder, WrappedEncoder
from . import comfy_bridge as bridge


class ClipModule(torch.nn.Module):
    """What ComfyUI's ModelPatcher holds: the transformers model (named after the CLIP in its log)."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.clip = model
        self.device = device  # ModelPatcher reads and sets this


def module_for(name: str, model: torch.nn.Module, device: torch.device) -> ClipModule:
    """A ClipModule whose class name names the CLIP, so ComfyUI logs e.g. 'Requested to load CityClfCLIP[name]'."""
    cls = type(f"CityClfCLIP[{name}]", (ClipModule,), {})
    return cls(model, device)


class ManagedClipEncoder(Encoder):
    """A transformers CLIP from a folder whose memory ComfyUI's model manager owns."""

    def __init__(self, folder: str | Path, name: str, source: str, dtype: torch.dtype,
                 devices: Callable[[], tuple[torch.device, torch.device]] = bridge.clip_devices):
        self.folder, self.name, self.source, self.dtype = Path(folder), name, source, dtype
        self._devices = devices
        self._lock = threading.RLock()
        self._patcher = None
        self._clip: TransformersClipEncoder | None = self._read()
        self.identity = self._clip.identity
        self.image_size, self.embed_dim = self._clip.image_size, self._clip.embed_dim

    # -- what the pipeline asks

    @property
    def device(self) -> torch.device:
        return self._devices()[0]

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (they are dropped when ComfyUI unloads them on the CPU)."""
        return self._clip is not None

    def prepare(self) -> None:
        """Read the weights if they were unloaded, and have ComfyUI place them where they run."""
        with self._lock:
            if self._clip is None:
                self._clip = self._read()
                self.identity = self._clip.identity  # the folder's weights may have changed
                self._patcher = None  # the unloaded one held no weights; ComfyUI is done with it by now
            if bridge.in_comfy():
                import comfy.model_management as mm

                mm.load_models_gpu([self.patcher()], force_full_load=True)

    def encode(self, views: torch.Tensor) -> torch.Tensor:
        clip = self._clip
        if clip is None:
            self.prepare()
            clip = self._clip
        return clip.encode(views)

    # -- ComfyUI's side

    def patcher(self):
        """The ModelPatcher ComfyUI's manager knows this CLIP by (made once per load of the weights)."""
        with self._lock:
            if self._patcher is None:
                import comfy.model_patcher
                from comfy.patcher_extension import CallbacksMP

                load_device, offload_device = self._devices()
                module = module_for(self.name, self._clip.model, offload_device)
                patcher = comfy.model_patcher.ModelPatcher(module, load_device=load_device,
                                                           offload_device=offload_device)
                patcher.add_callback(CallbacksMP.ON_DETACH, self._on_unload)
                self._patcher = patcher
            return self._patcher

    def _on_unload(self, patcher, unpatch_all: bool = True) -> None:
        """ComfyUI unloaded us. Where the model waits on the device it runs on, nothing was freed
        by moving it: drop the weights (and this patcher) so the memory is released."""
        load_device, offload_device = patcher.load_device, patcher.offload_device
        if unpatch_all and torch.device(load_device) == torch.device(offload_device):
            self.release()

    def release(self) -> None:
        """Drop the weights. The (now empty) patcher is kept until the next prepare(): ComfyUI
        tracks patchers by weak reference and is still iterating its list while it unloads us."""
        with self._lock:
            if self._patcher is not None:
                self._patcher.model.clip = None
            self._clip = None

    def _read(self) -> TransformersClipEncoder:
        _, offload_device = self._devices()
        return TransformersClipEncoder.from_folder(self.folder, name=self.name, device=offload_device,
                                                   dtype=self.dtype, source=self.source)

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "unloaded"
        return f"ManagedClipEncoder({self.name}, S={self.image_size}, D={self.embed_dim}, {state})"


class InterruptibleEncoder(WrappedEncoder):
    """Checks for Cancel before every forward; on a CPU, a forward is at most `cpu_views` views."""

    def __init__(self, inner: Encoder, check: Callable[[], None] = bridge.check_interrupt, cpu_views: int = 1):
        super().__init__(inner)
        self._check, self.cpu_views = check, max(1, int(cpu_views))

    def encode(self, views: torch.Tensor) -> torch.Tensor:
        step = self.cpu_views if self.inner.device.type == "cpu" else max(1, int(views.shape[0]))
        out = []
        for start in range(0, int(views.shape[0]), step):
            self._check()
            out.append(self.inner.encode(views[start : start + step]))
        if not out:
            return self.inner.encode(views)
        return out[0] if len(out) == 1 else torch.cat(out)

    def __repr__(self) -> str:
        return f"InterruptibleEncoder({self.inner!r})"
