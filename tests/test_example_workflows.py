"""The example workflows: in step with the nodes, complete model lists, thumbnails, consistent links."""

from __future__ import annotations

import importlib.util
import json
from importlib import import_module

import pytest
from conftest import ROOT

from cityclf_core import OTHER_HEADS, RELEASES

WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


@pytest.fixture(scope="module")
def mappings(pack):
    return import_module("cityclf_pack.nodes").NODE_CLASS_MAPPINGS


def widget_specs(cls):
    out = []
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, (kind, *opts) in spec.get(section, {}).items():
            o = opts[0] if opts else {}
            if isinstance(kind, list) or (kind in WIDGET_TYPES and not o.get("forceInput")):
                out.append((name, kind))
    return out


def test_there_are_four_use_cases_each_with_a_thumbnail():
    assert {w.stem for w in WORKFLOWS} == {"score_gate_save", "tag_folder", "best_of_n", "compare_aesthetic_scorers"}
    for w in WORKFLOWS:
        thumb = w.with_suffix(".jpg")
        assert thumb.is_file() and thumb.stat().st_size > 5000, f"{thumb.name} missing"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_our_nodes_widgets_match_the_code(path, mappings):
    wf = json.loads(path.read_text())
    ours = [n for n in wf["nodes"] if n["type"].startswith("CityClf")]
    assert ours
    for node in ours:
        assert node["type"] in mappings, node["type"]
        specs = widget_specs(mappings[node["type"]])
        values = node["widgets_values"]
        assert len(values) == len(specs), f"{path.name} node {node['id']} {node['type']}"
        for (name, kind), value in zip(specs, values):
            if isinstance(kind, list) and name != "head":
                assert value in kind, f"{node['type']}.{name} = {value!r} not in {kind}"
            elif kind == "BOOLEAN":
                assert isinstance(value, bool)
            elif kind in ("INT", "FLOAT"):
                assert isinstance(value, (int, float))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_models_are_listed_with_urls_and_folders(path):
    wf = json.loads(path.read_text())
    urls = {r.filename: r.url for r in (*RELEASES, *OTHER_HEADS)}
    for node in wf["nodes"]:
        if node["type"] not in ("CityClfLoader", "CLIPVisionLoader"):
            continue
        models = node["properties"].get("models")
        assert models and len(models) == 1, f"{path.name}: {node['type']} {node['id']} lists no model"
        m = models[0]
        assert m["name"] == node["widgets_values"][0]
        assert m["url"].startswith(("https://huggingface.co/", "https://github.com/christophschuhmann/"))
        if node["type"] == "CityClfLoader":
            assert m["directory"] == "cityclassifiers" and m["url"] == urls[m["name"]]
        else:
            assert m["directory"] == "clip_vision" and m["url"].endswith("/model.safetensors")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_links_are_consistent(path):
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        in_type = nodes[dst]["inputs"][dst_slot]["type"]
        assert in_type in (kind, "*"), f"{path.name}: link {link_id} {kind} -> {in_type}"
    assert wf["last_link_id"] == len(wf["links"]) and wf["last_node_id"] == max(nodes)


def test_committed_files_equal_the_generator_output():
    spec = importlib.util.spec_from_file_location("make_wf", ROOT / "docs" / "make_example_workflows.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for name, make in gen.WORKFLOWS.items():
        committed = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
        assert make() == committed, f"{name}.json is stale: run python docs/make_example_workflows.py"
