"""Training checkpoints: everything needed to resume bit for bit, as safetensors + JSON (no pickles)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import WeightsError
from ..loading.weights import check_safetensors_file


def checkpoint_path(out: Path, cfg) -> Path:
    return out / f"{cfg.name}.checkpoint.safetensors"


def save_checkpoint(path: Path, net, opt, sched, gen: torch.Generator, state: dict, best: dict | None,
                    pause=None) -> None:
    """Everything to resume, as safetensors (tensors) + JSON metadata: no pickles. Written to a temporary
    name, synced and renamed over the old one: a kill leaves the old checkpoint or the new one."""
    from ..filemode import save_safetensors

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if best is not None:
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best.items()})
    opt_state = opt.state_dict()
    names = [n for n, _ in net.named_parameters()]
    for idx, st in opt_state["state"].items():
        for key, value in st.items():
            tensors[f"optim.{names[idx]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous().float()
    tensors["rng.generator"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    device = next(net.parameters()).device
    if device.type == "cuda":  # dropout on a GPU draws from that device's generator, not the CPU's
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    meta = {"state": json.dumps(state), "scheduler": json.dumps(sched.state_dict(), default=float),
            "param_groups": json.dumps(opt_state["param_groups"])}
    save_safetensors(tensors, path, metadata=meta, before_rename=pause)  # pause: a test stops the process there


def load_checkpoint(path: Path, net, opt, sched, gen: torch.Generator) -> tuple[dict, dict | None]:
    from safetensors import safe_open


    check_safetensors_file(path, "checkpoint")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        keys = set(f.keys())
        tensors = {k: f.get_tensor(k) for k in keys}
    if "state" not in meta:
        raise WeightsError(f"{path} is not a cityclf training checkpoint")
    try:
        net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as e:
        raise WeightsError(f"{path}: the checkpoint is for another head shape ({e}); check the config") from None
    names = [n for n, _ in net.named_parameters()]
    state = {}
    for idx, name in enumerate(names):
        st = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optim.{name}.")}
        if st:
            if "step" in st:
                st["step"] = st["step"].reshape(())
            state[idx] = st
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    sched.load_state_dict(json.loads(meta["scheduler"]))
    gen.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    device = next(net.parameters()).device
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return json.loads(meta["state"]), best
