"""The package's shape: layers import only downwards, no import cycles (counting imports inside functions),
and `import cityclf_core` or loading the node pack pulls in none of the optional systems."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: lowest first; a module may import from its own layer and the ones before it (design.md)
LAYERS = [
    ("scoring",),
    ("kinds",),
    ("loading",),
    ("store",),
    ("dataset", "train", "pixiv"),
    ("engines",),
    ("cli", "nodes"),
]
#: the shared leaves scoring may use
LEAVES = {"cityclf_core.errors", "cityclf_core.defaults"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for top in ("cityclf_core", "nodes"):
        for path in sorted((ROOT / top).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every cityclf_core/nodes module `name` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("nodes.cityclf_core"):  # the pack's nodes import the library beside them
                module = module[len("nodes."):]
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    top = parts[1] if parts[0] == "cityclf_core" and len(parts) > 1 else parts[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    return None


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layers_import_only_downwards():
    upward = []
    for name, targets in graph().items():
        here = layer_of(name)
        for target in targets:
            there = layer_of(target)
            if here == 0 and there != 0 and target not in LEAVES:
                upward.append(f"{name} -> {target} (scoring imports nothing above it but errors and defaults)")
            elif here is not None and there is not None and there > here:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports that point up:\n" + "\n".join(sorted(upward))


def test_the_graph_sees_imports_inside_functions():
    g = graph()
    assert "cityclf_core.loading.clips" in g["cityclf_core.dataset.passes"]  # imported inside a method
    assert "cityclf_core.scoring.images" in g["cityclf_core.scoring.pipeline"]


OPTIONAL = ("cityclf_core.pixiv", "cityclf_core.train", "cityclf_core.engines", "cityclf_core.store.sqlite",
            "cityclf_pack.cityclf_core.pixiv", "cityclf_pack.cityclf_core.train", "cityclf_pack.cityclf_core.engines",
            "cityclf_pack.cityclf_core.store.sqlite")


def loaded_after(code: str) -> list[str]:
    probe = code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


#: ComfyUI loading the pack: stand-ins for its `comfy` and `folder_paths` modules, then the pack by path
LOAD_PACK = f"""
import importlib.util, sys, tempfile, types
sys.modules["comfy"] = types.ModuleType("comfy")
fp = types.ModuleType("folder_paths")
fp.models_dir = tempfile.mkdtemp()
fp.folder_names_and_paths = {{}}
fp.get_folder_paths = lambda name: list(fp.folder_names_and_paths.get(name, ([], set()))[0])
sys.modules["folder_paths"] = fp
spec = importlib.util.spec_from_file_location("cityclf_pack", {str(ROOT / "__init__.py")!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules["cityclf_pack"] = pack
spec.loader.exec_module(pack)
assert "CityClfLoader" in pack.NODE_CLASS_MAPPINGS
"""


@pytest.mark.parametrize("what, code", [("the library", "import cityclf_core\ncityclf_core.ScoringModel"),
                                        ("the node pack as ComfyUI loads it", LOAD_PACK)])
def test_importing_loads_no_optional_system(what, code):
    loaded = loaded_after(code)
    heavy = [m for m in loaded if m in OPTIONAL or m.startswith(tuple(o + "." for o in OPTIONAL))]
    assert not heavy, f"{what} imports {heavy}"
    assert "ray" not in loaded
    assert {"cityclf_core.scoring.pipeline", "cityclf_pack.cityclf_core.scoring.pipeline"} & set(loaded)
