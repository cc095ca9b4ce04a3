"""The registry of head kinds: a kind is known by its name (a head config's "arch")."""

from __future__ import annotations

from ..errors import WeightsError

_KINDS: dict[str, "HeadKind"] = {}  # noqa: F821 (kinds.base imports this module: no import back)


def register_kind(kind: HeadKind, replace: bool = False) -> HeadKind:
    """Make `kind` known by its name (the config's "arch"); returns it."""
    if kind.name in _KINDS and not replace and _KINDS[kind.name] is not kind:
        raise ValueError(f"a head kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    _KINDS.pop(name, None)


def get_kind(name: str) -> HeadKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise WeightsError(f"unknown head kind (arch) {name!r}; known kinds: {kind_choices()}") from None


def kind_names() -> list[str]:
    return list(_KINDS)


def kind_choices() -> str:
    """The registered kinds for a message: "'score' or 'class'", then kinds trained elsewhere in brackets."""
    names = [repr(n) for n, k in _KINDS.items() if k.trains_from_folders]
    others = [repr(n) for n, k in _KINDS.items() if not k.trains_from_folders]
    text = " or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1]
    return text + (f" (other kinds: {', '.join(others)})" if others else "")


def kind_for_layout(state_dict: dict) -> HeadKind | None:
    """The kind whose own layout a config-less file has (None: the released layout, or none known)."""
    return next((k for k in _KINDS.values() if k.recognises(state_dict)), None)


def layout_hints() -> list[str]:
    """What each known layout looks like, for the message about a file of none of them."""
    return [k.layout_hint for k in _KINDS.values() if k.layout_hint]


def kind_for_outputs(outputs: int) -> HeadKind:
    """The kind of a released-layout head known only by its weights: 1 output a score, more a classifier."""
    return get_kind("score" if outputs == 1 else "class")


def result_from_dict(head: str, d: dict):
    """A HeadResult from its `to_dict` form (e.g. a node reading Predict's JSON output), as its kind rebuilds it."""
    result = get_kind(d["arch"]).from_dict(head, d)
    result.views = d.get("views", 0)
    return result


__all__ = ["get_kind", "kind_choices", "kind_for_layout", "kind_for_outputs", "kind_names", "layout_hints",
           "register_kind", "result_from_dict", "unregister_kind"]
