"""The released CityClassifiers models: what they are, which CLIP each was made with.

A file is recognised by its sha256, so a renamed, config-less copy still gets its
labels and its CLIP pairing. The history (see the project docs):

* CityAesthetics-Anime-v1.8 (2023-11-15) was made with ViT-L/14 (224), whole image.
* CCAnime-ChromaticAberration-v1.16 (2023-11-29): ViT-L/14 (224) with 512 px tiles
  per its model card; the public demo runs it with ViT-L/14-336 and 672 px tiles,
  available here as its alternative pairing.
* CCAnime-Compression-v1.5 (2023-12-14): ViT-L/14-336 with 672 px tiles.

`OTHER_HEADS` are other projects' heads that load here by their layout (LAION's
aesthetic predictor, waifu-scorer): listed with where to get them, never
downloaded; a file matching a published checksum gets the head's name.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DownloadError, WeightsError
from ..kinds import get_kind
from ..notices import warn
from ..scoring.crops import CropPolicy
from .head_config import HeadConfig, config_path_for
from .hub import offline
from .weights import file_sha256

if TYPE_CHECKING:  # heads load torch; the catalogue itself (cityclf models) needs none
    from ..scoring.heads import Head


@dataclass(frozen=True)
class ClipModel:
    """A CLIP vision model with projection, as published on the Hugging Face hub."""

    repo_id: str
    image_size: int
    embed_dim: int


VIT_L14 = ClipModel("openai/clip-vit-large-patch14", 224, 768)  # ViT-L/14
VIT_L14_336 = ClipModel("openai/clip-vit-large-patch14-336", 336, 768)  # ViT-L/14-336
KNOWN_CLIPS = (VIT_L14_336, VIT_L14)


@dataclass(frozen=True)
class Pairing:
    """A CLIP and the crop policy a head was made (or demonstrated) with."""

    clip: ClipModel
    policy: CropPolicy
    why: str


@dataclass(frozen=True)
class Release:
    name: str
    filename: str
    repo_id: str
    sha256: str
    size: int
    config: HeadConfig
    pairing: Pairing
    alternative: Pairing | None = None

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.filename}"

    @property
    def arch(self) -> str:
        return self.config.arch

    def pairing_for(self, which: str = "best") -> Pairing:
        if which in ("best", "catalogue", "auto"):
            return self.pairing
        if which in ("alternative", "demo"):
            return self.alternative or self.pairing
        raise WeightsError(f"unknown pairing {which!r} for {self.name}; use 'best' or 'alternative'")


RELEASES: tuple[Release, ...] = (
    Release(
        name="CityAesthetics-Anime-v1.8",
        filename="CityAesthetics-Anime-v1.8.safetensors",
        repo_id="city96/CityAesthetics",
        sha256="6e37d32c9423c536a5a6687c3f8163674185d751d78df1ff72df052497f56ca4",
        size=16_312_596,
        config=HeadConfig(name="CityAesthetics-Anime", rev="v1.8", arch="score", labels=None, outputs=1),
        pairing=Pairing(VIT_L14, CropPolicy(tiling=False), "trained before the 336 switch; its demo runs ViT-L/14"),
        alternative=Pairing(VIT_L14_336, CropPolicy(tiling=False), "the later reference code's CLIP"),
    ),
    Release(
        name="CCAnime-ChromaticAberration-v1.16",
        filename="CCAnime-ChromaticAberration-v1.16.safetensors",
        repo_id="city96/AnimeClassifiers",
        sha256="0f03da70fbb41946a143b721133ef01a35ff36ea19cfbc940e1c8d7b35de6aaa",
        size=16_312_728,
        config=HeadConfig(
            name="CCAnime-ChromaticAberration",
            rev="v1.16",
            arch="class",
            labels={"0": "Pass", "1": "Chromatic Aberration"},
            outputs=2,
        ),
        pairing=Pairing(VIT_L14, CropPolicy(tiling=True, tile_size=512), "model card: ViT-L/14, 512x512 tiles"),
        alternative=Pairing(VIT_L14_336, CropPolicy(tiling=True), "the public demo: ViT-L/14-336, 672 px tiles"),
    ),
    Release(
        name="CCAnime-Compression-v1.5",
        filename="CCAnime-Compression-v1.5.safetensors",
        repo_id="city96/AnimeClassifiers",
        sha256="76a346d0fa6e005dd5a6f3e1e3124593183b0bc6b874c607aab0ca0f70021c9e",
        size=16_312_860,
        config=HeadConfig(
            name="CCAnime-Compression",
            rev="v1.5",
            arch="class",
            labels={"0": "Pass", "1": "JPEG", "2": "WEBP"},
            outputs=3,
        ),
        pairing=Pairing(VIT_L14_336, CropPolicy(tiling=True), "made with ViT-L/14-336, 672 px tiles"),
    ),
)

_BY_SHA = {r.sha256: r for r in RELEASES}


@dataclass(frozen=True)
class OtherHead:
    """A head from another project that loads here (by its layout); downloaded by hand from `url`."""

    name: str
    filename: str  # the name to save it under (the head's name in results is the file's stem)
    url: str
    arch: str
    measures: str
    md5: str | None = None  # published checksum of the file, where one is known

    @property
    def clip(self) -> str:
        return get_kind(self.arch).clip


OTHER_HEADS: tuple[OtherHead, ...] = (
    OtherHead(
        name="LAION-Aesthetic-v2",
        filename="sac+logos+ava1-l14-linearMSE.pth",
        url="https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
            "sac+logos+ava1-l14-linearMSE.pth",
        arch="laion-aesthetic",
        measures="photos and art (trained on SAC, LAION-Logos and AVA ratings)",
        md5="b1047fd767a00134b8fd6529bf19521a",
    ),
    OtherHead(
        name="waifu-scorer-v3",
        filename="waifu-scorer-v3.pth",  # model.pth in its repository: saved under a name that says what it is
        url="https://huggingface.co/Eugeoter/waifu-scorer-v3/resolve/main/model.pth",
        arch="waifu-scorer",
        measures="anime illustrations",
    ),
)


def other_head_by_md5(md5: str | None) -> OtherHead | None:
    return next((o for o in OTHER_HEADS if o.md5 and o.md5 == md5), None)


def find_release(name: str) -> Release | None:
    """A release by name, file name or stem, case-insensitively ('CCAnime-Compression' finds v1.5)."""
    key = name.strip().lower()
    if key.endswith(".safetensors"):
        key = key[: -len(".safetensors")]
    for r in RELEASES:
        if key in (r.name.lower(), r.config.name.lower()):
            return r
    return None


def identify(path: str | os.PathLike) -> Release | None:
    """The release this file is, by sha256 (renamed copies included), else None."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return None
    if size not in {r.size for r in RELEASES}:
        return None  # cheap: every release has a distinct size
    return _BY_SHA.get(file_sha256(path))


def paired_clip(head: Head, pairing: str = "best") -> ClipModel | None:
    """The CLIP the catalogue pairs with this head, or None for a head it does not know."""
    return head.release.pairing_for(pairing).clip if head.release is not None else None


def load_head(
    path: str | os.PathLike,
    config: HeadConfig | str | os.PathLike | None = None,
    device: str = "cpu",
) -> Head:
    """Load a head file, recognising catalogue releases by checksum.

    A recognised release without a sidecar gets the catalogue's labels and name.
    A PyTorch file (.pth ...) is read through its safetensors copy (torch_heads.py);
    one whose published checksum the catalogue knows gets that head's name.
    """
    from .head_files import load_head_file  # builds the network: imports torch
    from .torch_heads import conversion_record, is_torch_file, safetensors_copy

    if is_torch_file(path):
        path = safetensors_copy(path)
    release = identify(path)
    head = load_head_file(path, config=config, fallback_config=release.config if release else None)
    head.release = release
    head.sha256 = release.sha256 if release else None
    if release is None and config is None and not config_path_for(path).exists():
        other = other_head_by_md5((conversion_record(path) or {}).get("source_md5"))
        if other is not None and other.arch == head.arch:
            head.display = other.name
    return head.to(device)


def download_release(
    release: Release,
    models_dir: str | os.PathLike,
    allow_download: bool = True,
    _download=None,
) -> Path:
    """Make sure `release` is in `models_dir`; download it with huggingface_hub if not.

    The download is verified against the catalogue's sha256 before it is put in
    place; a mismatching download is deleted (it is ours, never a user's file).
    """
    models_dir = Path(models_dir)
    target = models_dir / release.filename
    if target.is_file():
        return target
    if not allow_download or offline():
        raise DownloadError(
            f"{release.filename} is not in {models_dir} and downloads are off. "
            f"Download it from {release.url} into {models_dir}."
        )
    if _download is None:
        from huggingface_hub import hf_hub_download as _download
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".{release.filename}.download"
    try:
        got = _download(repo_id=release.repo_id, filename=release.filename, local_dir=str(staging))
    except Exception as e:  # the hub raises many types: offline, DNS, HTTP, auth
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(
            f"could not download {release.filename} from {release.repo_id} ({type(e).__name__}: {e}). "
            f"If this machine is offline, download {release.url} by hand into {models_dir}."
        ) from None
    got = Path(got)
    digest = file_sha256(got)
    if digest != release.sha256:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(
            f"the download of {release.filename} has sha256 {digest}, expected {release.sha256}; "
            "it was deleted. Try again, or download it by hand from " + release.url
        )
    os.replace(got, target)
    if release.config.labels is not None:  # the file alone does not name its classes
        sidecar = config_path_for(target)
        if not sidecar.exists():
            import json

            sidecar.write_text(json.dumps(release.config.to_json_dict(), indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_head(
    name_or_path: str | os.PathLike | Head,
    search_dirs: list[str | os.PathLike] = (),
    download_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    device: str = "cpu",
) -> Head:
    """A head from a file path, a file in `search_dirs`, or a catalogue name (downloaded if needed); a head
    already loaded is returned as it is (a job that reads its heads once)."""
    from ..scoring.heads import Head  # a head is being loaded: torch is needed anyway

    if isinstance(name_or_path, Head):
        return name_or_path
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.exists():
        return load_head(candidate, device=device)  # a folder gets its clear error there
    for d in search_dirs:
        for fname in (text, text + ".safetensors", text + ".pth"):
            p = Path(d) / fname
            if p.is_file():
                return _load_named_file(p, device)
    release = find_release(text)
    if release is None:
        if os.sep in text or text.endswith(".safetensors"):
            raise WeightsError(f"head file not found: {text}")
        known = ", ".join(r.name for r in RELEASES)
        where = ", ".join(str(d) for d in search_dirs) or "the current folder"
        raise WeightsError(
            f"no head named {text!r}: not a file, not in {where}, and not a known release ({known})"
        )
    for d in search_dirs:
        p = Path(d) / release.filename
        if p.is_file():
            return _load_named_file(p, device)
    if download_dir is None:
        download_dir = Path(search_dirs[0]) if search_dirs else default_models_dir()
    path = download_release(release, download_dir, allow_download=allow_download)
    return load_head(path, device=device)


def _load_named_file(path: Path, device: str) -> Head:
    """A head found by name in a models folder; a file with a release's name that is not it says so."""
    head = load_head(path, device=device)
    release = find_release(path.name)
    if head.release is None and release is not None and release.filename == path.name:
        warn(f"{path} has the name of release {release.name} but is not the released file "
             f"(sha256 {file_sha256(path)}, released {release.sha256}); using it as a custom head "
             "(labels from its own config, if any). Remove or rename it to get the release.")
    return head


def default_models_dir() -> Path:
    """Where the CLI keeps downloaded heads: $CITYCLF_MODELS, else ~/.cache/cityclf/models."""
    env = os.environ.get("CITYCLF_MODELS")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cityclf" / "models"


__all__ = [
    "KNOWN_CLIPS",
    "OTHER_HEADS",
    "RELEASES",
    "VIT_L14",
    "VIT_L14_336",
    "ClipModel",
    "OtherHead",
    "Pairing",
    "Release",
    "default_models_dir",
    "download_release",
    "find_release",
    "identify",
    "load_head",
    "paired_clip",
    "resolve_head",
]
