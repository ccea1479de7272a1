"""Dynamic input axes per graph file, read from an export's manifest.json."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trio_edge.export.trt_check.report import Finding


@dataclass(frozen=True)
class Manifest:
    axes: dict[str, dict[str, set[int]]] | None  # file -> input -> axes; None: no manifest
    findings: list[Finding]


def read_manifest(directory: Path) -> Manifest:
    path = directory / "manifest.json"
    if not path.is_file():
        return Manifest(None, [])
    try:
        graphs = json.loads(path.read_text())["graphs"]
        if isinstance(graphs, Mapping):  # trio-export writes {graph name: entry}
            graphs = list(graphs.values())
        return Manifest({_manifest_file(g): _manifest_axes(g) for g in graphs}, [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        message = (f"manifest.json is malformed ({type(exc).__name__}: {exc}); expected "
                   "{'graphs': {name: {'file', 'inputs': [{'name', 'dynamic_axes'}]}}}")
        return Manifest({}, [Finding("manifest.json", "-", "-", message, "manifest")])


def _manifest_file(entry: Mapping) -> str:
    return os.path.normpath(str(entry["file"]))


def _manifest_axes(entry: Mapping) -> dict[str, set[int]]:
    axes = {}
    for item in entry["inputs"]:
        values = item.get("dynamic_axes") or []
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise TypeError(f"dynamic_axes of '{item['name']}' must be a list of ints")
        axes[str(item["name"])] = set(values)
    return axes
