"""Check exported ONNX graphs for TensorRT problems before carrying them to the Jetson.

PATH is an export directory (every *.onnx in it is checked; dynamic axes come
from its manifest.json when there is one) or a single .onnx file. Graphs are
checked against the ONNX operator table, data types and opset range of
TensorRT's ONNX parser, without TensorRT installed: unsupported or custom ops,
TopK with a non-constant K or K > 3840, Loop/If/Scan, NonZero, float64
tensors, symbolic input dims the manifest does not declare dynamic, and broken
external-data files.

Exit status: 0 no errors, 1 errors found, 2 the path cannot be checked.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import TrioEdgeError
from ..exporters.trt_check import (
    TENSORRT_SOURCE,
    TENSORRT_VERSION_CHECKED,
    check_path,
    format_report,
)

EXIT_OK, EXIT_ERRORS, EXIT_BAD_PATH = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Rules: TensorRT {TENSORRT_VERSION_CHECKED}, from {TENSORRT_SOURCE}.",
    )
    parser.add_argument("path", metavar="PATH", help="export directory or .onnx file")
    parser.add_argument("--strict", action="store_true",
                        help="treat warnings as errors (exit 1 on any finding)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``trio-check``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        reports = check_path(args.path)
    except TrioEdgeError as exc:
        print(f"trio-check: error: {exc}", file=sys.stderr)
        return EXIT_BAD_PATH
    if not reports:
        print(f"trio-check: error: no .onnx files in {args.path}", file=sys.stderr)
        return EXIT_BAD_PATH
    for report in reports:
        print(format_report(report))
        print()
    errors = sum(len(r.errors) for r in reports)
    warnings = sum(len(r.warnings) for r in reports)
    failed = errors > 0 or (args.strict and warnings > 0)
    verdict = "NOT ready for TensorRT" if failed else "ready for TensorRT"
    print(f"{len(reports)} file(s) checked: {errors} error(s), {warnings} warning(s) - {verdict}")
    return EXIT_ERRORS if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
