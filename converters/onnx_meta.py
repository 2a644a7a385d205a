"""ONNX metadata_props: how every converter stamps what it made (source, versions, fidelity)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def set_onnx_metadata(model: Any, meta: dict[str, Any]) -> None:
    """Sets string metadata_props on an onnx ModelProto: a key already there keeps its place
    and takes the new value, new keys are appended in META's order."""
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in meta.items():
        prop = existing.get(str(key))
        if prop is None:
            prop = model.metadata_props.add()
            prop.key = str(key)
        prop.value = str(value)


def stamp_onnx_file(path: Path, meta: dict[str, Any], *, doc_string: str | None = None) -> None:
    """`set_onnx_metadata` on the ONNX file at PATH (rewritten in place); DOC_STRING, when
    given, replaces the graph's description."""
    import onnx

    proto = onnx.load(str(path))
    set_onnx_metadata(proto, meta)
    if doc_string is not None:
        proto.doc_string = doc_string
    onnx.save(proto, str(path))


def installed_versions(dists: Sequence[str]) -> dict[str, str]:
    """Versions of the installed distributions among DISTS (for reports and metadata)."""
    import importlib.metadata as md

    out = {}
    for dist in dists:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out
