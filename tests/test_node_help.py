"""Node help and translations as ComfyUI's frontend loads them for a custom node pack.

- `web/docs/<NodeId>.md`: the node library's help page (the frontend fetches
  /extensions/<pack>/docs/<NodeId>/<locale>.md, then /extensions/<pack>/docs/<NodeId>.md).
- `locales/<lang>/nodeDefs.json`: {NodeId: {display_name, description, inputs: {name: {name, tooltip}},
  outputs: {"0": {name, tooltip}}}}, merged by ComfyUI's CustomNodeManager.build_translations.
English is the nodes' own text (change a tooltip: change locales/en too); ja and zh translate the same keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def definitions(pack) -> dict:
    import importlib

    nodes = importlib.import_module(f"{pack.__name__}.nodes")
    found = {}
    for nid, cls in nodes.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        inputs = {name: {"name": name, "tooltip": (s[1] if len(s) > 1 else {}).get("tooltip", "")}
                  for section in ("required", "optional") for name, s in spec.get(section, {}).items()}
        outputs = {str(i): {"name": n, "tooltip": t} for i, (n, t) in enumerate(zip(cls.RETURN_NAMES, cls.OUTPUT_TOOLTIPS))}
        found[nid] = {"display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS[nid], "description": cls.DESCRIPTION,
                      "inputs": inputs, "outputs": outputs}
    return found


def load(lang: str) -> dict:
    return json.loads((ROOT / "locales" / lang / "nodeDefs.json").read_text(encoding="utf-8"))


def test_english_is_the_nodes_own_text(pack):
    assert load("en") == definitions(pack), "a node's text changed: update locales/en/nodeDefs.json (and ja, zh)"


@pytest.mark.parametrize("lang", ["ja", "zh"])
def test_translations_cover_every_node_input_and_output(pack, lang):
    en, tr = definitions(pack), load(lang)
    assert set(tr) == set(en)
    for nid, d in en.items():
        t = tr[nid]
        assert t["display_name"] and t["description"] and t["display_name"] != d["display_name"]
        assert set(t["inputs"]) == set(d["inputs"]) and set(t["outputs"]) == set(d["outputs"])
        assert all(v["tooltip"] for v in [*t["inputs"].values(), *t["outputs"].values()])


def test_every_node_has_a_help_page_naming_its_inputs_and_outputs(pack):
    for nid, d in definitions(pack).items():
        page = ROOT / "web" / "docs" / f"{nid}.md"
        text = page.read_text(encoding="utf-8")
        assert text.startswith(f"# {d['display_name']}") and "## Example" in text
        for name in [*d["inputs"], *(o["name"] for o in d["outputs"].values())]:
            assert f"**{name}**" in text, f"{page.name} does not describe {name}"
    assert {p.stem for p in (ROOT / "web" / "docs").glob("*.md")} == set(definitions(pack))


def test_error_titles_show_the_class_name_only(pack):
    """ComfyUI's execution.full_type_name (module + class, or the class alone for builtins) on our errors."""
    import importlib

    errors = importlib.import_module(f"{pack.__name__}.cityclf_core.errors")
    bridge = importlib.import_module(f"{pack.__name__}.nodes.comfy_bridge")
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)
               and v.__module__ == errors.__name__]
    try:
        bridge.short_error_titles()

        def full_type_name(klass):  # as ComfyUI writes the error's title
            return klass.__qualname__ if klass.__module__ == "builtins" else f"{klass.__module__}.{klass.__qualname__}"

        assert full_type_name(errors.DownloadError) == "DownloadError"
        assert all("/" not in full_type_name(c) and "." not in full_type_name(c) for c in classes)
    finally:
        for c in classes:
            c.__module__ = errors.__name__
