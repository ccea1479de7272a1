"""Check exported ONNX graphs for TensorRT problems before carrying them to the Jetson.

PATH is an export directory (every *.onnx in it is checked; dynamic axes come
from its manifest.json when there is one) or a single .onnx file. Graphs are
checked against the ONNX operator table, data types and opset range of
TensorRT's ONNX parser, without TensorRT installed: unsupported or custom ops,
TopK with a non-constant K or K > 3840, Loop/If/Scan, NonZero, float64
tensors, symbolic input dims the manifest does not declare dynamic, and broken
external-data files.

--trt-version (default 10.3, what JetPack 6 ships on Jetson Orin) picks the
TensorRT whose operator rules apply: e.g. the ONNX Attention op parses from
10.14 only, TensorScatter from 10.15. Graphs that need a newer TensorRT than
--trt-version, and exports made with --target onnxruntime (ONNX Runtime
contrib ops), are refused with one line.

Exit status: 0 no errors, 1 errors found, 2 the path cannot be checked (no
such path, an unreadable .onnx file or manifest.json, a graph the manifest
lists but is missing; or the graphs need a newer TensorRT, or hold ONNX
Runtime contrib ops), with one line `error: ...`.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError, TrioEdgeError
from ..exporters.trt_check import (
    JETSON_ORIN_TENSORRT,
    TENSORRT_SOURCE,
    TENSORRT_VERSION_CHECKED,
    check_path,
    format_report,
    parse_trt_version,
)
from .common import CliParser, silence_stdout

EXIT_OK, EXIT_ERRORS, EXIT_BAD_PATH = 0, 1, 2


# findings that mean a file could not be read at all, so nothing about it was checked
UNCHECKABLE_RULES = ("load", "manifest")


def _parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="trio-check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Rules: TensorRT {TENSORRT_VERSION_CHECKED}, from {TENSORRT_SOURCE}.",
    )
    parser.add_argument("path", metavar="PATH", help="export directory or .onnx file")
    parser.add_argument("--trt-version", default=JETSON_ORIN_TENSORRT, metavar="MAJOR.MINOR",
                        help=f"TensorRT whose rules apply (default {JETSON_ORIN_TENSORRT}, JetPack 6; versions above "
                             f"{TENSORRT_VERSION_CHECKED} get {TENSORRT_VERSION_CHECKED}'s rules)")
    parser.add_argument("--strict", action="store_true",
                        help="treat warnings as errors (exit 1 on any finding)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``trio-check``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        version = parse_trt_version(args.trt_version)
        _refuse_onnxruntime_target(args.path)
        reports = check_path(args.path, version)
        _refuse_uncheckable(reports)
        _refuse_unparseable(reports, args.trt_version)
    except TrioEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_PATH
    if not reports:
        print(f"error: no .onnx files in {args.path}; pass an export directory or a .onnx file", file=sys.stderr)
        return EXIT_BAD_PATH
    errors = sum(len(r.errors) for r in reports)
    warnings = sum(len(r.warnings) for r in reports)
    failed = errors > 0 or (args.strict and warnings > 0)
    verdict = "NOT ready for TensorRT" if failed else "ready for TensorRT"
    try:
        for report in reports:
            print(format_report(report))
            print()
        print(f"{len(reports)} file(s) checked: {errors} error(s), {warnings} warning(s) - {verdict}")
        sys.stdout.flush()
    except BrokenPipeError:  # `trio-check DIR | head`: the verdict is still the exit status
        silence_stdout()
    return EXIT_ERRORS if failed else EXIT_OK


def _refuse_uncheckable(reports) -> None:
    """One line for a file that could not be read (a corrupt .onnx, a malformed or inconsistent manifest.json)."""
    unreadable = [(r.path, f) for r in reports for f in r.errors if f.rule in UNCHECKABLE_RULES]
    if unreadable:
        path, finding = unreadable[0]
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise InputError(f"{path} cannot be checked: {finding.message}{more}; re-export it with trio-export")


def _refuse_onnxruntime_target(path) -> None:
    from pathlib import Path

    from ..artifact.manifest import read_target

    directory = Path(path) if Path(path).is_dir() else Path(path).parent
    if read_target(directory) == "onnxruntime":
        raise InputError(f"{directory} was exported with --target onnxruntime (for ONNX Runtime, not TensorRT): "
                         "re-export with --target tensorrt")


def _refuse_unparseable(reports, trt_version: str) -> None:
    """One line for graphs no TensorRT of that version can parse at all: ONNX Runtime contrib ops (a
    --target onnxruntime export) or ops newer than --trt-version."""
    contrib = sorted({op for r in reports for op in r.contrib_ops})
    if contrib:
        raise InputError(f"the graphs use ONNX Runtime contrib ops ({', '.join(contrib)}; a --target onnxruntime "
                         "export), which TensorRT cannot parse: re-export with --target tensorrt")
    needs = [(r.needs, r.path) for r in reports if r.needs is not None]
    if needs:
        (version, op), path = max(needs)
        raise InputError(f"the graphs need TensorRT >= {'.'.join(map(str, version))} ({op} in {path}), newer than "
                         f"--trt-version {trt_version}: re-export with --target tensorrt for that TensorRT, or check "
                         "with the --trt-version the target runs")


if __name__ == "__main__":
    sys.exit(main())
