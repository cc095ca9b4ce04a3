"""Head files: a `.safetensors` head and its released `<stem>.config.json` sidecar, read and written.

`HeadConfig` (head_config.py) is what the sidecar says; `load_head_file` builds
the network its kind says and checks the weights against it; `save_head` writes
both files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from ..kinds import HeadKind, kind_for_layout, kind_for_outputs, layout_hints
from ..kinds.released import validate_state_dict
from ..scoring.heads import Head
from .clip_records import recorded_clip
from .head_config import RELEASED_KEYS, HeadConfig, config_path_for
from .weights import read_json, read_safetensors


#: what wrappers put before a network's keys: torch.compile, DataParallel/DDP, a Lightning module's attribute
WRAPPER_PREFIXES = ("_orig_mod.", "module.", "model.")


def strip_wrapper_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`sd` without the prefixes every key of it shares (`_orig_mod.layers.0.weight` -> `layers.0.weight`)."""
    while sd:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)
        if prefix is None:
            return sd
        sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def layout_of(sd: dict[str, torch.Tensor], source: str, file_keys=None) -> tuple[HeadKind, int, int, int]:
    """The kind of a config-less head file from its layout, and its (features, hidden, outputs)."""
    kind = kind_for_layout(sd)
    if kind is not None:
        return (kind, *kind.read_layout(sd, source))
    if not any(k.startswith(("up.", "down.")) for k in sd):
        keys = sorted(file_keys or sd)
        more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
        raise WeightsError(
            f"{source} is not a known head layout: keys {', '.join(keys[:8])}{more}. Known layouts: "
            f"CityClassifiers: up.0, up.1.long.{{0,2,4}}, down.{{0,1,4,5}}; {'; '.join(layout_hints())}.")
    features, hidden, outputs = validate_state_dict(sd, source)
    return kind_for_outputs(outputs), features, hidden, outputs


def head_from_state_dict(
    sd: dict[str, torch.Tensor], source: str, config: HeadConfig | None, default_name: str
) -> tuple[nn.Module, HeadConfig]:
    """The network of `sd`, checked against its config's kind (none: the kind its layout says)."""
    file_keys, sd = list(sd), strip_wrapper_prefixes(sd)
    if config is None:
        kind, features, hidden, outputs = layout_of(sd, source, file_keys)
        config = HeadConfig(name=default_name, arch=kind.name, features=features, hidden=hidden, outputs=outputs)
    else:
        features, hidden, outputs = config.kind.read_layout(sd, source)
        if (config.features, config.hidden, config.outputs) != (features, hidden, outputs):
            raise WeightsError(
                f"{source}: its config says features={config.features}, hidden={config.hidden}, "
                f"outputs={config.outputs}, but the weights have features={features}, hidden={hidden}, "
                f"outputs={outputs}. The config sidecar belongs to another model; fix or remove it."
            )
    net = config.kind.build_net(config)
    net.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()})
    net.eval()
    return net, config


def read_config_sidecar(path: str | os.PathLike, default_name: str) -> HeadConfig:
    data = read_json(path, "head config")
    return HeadConfig.from_json_dict(data, str(path), default_name)


def load_head_file(
    path: str | os.PathLike,
    config: HeadConfig | str | os.PathLike | None = None,
    fallback_config: HeadConfig | None = None,
) -> Head:
    """Load a head from a .safetensors file.

    The config is, in order: `config` if given (a HeadConfig or a JSON path), the
    `<stem>.config.json` sidecar if present, `fallback_config` (the catalogue's,
    for a recognised release), else inferred from the layout: a kind's own
    (LAION aesthetic, waifu-scorer), or the released one (outputs from
    `down.5.bias`, arch score when 1 output).
    """
    path = Path(path)
    sd = read_safetensors(path, "head weights")
    if isinstance(config, (str, os.PathLike)):
        config = read_config_sidecar(config, path.stem)
    if config is None:
        sidecar = config_path_for(path)
        if sidecar.is_file():
            config = read_config_sidecar(sidecar, path.stem)
        else:
            config = fallback_config
    net, config = head_from_state_dict(sd, str(path), config, path.stem)
    return Head(net=net, config=config, path=path, clip_record=recorded_clip(config))


def save_head(net: nn.Module, config: HeadConfig, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `path` (.safetensors, released layout, float32, no metadata) and its config sidecar."""
    from ..confined import replacing
    from ..filemode import save_safetensors

    path = Path(path)
    sidecar = config_path_for(path)
    if not overwrite:
        for p in (path, sidecar):
            if p.exists():
                raise WeightsError(f"{p} already exists; choose another name or allow overwriting")
    tensors = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in net.state_dict().items()}  # BatchNorm's step counter stays an integer
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(sidecar) as tmp:  # both written before either is renamed: a failure leaves both as they were
        tmp.write_text(json.dumps(config.to_json_dict(), indent=2) + "\n", encoding="utf-8")
        save_safetensors(tensors, path)
    return path



__all__ = ["RELEASED_KEYS", "HeadConfig", "config_path_for", "head_from_state_dict", "load_head_file",
           "read_config_sidecar", "save_head", "strip_wrapper_prefixes"]
