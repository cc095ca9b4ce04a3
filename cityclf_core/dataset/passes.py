"""What an embedding job runs: the heads, and the CLIP passes they need -- stored or loaded.

`ModelSpec` names the heads and CLIP as a user gave them (picklable, so that
Ray workers load the same). `choose_clips` decides, before any CLIP is loaded,
whether one is needed at all: when the store already has every file, unchanged
and embedded for every pass (dataset/plan.py), the job runs on the CLIPs the
store records (no weights read); otherwise it loads them. Each head file is
read once, whichever way is taken. Both engines (dataset.embed_files here, Ray
in engines/ray_data.py) start from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from ..errors import CityClfError, ConfigError
from ..numbers import check_tile_size
from ..scoring.crops import CropPolicy
from ..scoring.embedding import ClipPass
from ..scoring.pipeline import Group, ScoringModel
from .plan import nothing_to_embed


@dataclass(frozen=True)
class ModelSpec:
    """The heads and CLIP a job runs, as the user named them: picklable."""

    models: tuple[str, ...] = ()
    clip: str | None = None
    pairing: str = "best"
    models_dir: str | None = None
    allow_download: bool = True
    tile_size: int | None = None
    dtype: str = "auto"
    tiling: str = "auto"
    upscale: bool = True
    combine: str = "mean"
    score: bool = False  # the Ray engine: also run the heads in its workers and store their scores

    def portable(self) -> "ModelSpec":
        """Local files and folders as absolute paths (workers do not share the driver's working folder)."""
        def absolute(p):
            return str(Path(p).expanduser().resolve()) if p and Path(p).expanduser().exists() else p

        return replace(self, models=tuple(absolute(m) for m in self.models), clip=absolute(self.clip),
                       models_dir=absolute(self.models_dir))

    def heads(self) -> list:
        """The heads, each read from its file (or downloaded) once; pass them to `load` and `stored`."""
        from ..loading.catalogue import default_models_dir, resolve_head

        models_dir = Path(self.models_dir) if self.models_dir else default_models_dir()
        return [resolve_head(name, search_dirs=[models_dir], download_dir=models_dir,
                             allow_download=self.allow_download) for name in self.models]

    def _policy(self) -> CropPolicy:
        """The crop policy of a bare --clip (no heads to choose one)."""
        return CropPolicy(tiling=self.tiling == "on", tile_size=self.tile_size, upscale=self.upscale)

    def load(self, device: str, heads: Sequence | None = None) -> tuple[ScoringModel | None, list[Group]]:
        """The heads (None when embedding for a bare --clip) and the CLIP passes they need, loaded on `device`."""
        from ..loading.clips import load_encoder
        from ..loading.models import load_scoring_model

        if self.models:
            model = load_scoring_model(list(self.heads() if heads is None else heads), clip=self.clip,
                                       device=device, dtype=self.dtype, pairing=self.pairing,
                                       allow_download=self.allow_download, models_dir=self.models_dir,
                                       tile_size=self.tile_size)
            return model, model.groups(self.tiling, self.upscale)
        if not self.clip:
            raise ConfigError("name the heads (--model) whose CLIP and crops to embed for, or a --clip")
        encoder = load_encoder(self.clip, device, self.dtype, allow_download=self.allow_download)
        check_tile_size(self.tile_size, encoder.image_size)
        return None, [Group(ClipPass(encoder, self._policy()))]

    def stored(self, store, heads: Sequence | None = None) -> tuple[ScoringModel | None, list[Group]] | None:
        """Like `load`, on the CLIPs recorded in `store` (nothing loaded); None when the store does not know
        them yet."""
        from ..loading.clips import clip_identity, source_name
        from .stored_model import load_stored_model
        from ..store import StoredEncoder

        try:
            if self.models:
                model = load_stored_model(list(self.heads() if heads is None else heads), store, clip=self.clip,
                                          pairing=self.pairing, allow_download=self.allow_download,
                                          models_dir=self.models_dir, tile_size=self.tile_size)
                return model, model.groups(self.tiling, self.upscale)
            if not self.clip:
                return None
            row = store.find_encoder(clip_identity(self.clip), source_name(self.clip))
            return None, [Group(ClipPass(StoredEncoder(row), self._policy()))]
        except CityClfError:
            return None


@dataclass
class JobModel:
    """What a job runs on: the heads (None for a bare --clip), their CLIP passes, whether the CLIPs are loaded."""

    model: ScoringModel | None
    groups: list[Group]
    loaded: bool

    @property
    def passes(self) -> list[ClipPass]:
        return [g.clip for g in self.groups]


def choose_clips(store, spec: ModelSpec, paths: Sequence[str], device: str = "auto",
                 on_load: Callable[[], None] | None = None) -> JobModel:
    """The store's CLIPs when every file in `paths` is unchanged and embedded for every pass (no CLIP loaded),
    else the CLIPs loaded on `device` (`on_load()` is called first: loading takes seconds). The heads are read
    once either way."""
    heads = spec.heads()
    stored = spec.stored(store, heads)  # no CLIP loaded: the store and the files' stats decide
    if stored is not None and nothing_to_embed(store, [g.clip for g in stored[1]], paths):
        return JobModel(*stored, loaded=False)
    if on_load is not None:
        on_load()
    return JobModel(*spec.load(device, heads), loaded=True)


__all__ = ["JobModel", "ModelSpec", "choose_clips"]
