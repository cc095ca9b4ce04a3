"""Run by tests/test_comfyui_e2e.py with ComfyUI's Python: ARGS = COMFYUI_DIR PACK_DIR CLIP_FOLDER.

Simulates a tight GPU on a CPU-only machine: ComfyUI's model manager is given two
distinct devices (run on cpu:0, wait on cpu) and almost no free memory on the first.
A plain load of a CLIP's ModelPatcher is then only partial (lowvram); our
ManagedClipEncoder always asks for a full load. Prints one JSON line of facts.
"""

import importlib.util
import json
import sys


def main(comfy_dir: str, pack_dir: str, clip_dir: str) -> dict:
    sys.path.insert(0, comfy_dir)
    import torch
    from comfy.cli_args import args

    args.cpu = True  # as main.py --cpu
    import comfy.model_management as mm

    spec = importlib.util.spec_from_file_location("cityclf_pack", f"{pack_dir}/__init__.py",
                                                  submodule_search_locations=[pack_dir])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["cityclf_pack"] = pack
    spec.loader.exec_module(pack)
    from cityclf_pack.nodes.managed_clip import ManagedClipEncoder

    run_on, wait_on = torch.device("cpu", 0), torch.device("cpu")
    assert run_on != wait_on
    mm.is_device_cpu = lambda d: torch.device(d) == wait_on  # cpu:0 plays the GPU
    mm.vram_state = mm.VRAMState.NORMAL_VRAM
    mm.lowvram_available = True

    def tight(dev=None, torch_free_too=False):
        free = mm.minimum_inference_memory() + 4 * 1024 * 1024  # room for ~4 MB of weights only
        return (free, free) if torch_free_too else free

    mm.get_free_memory = tight
    devices = lambda: (run_on, wait_on)  # noqa: E731
    ours = ManagedClipEncoder(clip_dir, "big", clip_dir, torch.float32, devices=devices)
    size = sum(p.numel() * p.element_size() for p in ours._clip.model.parameters())
    plain = ManagedClipEncoder(clip_dir, "plain", clip_dir, torch.float32, devices=devices)
    mm.load_models_gpu([plain.patcher()])  # what a load without force_full_load does here
    partial = plain.patcher().model.model_loaded_weight_memory
    ours.prepare()  # (this unloads `plain` to make room)
    out = ours.encode(torch.rand(2, 3, ours.image_size, ours.image_size))
    return {"size": size, "partial": partial, "full": ours.patcher().model.model_loaded_weight_memory,
            "lowvram_ours": bool(ours.patcher().model.model_lowvram), "shape": list(out.shape)}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
