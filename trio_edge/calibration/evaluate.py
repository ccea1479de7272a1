"""Accuracy and retention of TRIO and peer selection rules at layer-averaged budgets (trio-eval).

Every method gets the same schedule (cut layers and keep counts) at each budget; only the rule that
picks the kept tokens differs. TRIO is also run through the exported ONNX graphs. SparseVLM keeps its own
cut layers (its authors' 2/6/15 of 32, scaled) with the table's shape scaled to the budget (kept tokens), and
its row reports the realised ratio with its merged tokens counted; budgets it cannot reach are listed in
`skipped` (it needs one full layer before its first cut).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..runtime.open import open_pipeline
from ..trio.methods import METHODS
from .data import normalize_answer

ALL_METHODS = ("full",) + METHODS


@dataclass
class EvalResult:
    n: int
    full_accuracy: float
    rows: list[dict] = field(default_factory=list)  # budget, schedule, method, backend, accuracy, retention, by_kind
    full_by_kind: dict[str, float] = field(default_factory=dict)  # when records carry a `kind`
    skipped: list[str] = field(default_factory=list)  # method/budget pairs whose schedule cannot be built

    def table(self) -> str:
        kinds = sorted(self.full_by_kind)

        def per_kind(values: dict) -> str:
            return "".join(f"{100 * values.get(kind, 0.0):>9.1f}%" for kind in kinds)

        full = f"full tokens: accuracy {100 * self.full_accuracy:.1f}% on {self.n} samples"
        if kinds:
            full += " (" + ", ".join(f"{kind} {100 * self.full_by_kind[kind]:.1f}%" for kind in kinds) + ")"
        header = f"{'budget':>7}  {'schedule':<22}{'method':<10}{'backend':<12}{'accuracy':>9}{'retention':>10}"
        lines = [full, header + "".join(f"{kind:>10}" for kind in kinds)]
        for row in self.rows:
            lines.append(f"{100 * row['budget']:>6.1f}%  {row['schedule']:<22}{row['method']:<10}{row['backend']:<12}"
                         f"{100 * row['accuracy']:>8.1f}%{100 * row['retention']:>9.1f}%" + per_kind(row.get("by_kind", {})))
        lines += [f"skipped: {note}" for note in self.skipped]
        return "\n".join(lines)


def accuracy(pipeline, records, *, max_new_tokens: int = 4, progress=None) -> tuple[float, list[str]]:
    predictions = []
    for record in records:
        text = pipeline.generate(record["image"], record["question"], max_new_tokens=max_new_tokens).text
        predictions.append(normalize_answer(text))
        if progress is not None:
            progress.update(1)
    correct = sum(p == normalize_answer(r["answer"]) for p, r in zip(predictions, records))
    return correct / max(len(records), 1), predictions


def accuracy_by_kind(predictions: list[str], records) -> dict[str, float]:
    """Accuracy per record `kind` (e.g. color / shape / count); empty when records carry no kind."""
    hits: dict[str, list[bool]] = {}
    for prediction, record in zip(predictions, records):
        if record.get("kind") is not None:
            hits.setdefault(str(record["kind"]), []).append(prediction == normalize_answer(record["answer"]))
    return {kind: sum(values) / len(values) for kind, values in sorted(hits.items())}


def evaluate(loaded, records, *, budgets, methods, backend: str = "torch", seed: int = 0,
             progress: bool = True) -> EvalResult:
    from ..trio.schedule import Schedule

    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise InputError(f"unknown methods {unknown}; choose from {', '.join(ALL_METHODS)}")
    adapter = loaded.adapter
    grid = adapter.default_grid()
    m, layers = adapter.image_token_count(grid), adapter.num_layers
    bar = _bar(progress, len(records) * (1 + len(budgets) * (len(methods) - ("full" in methods)
                                                            + (backend == "onnxruntime")
                                                            * (("trio" in methods) + ("sparsevlm" in methods)))))
    full_acc, predictions = accuracy(open_pipeline(loaded, schedule=Schedule(), max_new_tokens=8), records, progress=bar)
    result = EvalResult(len(records), full_acc, full_by_kind=accuracy_by_kind(predictions, records))
    for budget in budgets:
        schedule = adapter.schedule(grid, keep_ratio=budget)
        label = ",".join(f"{c.layer}:{c.keep}" for c in schedule.cuts)
        actual = schedule.budget_ratio(layers, m)
        for method in (x for x in methods if x != "full"):
            own = _own_schedule(adapter, grid, method, budget) if method == "sparsevlm" else (schedule, label, actual)
            if own is None:
                result.skipped.append(f"{method} at {budget:.3f}: below what its cut layers can reach")
                if bar is not None:
                    bar.update(len(records))
                continue
            pipeline = open_pipeline(loaded, schedule=own[0], max_new_tokens=8, method=method, seed=seed)
            acc, predictions = accuracy(pipeline, records, progress=bar)
            result.rows.append(_row(own[2], own[1], method, "torch", acc, full_acc,
                                    accuracy_by_kind(predictions, records)))
        if backend == "onnxruntime" and "trio" in methods:
            acc, predictions = _onnx_accuracy(loaded, label, records, bar)
            result.rows.append(_row(actual, label, "trio", "onnxruntime", acc, full_acc,
                                    accuracy_by_kind(predictions, records)))
        own = _own_schedule(adapter, grid, "sparsevlm", budget) if "sparsevlm" in methods else None
        if backend == "onnxruntime" and own is not None:
            acc, predictions = _onnx_accuracy(loaded, own[1], records, bar, method="sparsevlm")
            result.rows.append(_row(own[2], own[1], "sparsevlm", "onnxruntime", acc, full_acc,
                                    accuracy_by_kind(predictions, records)))
    if bar is not None:
        bar.close()
    return result


def _own_schedule(adapter, grid, method: str, budget: float):
    """A method's own schedule at a layer-averaged budget: (schedule, cuts label, realised ratio), or None."""
    from ..errors import ScheduleError
    from ..trio.sparsevlm import image_tokens_per_layer

    try:
        schedule = adapter.schedule(grid, keep_ratio=budget, method=method)
    except ScheduleError:
        return None
    m, layers = adapter.image_token_count(grid), adapter.num_layers
    realised = sum(image_tokens_per_layer(schedule.cuts, layers, m)) / (layers * m)
    return schedule, ",".join(f"{c.layer}:{c.keep}" for c in schedule.cuts), realised


def _row(budget, schedule, method, backend, acc, full_acc, by_kind) -> dict:
    return {"budget": budget, "schedule": schedule, "method": method, "backend": backend, "accuracy": acc,
            "retention": acc / full_acc if full_acc else 0.0, "by_kind": by_kind}


def _onnx_accuracy(loaded, cuts: str, records, bar, method: str = "trio") -> tuple[float, list[str]]:
    from ..exporters.export import export

    with tempfile.TemporaryDirectory(prefix="trio-eval-") as tmp:
        out = Path(tmp) / "export"
        export(loaded.source, out, cuts=cuts, method=method, loaded=loaded, max_new_tokens=8, validate=False,
               progress=False)
        with open_pipeline(out, backend="onnxruntime") as pipeline:
            return accuracy(pipeline, records, progress=bar)


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="eval", unit="answer", leave=False)


def write_plot(result: EvalResult, path: str | Path) -> None:
    """Accuracy vs budget per method as a PNG (drawn with PIL)."""
    from PIL import Image, ImageDraw

    width, height, margin = 900, 560, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    budgets = sorted({r["budget"] for r in result.rows})
    lo, hi = 0.0, max(budgets + [0.4])
    x = lambda b: margin + (b - lo) / (hi - lo) * (width - 2 * margin)  # noqa: E731
    y = lambda a: height - margin - a * (height - 2 * margin)  # noqa: E731
    draw.line([(margin, y(0)), (width - margin, y(0))], fill="black")
    draw.line([(margin, y(0)), (margin, y(1))], fill="black")
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.text((10, y(tick) - 6), f"{100 * tick:.0f}%", fill="black")
    for b in budgets:
        draw.text((x(b) - 14, y(0) + 8), f"{100 * b:.1f}%", fill="black")
    draw.line([(margin, y(result.full_accuracy)), (width - margin, y(result.full_accuracy))], fill=(150, 150, 150))
    palette = {"trio": (219, 68, 55), "fastv": (66, 133, 244), "dart": (15, 157, 88), "random": (120, 120, 120),
               "uniform": (244, 180, 0), "sparsevlm": (171, 71, 188)}
    for index, method in enumerate(palette):
        points = [(x(r["budget"]), y(r["accuracy"])) for r in result.rows if r["method"] == method and r["backend"] == "torch"]
        if not points:
            continue
        draw.line(sorted(points), fill=palette[method], width=3)
        for px, py in points:
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=palette[method])
        draw.text((width - margin - 90, margin + 18 * index), method, fill=palette[method])
    draw.text((margin, 20), f"accuracy vs layer-averaged image-token budget (n={result.n}; grey: full tokens)", fill="black")
    image.save(path)
