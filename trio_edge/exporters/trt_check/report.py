"""Findings, per-file reports and their human-readable table."""

from __future__ import annotations

from dataclasses import dataclass, field

from .rules import TENSORRT_VERSION_CHECKED


@dataclass(frozen=True)
class Finding:
    """One problem: where (graph file, node, op type) and what."""

    file: str
    node: str
    op_type: str
    message: str
    rule: str = ""


@dataclass(frozen=True)
class CheckReport:
    """Findings for one graph file; ``ok`` when there are no errors."""

    path: str
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    needs: tuple[tuple[int, ...], str] | None = None  # (oldest TensorRT that parses it, op) when newer than checked
    contrib_ops: tuple[str, ...] = ()  # ONNX Runtime contrib ops (com.microsoft) in the graph
    trt_version: tuple[int, ...] | None = None  # the TensorRT version whose rules were applied

    @property
    def ok(self) -> bool:
        return not self.errors


def _rules_label(trt_version: tuple[int, ...] | None) -> str:
    if trt_version is None:
        return f"TensorRT {TENSORRT_VERSION_CHECKED} rules"
    return f"TensorRT {'.'.join(map(str, trt_version))} rules (parser tables of {TENSORRT_VERSION_CHECKED})"


def format_report(report: CheckReport) -> str:
    """A human-readable per-node table of the report's errors and warnings."""
    status = "OK" if report.ok else "FAIL"
    head = (f"{report.path}: {status} - {len(report.errors)} error(s), "
            f"{len(report.warnings)} warning(s) [{_rules_label(report.trt_version)}]")
    rows = [("ERROR", f) for f in report.errors] + [("warning", f) for f in report.warnings]
    if not rows:
        return head
    table = [("severity", "node", "op", "message")]
    table += [(sev, f.node, f.op_type, f.message) for sev, f in rows]
    widths = [min(max(len(r[i]) for r in table), 48) for i in range(3)]
    lines = [head]
    for i, row in enumerate(table):
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths)]
        lines.append("  " + "  ".join(cells + [row[3]]))
        if i == 0:
            lines.append("  " + "  ".join("-" * w for w in widths + [7]))
    return "\n".join(lines)
