"""manifest.json: the contract between export and runtime.

Records tool and library versions, model id and revision, the plan (schedule, grid, maxima), every
graph's inputs/outputs, and the sha256 of every file. `read_manifest` verifies all of it.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from ..errors import ArtifactError
from .files import sha256_file

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("trio-edge", "torch", "transformers", "onnx", "onnxruntime", "onnxscript", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def file_table(directory: Path, progress: bool = False) -> dict[str, dict]:
    """Every file under `directory` except the manifest: relative path -> size and sha256."""
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    if progress:
        from tqdm.auto import tqdm

        paths = tqdm(paths, desc="hash", unit="file", leave=False)
    return {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in paths}


def write_manifest(directory: Path, body: dict, progress: bool = False) -> Path:
    body = {"manifest_version": MANIFEST_VERSION, **body, "files": file_table(directory, progress)}
    path = directory / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=False))
    tmp.replace(path)
    return path


def safe_member(directory: Path, relative: str) -> Path:
    """Resolve a manifest path inside `directory`; refuse absolute paths and '..' (path traversal)."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or not relative:
        raise ArtifactError(f"manifest names a file outside the export directory: {relative!r}; refusing to read it")
    resolved = (directory / pure).resolve()
    if not resolved.is_relative_to(directory.resolve()):
        raise ArtifactError(f"manifest file {relative!r} resolves outside {directory}; refusing to read it")
    return resolved


def read_manifest(directory: str | Path, *, verify_hashes: bool = True) -> dict:
    """Load and check a manifest: version, every listed file present, sizes and sha256 equal."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; pass the output directory of trio-export")
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {MANIFEST_NAME}: not a (complete) trio-export directory; re-run trio-export")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ArtifactError(f"{path} is not valid JSON ({error}); re-run trio-export") from None
    except OSError as error:
        raise ArtifactError(f"cannot read {path}: {error.strerror or error}; check its permissions") from None
    if not isinstance(body, dict):
        raise ArtifactError(f"{path} is not a trio-export manifest (a JSON {type(body).__name__}, not an object); "
                            "re-run trio-export")
    version = body.get("manifest_version")
    if not isinstance(version, int) or version > MANIFEST_VERSION or version < 1:
        raise ArtifactError(f"{path}: manifest_version {version!r} is not supported by this trio-edge (reads "
                            f"{MANIFEST_VERSION}); upgrade trio-edge or re-export with this version")
    try:
        _check_files(directory, path, body, verify_hashes)
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ArtifactError(f"{path} is malformed ({type(error).__name__}: {error}); re-run trio-export") from None
    return body


def _check_files(directory: Path, path: Path, body: dict, verify_hashes: bool) -> None:
    files = body.get("files", {})
    for relative, entry in files.items():
        member = safe_member(directory, relative)
        if not member.is_file():
            raise ArtifactError(f"{directory}: file {relative} listed in the manifest is missing; re-copy the whole directory")
        if member.stat().st_size != entry["bytes"]:
            raise ArtifactError(f"{directory}: {relative} has {member.stat().st_size} bytes, manifest says "
                                f"{entry['bytes']} (truncated or modified copy); re-copy or re-export")
        if verify_hashes and sha256_file(member) != entry["sha256"]:
            raise ArtifactError(f"{directory}: sha256 of {relative} does not match the manifest (corrupted or "
                                "modified); re-copy or re-export")
    for graph in body.get("graphs", {}).values():
        if graph["file"] not in files:
            raise ArtifactError(f"{path}: graph file {graph['file']} is not in the file table")
