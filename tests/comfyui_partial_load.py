"""Run by tests/test_comfyui_e2e.py with ComfyUI's Python: ARGS = COMFYUI_DIR PACK_DIR CLIP_FOLDER.

Simulates a tight GPU on a CPU-only machine: ComfyUI's model manager is given two distinct
devices (run on cpu:0, wait on cpu) and almost no free memory on the first. A plain
ModelPatcher is then loaded only partly (lowvram); our ManagedClipEncoder is loaded fully.
Prints one JSON line of facts.
"""
import sys, importlib.util, json
comfy_dir, root, clip_dir = sys.argv[1:4]
sys.path.insert(0, comfy_dir)
import torch
from comfy.cli_args import args
args.cpu = True  # as main.py --cpu
import comfy.model_management as mm
import comfy.model_patcher
spec = importlib.util.spec_from_file_location("cityclf_pack", f"{root}/__init__.py", submodule_search_locations=[root])
pack = importlib.util.module_from_spec(spec); sys.modules["cityclf_pack"] = pack; spec.loader.exec_module(pack)
from cityclf_pack.nodes.managed_clip import ManagedClipEncoder
run_on, wait_on = torch.device("cpu", 0), torch.device("cpu")   # two distinct devices on a CPU-only machine
assert run_on != wait_on
mm.is_device_cpu = lambda d: torch.device(d) == wait_on
mm.vram_state = mm.VRAMState.NORMAL_VRAM
mm.lowvram_available = True
def tight(dev=None, torch_free_too=False):
    free = mm.minimum_inference_memory() + 4 * 1024 * 1024   # room for ~4 MB of weights only
    return (free, free) if torch_free_too else free
mm.get_free_memory = tight
enc = ManagedClipEncoder(clip_dir, "big", clip_dir, torch.float32, devices=lambda: (run_on, wait_on))
size = sum(p.numel() * p.element_size() for p in enc._clip.model.parameters())
# the simulation shows partial loading: a plain load_models_gpu of the same kind of patcher
plain = ManagedClipEncoder(clip_dir, "plain", clip_dir, torch.float32, devices=lambda: (run_on, wait_on))
mm.load_models_gpu([plain.patcher()])
partial = plain.patcher().model.model_loaded_weight_memory
enc.prepare()
full = enc.patcher().model.model_loaded_weight_memory
views = torch.rand(2, 3, enc.image_size, enc.image_size)
out = enc.encode(views)
print(json.dumps({"size": size, "partial": partial, "full": full, "lowvram_plain": bool(plain.patcher().model.model_lowvram),
                  "lowvram_ours": bool(enc.patcher().model.model_lowvram), "shape": list(out.shape)}))
