"""manifest.json: the contract between export and runtime, as dataclasses with one reader and one writer.

It records tool and library versions, the model (id, revision, family, dtype), pre/post-processing
facts, the plan (schedule, grid, maxima), every graph (file, kind, signature, dynamic-axis ranges, weight
format), the weight quantization (if any) and accounting, the export's validation rows, the sha256 of every file, and (after trio-build) the
TensorRT engines. `read_manifest` checks all of it; nothing else in trio-edge parses manifest JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import ArtifactError
from ..files import sha256_file
from .graphs import GraphKind, GraphSpec, graph_specs
from .plan import PipelinePlan
from .weights import Quantization

MANIFEST_NAME = "manifest.json"
# 2: per-graph weight formats and the export's quantization (version 1 manifests read as unquantized); a
# version-1 reader refuses version 2, so it never runs int4/int8 graphs as if they were float ones.
# 3: the export target (tensorrt / onnxruntime), and segment graphs that scatter only the new KV slots into their
# cache input (kv_out is kv updated in place, bound to one buffer). Versions 1-2 still read (trio-check, the
# tables), but their segments rewrite the whole cache into a new buffer, so runtimes refuse them (re-export).
# 4: onnxruntime-target segments take one cache per layer's keys and values (GroupQueryAttention's past and
# present on one shared buffer) instead of one kv per segment; version-3 exports of that target are refused.
# 5: select (and SparseVLM raters) graphs take `image_positions`, the rows of the image tokens entering the cut (one
# span per image or video frame group), instead of `image_start`; the plan records images / video frames per request
# and per-image budgets. Earlier exports with select graphs are refused by the runtimes (re-export).
FORMAT_VERSION = 5
FIRST_IN_PLACE_KV_VERSION = 3
FIRST_SHARED_GQA_VERSION = 4
FIRST_IMAGE_POSITIONS_VERSION = 5
EXPORT_TARGETS = ("tensorrt", "onnxruntime")  # --target: standard ONNX for TensorRT 10.3+, or ORT contrib ops
REEXPORT = "re-export with trio-export"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("trio-edge", "torch", "transformers", "onnx", "onnxruntime", "onnxscript", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what the user typed
    source: str  # resolved hub id or directory
    revision: str | None
    architecture: str
    family: str
    dtype: str  # tensor dtype name of the graphs (artifact.dtypes)


@dataclass(frozen=True)
class IOInfo:
    """What pre/post-processing needs beyond the tokenizer and processor files."""

    image_token_id: int
    stop_token_ids: tuple[int, ...]
    tile_count: int
    tile_size: int
    # the vision graph's input shape (the adapter's pixel_shape); older manifests: () = LLaVA's square tiles
    pixel_shape: tuple[int, ...] = ()

    def vision_input_shape(self) -> tuple[int, ...]:
        return self.pixel_shape or (self.tile_count, 3, self.tile_size, self.tile_size)


@dataclass(frozen=True)
class GraphEntry:
    file: str
    kind: GraphKind
    bytes: int
    inputs: tuple[dict, ...]  # TensorSpec.to_dict() rows
    outputs: tuple[dict, ...]
    dynamic_ranges: dict[str, tuple[int, int]]  # named dynamic axis -> declared (min, max)
    # what the graph's weights are: {"format": export dtype} unquantized; quantized graphs add the form, bits,
    # block size, how many weights are quantized and how many are stored in another graph's data file
    weights: dict | None = None
    # why the graph must compute in fp32 inside a reduced-precision (fp16/bf16) engine, if it must (the model
    # family's tower overflows fp16): trio-build builds it without FP16/BF16, trio-check says so
    fp32_compute: str | None = None

    def to_dict(self) -> dict:
        body = {"file": self.file, "kind": self.kind.value, "bytes": self.bytes, "inputs": list(self.inputs),
                "outputs": list(self.outputs),
                "dynamic_ranges": {axis: list(bounds) for axis, bounds in self.dynamic_ranges.items()}}
        if self.weights is not None:
            body["weights"] = self.weights
        if self.fp32_compute is not None:
            body["fp32_compute"] = self.fp32_compute
        return body

    @classmethod
    def from_dict(cls, body: dict) -> "GraphEntry":
        return cls(str(body["file"]), GraphKind(body["kind"]), int(body["bytes"]), tuple(body["inputs"]),
                   tuple(body["outputs"]),
                   {str(axis): (int(lo), int(hi)) for axis, (lo, hi) in (body.get("dynamic_ranges") or {}).items()},
                   dict(body["weights"]) if body.get("weights") is not None else None,
                   str(body["fp32_compute"]) if body.get("fp32_compute") else None)


@dataclass
class Manifest:
    tool: dict[str, str]
    created: str
    model: ModelInfo
    io: IOInfo
    plan: PipelinePlan
    opset: int
    graphs: dict[str, GraphEntry]
    weights: dict[str, float]  # model_parameter_bytes, graph_bytes, ratio
    validation: list[dict] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)  # relative path -> {"bytes", "sha256"}; set on write
    tensorrt: dict | None = None  # written by trio-build (engine_build)
    quantization: Quantization | None = None  # None: every weight in the export dtype
    target: str | None = "tensorrt"  # EXPORT_TARGETS; None in manifests before version 3
    format_version: int = FORMAT_VERSION

    def weight_format(self) -> str:
        """What trio-run / trio-bench print: 'float16', or e.g. 'int4 (rtn, block 32)'."""
        return self.quantization.describe() if self.quantization is not None else self.model.dtype

    def content_key(self) -> str:
        """A digest of every file's sha256: equal exactly when the export's files are (runtime caches key on it)."""
        import hashlib

        rows = sorted(f"{path}:{entry['sha256']}" for path, entry in self.files.items())
        return hashlib.sha256("\n".join(rows).encode()).hexdigest()

    def check_runnable(self, directory) -> None:
        """Refuse graphs this runtime cannot run: segments of manifests before version 3 return a whole new cache
        (the runtime binds kv_out to kv's own buffer)."""
        if self.format_version < FIRST_IN_PLACE_KV_VERSION:
            raise ArtifactError(f"{directory} was exported by an older trio-edge (manifest version "
                                f"{self.format_version}): its segment graphs rewrite the whole KV cache each step, "
                                f"which this runtime no longer runs; {REEXPORT}")
        if self.target == "onnxruntime" and self.format_version < FIRST_SHARED_GQA_VERSION:
            raise ArtifactError(f"{directory} is an onnxruntime-target export of an older trio-edge (manifest version "
                                f"{self.format_version}): its attention copies the KV cache each step, and this "
                                f"runtime binds one cache per layer instead; {REEXPORT}")
        if self.plan.selects and self.format_version < FIRST_IMAGE_POSITIONS_VERSION:
            raise ArtifactError(f"{directory} was exported by an older trio-edge (manifest version "
                                f"{self.format_version}): its select graphs take the image span's start, and this "
                                f"runtime passes the image tokens' rows (several images, video); {REEXPORT}")

    def check_tensorrt_target(self, directory) -> None:
        """Refuse an export made for ONNX Runtime (contrib ops TensorRT has no importer for) on TensorRT."""
        if self.target == "onnxruntime":
            raise ArtifactError(f"{directory} was exported with --target onnxruntime (ONNX Runtime contrib ops, which "
                                "TensorRT cannot parse); re-export with --target tensorrt")

    def check_onnxruntime_device(self, directory, device: str) -> None:
        """Refuse an fp32 onnxruntime-target export on CUDA: ONNX Runtime's CUDA GroupQueryAttention has fp16 and
        bf16 kernels only, so its nodes would fall back to the CPU provider (a host copy of every layer's cache per
        step, and no shared past/present buffer)."""
        if self.target == "onnxruntime" and device.startswith("cuda") and self.model.dtype == "float32":
            raise ArtifactError(f"{directory} is an fp32 --target onnxruntime export, and ONNX Runtime's CUDA "
                                "GroupQueryAttention has fp16 and bf16 kernels only; re-export with --dtype fp16 "
                                "(or --target tensorrt), or run it with --device cpu")

    def specs(self, runtime_form: bool = False) -> dict[str, GraphSpec]:
        """Every graph file's signature, derived from the plan (the runtime checks inputs against these);
        `runtime_form`: those of the torch runtime's modules instead (one kv per segment whatever the target)."""
        layer_caches = (not runtime_form and self.target == "onnxruntime"
                        and self.format_version >= FIRST_SHARED_GQA_VERSION)
        return graph_specs(self.plan, tile_count=self.io.tile_count, pixel_shape=self.io.vision_input_shape(),
                           dtype=self.model.dtype, layer_caches=layer_caches)

    def to_dict(self) -> dict:
        body = {"manifest_version": self.format_version, "tool": self.tool, "created": self.created,
                "model": asdict(self.model), "io": {**asdict(self.io), "stop_token_ids": list(self.io.stop_token_ids)},
                "target": self.target, "plan": self.plan.to_dict(), "opset": self.opset,
                "graphs": {name: entry.to_dict() for name, entry in self.graphs.items()},
                "weights": self.weights, "validation": self.validation}
        if self.tensorrt is not None:
            body["tensorrt"] = self.tensorrt
        body["quantization"] = self.quantization.to_dict() if self.quantization is not None else None
        body["files"] = self.files
        return body

    @classmethod
    def from_dict(cls, body: dict) -> "Manifest":
        """Parse a manifest body; KeyError/TypeError/ValueError on a malformed one (read_manifest words them)."""
        io = body["io"]
        return cls(
            tool=dict(body.get("tool", {})), created=str(body.get("created", "")),
            model=ModelInfo(**{k: body["model"].get(k) for k in ModelInfo.__dataclass_fields__}),
            io=IOInfo(int(io["image_token_id"]), tuple(int(t) for t in io["stop_token_ids"]), int(io["tile_count"]),
                      int(io["tile_size"]), tuple(int(d) for d in io.get("pixel_shape", ()))),
            plan=PipelinePlan.from_dict(body["plan"]), opset=int(body["opset"]),
            graphs={str(name): GraphEntry.from_dict(entry) for name, entry in body["graphs"].items()},
            weights=dict(body.get("weights", {})), validation=list(body.get("validation", [])),
            files=dict(body.get("files", {})), tensorrt=body.get("tensorrt"),
            quantization=Quantization.from_dict(body.get("quantization")),  # absent in version 1: unquantized
            target=body.get("target"),  # absent before version 3
            format_version=int(body["manifest_version"]),
        )


# ---- files ------------------------------------------------------------------------------------------------------
def file_table(directory: Path, progress: bool = False) -> dict[str, dict]:
    """Every file under `directory` except the manifest: relative path -> size and sha256."""
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    if progress:
        from tqdm.auto import tqdm

        paths = tqdm(paths, desc="hash", unit="file", leave=False)
    return {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in paths}


def safe_member(directory: Path, relative: str) -> Path:
    """Resolve a manifest path inside `directory`; refuse absolute paths and '..' (path traversal)."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or not relative:
        raise ArtifactError(f"manifest names a file outside the export directory: {relative!r}; refusing to read it")
    resolved = (directory / pure).resolve()
    if not resolved.is_relative_to(directory.resolve()):
        raise ArtifactError(f"manifest file {relative!r} resolves outside {directory}; refusing to read it")
    return resolved


def is_export_dir(path) -> bool:
    """Whether `path` looks like a trio-export directory (it holds a manifest)."""
    return (Path(path) / MANIFEST_NAME).is_file()


# ---- the writer -------------------------------------------------------------------------------------------------
def write_manifest(directory: Path, manifest: Manifest, progress: bool = False) -> Path:
    """Hash every file of `directory` into the manifest and write it atomically (temporary file + rename)."""
    manifest.files = file_table(directory, progress)
    path = directory / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False))
    tmp.replace(path)
    return path


# ---- the reader -------------------------------------------------------------------------------------------------
def _load_body(directory: Path) -> dict:
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
    return body


def read_manifest(directory: str | Path, *, verify_hashes: bool = True) -> Manifest:
    """Load and check a manifest: version, schema, every listed file present, sizes and sha256 equal."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    body = _load_body(directory)
    version = body.get("manifest_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ArtifactError(f"{path}: manifest_version {version!r} is not supported by this trio-edge (reads "
                            f"{FORMAT_VERSION}); upgrade trio-edge or {REEXPORT}")
    try:
        _check_files(directory, path, body, verify_hashes)
        manifest = Manifest.from_dict(body)
    except ArtifactError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ArtifactError(f"{path} is malformed ({type(error).__name__}: {error}); {REEXPORT}") from None
    if manifest.format_version >= FIRST_IN_PLACE_KV_VERSION and manifest.target not in EXPORT_TARGETS:
        raise ArtifactError(f"{path}: unknown export target {manifest.target!r} (known: {', '.join(EXPORT_TARGETS)}); "
                            f"{REEXPORT}")
    missing = [name for name in manifest.specs() if name not in manifest.graphs]
    if missing:
        raise ArtifactError(f"{path}: the plan needs graphs {', '.join(missing)}, which the manifest does not list; "
                            f"{REEXPORT}")
    return manifest


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


def read_dynamic_axes(directory: Path) -> tuple[dict[str, dict[str, set[int]]] | None, str | None]:
    """What trio-check needs from a manifest, read leniently (it also checks foreign or partial directories):
    graph file -> input name -> dynamic axis indices. (None, None) without a manifest; ({}, problem) when
    the manifest is malformed."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None, None
    try:
        graphs = json.loads(path.read_text())["graphs"]
        entries = list(graphs.values()) if isinstance(graphs, dict) else graphs
        return {os.path.normpath(str(g["file"])): _input_axes(g) for g in entries}, None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return {}, (f"manifest.json is malformed ({type(exc).__name__}: {exc}); expected "
                    "{'graphs': {name: {'file', 'inputs': [{'name', 'dynamic_axes'}]}}}")


def read_fp32_compute(directory: Path) -> dict[str, str]:
    """Graph file -> why it computes in fp32 in a reduced-precision engine, read leniently (trio-check)."""
    try:
        graphs = json.loads((Path(directory) / MANIFEST_NAME).read_text())["graphs"]
        entries = list(graphs.values()) if isinstance(graphs, dict) else graphs
        return {os.path.normpath(str(g["file"])): str(g["fp32_compute"]) for g in entries if g.get("fp32_compute")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def read_target(directory: Path) -> str | None:
    """The export target a manifest records, read leniently (trio-check): None without one."""
    try:
        target = json.loads((Path(directory) / MANIFEST_NAME).read_text()).get("target")
    except (OSError, ValueError, AttributeError):
        return None
    return target if isinstance(target, str) else None


def _input_axes(entry: dict) -> dict[str, set[int]]:
    axes = {}
    for item in entry["inputs"]:
        values = item.get("dynamic_axes") or []
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise TypeError(f"dynamic_axes of '{item['name']}' must be a list of ints")
        axes[str(item["name"])] = set(values)
    return axes
