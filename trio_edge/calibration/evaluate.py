"""Accuracy and retention of TRIO and the published peers at layer-averaged budgets (trio-eval).

Every method runs at its own authors' placement (FastV/DART: one cut at K=2; PyramidDrop: 8/16/24; TRIO and
the model-free baselines: TRIO's table), scaled to the model's depth, with KEEPs set so that the layer-averaged
image tokens equal the budget; a method that cannot reach a budget on a model gets an n/a row saying why.
With the onnxruntime backend every exportable method also runs through its exported graphs. SparseVLM's row
reports its realised ratio, its merged tokens counted (its KEEPs reach the budget without them).
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

    def table(self) -> str:
        kinds = sorted(self.full_by_kind)

        def per_kind(values: dict) -> str:
            return "".join(f"{100 * values.get(kind, 0.0):>9.1f}%" for kind in kinds)

        full = f"full tokens: accuracy {100 * self.full_accuracy:.1f}% on {self.n} samples"
        if kinds:
            full += " (" + ", ".join(f"{kind} {100 * self.full_by_kind[kind]:.1f}%" for kind in kinds) + ")"
        header = f"{'budget':>7}  {'schedule':<22}{'method':<12}{'backend':<12}{'accuracy':>9}{'retention':>10}"
        lines = [full, header + "".join(f"{kind:>10}" for kind in kinds)]
        for row in self.rows:
            if row["accuracy"] is None:
                lines.append(f"{100 * row['budget']:>6.1f}%  {'n/a':<22}{row['method']:<12}{row['backend']:<12}"
                             f"  cannot reach this budget here: {row['note']}")
                continue
            lines.append(f"{100 * row['budget']:>6.1f}%  {row['schedule']:<22}{row['method']:<12}{row['backend']:<12}"
                         f"{100 * row['accuracy']:>8.1f}%{100 * row['retention']:>9.1f}%" + per_kind(row.get("by_kind", {})))
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


def parse_budgets(text: str) -> list[float]:
    """'1/9,2/9,1/3' or '0.111,0.22' -> ratios (fractions stay exact: 1/9 is 64 of 576)."""
    from fractions import Fraction

    try:
        budgets = [float(Fraction(part.strip())) for part in text.split(",")]
    except (ValueError, ZeroDivisionError):
        raise InputError(f"--budgets must be comma-separated ratios like 1/9,2/9,1/3 or 0.111, got {text!r}") from None
    if any(not 0 < b <= 1 for b in budgets):
        raise InputError(f"--budgets must be within (0, 1], got {text!r}")
    return budgets


def method_schedule(adapter, grid, method: str, ratio: float, items: int = 1):
    """The schedule `method` runs at layer-averaged budget `ratio` on this model: its authors' cut layers (scaled
    to the depth) and table shape (trio.presets.eval_placement), KEEPs scaled to reach the budget; its own
    default positions. `items`: images per request (the budget counts all of their tokens). Raises ScheduleError
    when the method cannot reach the budget on this model."""
    from ..errors import ScheduleError
    from ..trio.methods import VISION_TOWER, method_info
    from ..trio.presets import eval_placement, placed_cut_layers, vision_preset
    from ..trio.schedule import schedule_for_ratio

    if method == "sparsevlm":  # its own layers and 192-table shape (trio.sparsevlm); merged tokens come on top
        return (adapter.schedule(grid, items, keep_ratio=ratio, method=method),
                "Gumpest/SparseVLMs layers 2/6/15 (scaled below 17 layers), 192-table shape; + merged tokens")
    if method == "dart-embed":  # one cut at layer 0 (Edge-LLM): the budget is its keep fraction, a quota per span
        return (adapter.schedule(grid, items, keep_ratio=ratio, method=method),
                "NVIDIA TensorRT Edge-LLM: one cut on the input embeddings, ceil(span x budget) per visual span")
    if method == "trio-ve":  # its authors' shape: 1.5x the budget after the tower, a third of that from layer L/2
        return (adapter.schedule(grid, items, keep_ratio=ratio, method=method),
                "ocy1/TRIO README shape: 1.5x the budget after the tower, a third of it from half depth (LLaVA: vision "
                "96 / layer 16 keeps 32 of 32 layers; Qwen: 0.167 / layer 14 keeps 0.333 of 28)")
    if method_info(method).acts == VISION_TOWER:  # the authors' per-tile table at 64/128/192 of 576, else scaled
        preset = vision_preset(method, ratio)
        if preset is not None:
            return adapter.schedule(grid, items, preset=preset), f"{preset} per tile (scaled to the tile's patches)"
        return adapter.schedule(grid, items, keep_ratio=ratio, method=method), "KEEP per tile for the budget"
    num_layers, m = adapter.num_layers, items * adapter.image_token_count(grid)
    layers, weights, shape = placed_cut_layers(method, ratio, num_layers)
    positions = method_info(method).positions
    try:
        return adapter.constrain(schedule_for_ratio(ratio, layers, weights, num_layers, m, positions=positions),
                                 method), shape
    except ScheduleError as own_placement:
        # the authors' layers (scaled) start too deep for this budget on a shallow model: TRIO's cut layers, which
        # start earlier, with the method's own keep shape; still impossible for a rule that needs layer N-1 first
        lowest = 1 if method_info(method).owns_layer else 0
        layers = tuple(sorted({max(lowest, layer) for layer in adapter.default_cut_layers()}))
        reference = eval_placement(method, ratio)[1]  # the table's own weights, before any merging
        weights = tuple(reference[-len(layers):]) if len(reference) >= len(layers) else (1.0,) * len(layers)
        try:
            schedule = adapter.constrain(schedule_for_ratio(ratio, layers, weights, num_layers, m,
                                                            positions=positions), method)
        except ScheduleError:
            raise own_placement from None  # the reason in the authors' terms, as trio-bench and trio-export say it
        return schedule, f"{shape}; at TRIO's cut layers (its own start too deep for this budget here)"


def evaluate(loaded, records, *, budgets, methods, backend: str = "torch", seed: int = 0,
             progress: bool = True, images: int = 1, budget_per_image: bool = False) -> EvalResult:
    """Every method at every budget at its own authors' placement (method_schedule); `backend` onnxruntime also
    exports each exportable method at each budget and runs its graphs. `images`: images per record (the records'
    `image` is then a list); `budget_per_image`: every cut splits its budget evenly over them."""
    from ..errors import ScheduleError
    from ..trio.methods import check_cuts, method_info
    from ..trio.schedule import Schedule
    from ..trio.sparsevlm import image_tokens_per_layer

    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise InputError(f"unknown methods {unknown}; choose from {', '.join(ALL_METHODS)}")
    adapter = loaded.adapter
    grid = adapter.default_grid()
    m, layers = images * adapter.image_token_count(grid), adapter.num_layers
    visual = {"images": images, "budget_per_image": budget_per_image}
    peers = [x for x in methods if x != "full"]
    exported = [x for x in peers if backend == "onnxruntime" and method_info(x).exportable]
    bar = _bar(progress, len(records) * (1 + len(budgets) * (len(peers) + len(exported))))
    full_acc, predictions = accuracy(open_pipeline(loaded, schedule=Schedule(), max_new_tokens=8, images=images),
                                     records, progress=bar)
    result = EvalResult(len(records), full_acc, full_by_kind=accuracy_by_kind(predictions, records))
    for budget in budgets:
        for method in peers:
            try:
                schedule, shape = method_schedule(adapter, grid, method, budget, images)
                check_cuts(method, [(cut.layer, cut.keep) for cut in schedule.cuts])  # e.g. DART's 4-pivot minimum
                pipeline = open_pipeline(loaded, schedule=schedule, max_new_tokens=8, method=method, seed=seed,
                                         **visual)
            except ScheduleError as error:  # e.g. FastV's K=2 on a 4-layer model cannot go below ~50%
                result.rows.append({"budget": budget, "schedule": "n/a", "method": method, "backend": "torch",
                                    "accuracy": None, "retention": None, "by_kind": {}, "note": str(error)})
                continue
            label = schedule.text()
            actual = schedule.budget_ratio(layers, m)
            if method == "sparsevlm":  # the realised ratio counts its merged tokens
                actual = sum(image_tokens_per_layer(schedule.cuts, layers, m)) / (layers * m)
            acc, predictions = accuracy(pipeline, records, progress=bar)
            result.rows.append(_row(actual, label, method, "torch", acc, full_acc, accuracy_by_kind(predictions, records),
                                    shape))
            if method in exported:
                acc, predictions = _onnx_accuracy(loaded, schedule, method, records, bar, **visual)
                result.rows.append(_row(actual, label, method, "onnxruntime", acc, full_acc,
                                        accuracy_by_kind(predictions, records), shape))
    if bar is not None:
        bar.close()
    return result


def _row(budget, schedule, method, backend, acc, full_acc, by_kind, shape="") -> dict:
    return {"budget": budget, "schedule": schedule, "method": method, "backend": backend, "accuracy": acc,
            "retention": acc / full_acc if full_acc else 0.0, "by_kind": by_kind, "placement": shape}


def _onnx_accuracy(loaded, schedule, method: str, records, bar, **visual) -> tuple[float, list[str]]:
    from ..exporters.export import export

    cuts = schedule.text()
    with tempfile.TemporaryDirectory(prefix="trio-eval-") as tmp:
        out = Path(tmp) / "export"
        export(loaded.source, out, cuts=cuts, method=method, positions=schedule.positions, loaded=loaded,
               max_new_tokens=8, validate=False, progress=False, **visual)
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
    groups: list[list[float]] = []  # one label per nominal budget (methods realise it to within a point or so)
    for b in budgets:
        if groups and b - groups[-1][-1] <= 0.02:
            groups[-1].append(b)
        else:
            groups.append([b])
    realised = [r["budget"] for r in result.rows]
    for b in (max(group, key=realised.count) for group in groups):  # the budget most rows realise
        draw.text((x(b) - 14, y(0) + 8), f"{100 * b:.1f}%", fill="black")
    draw.line([(margin, y(result.full_accuracy)), (width - margin, y(result.full_accuracy))], fill=(150, 150, 150))
    palette = {"trio": (219, 68, 55), "fastv": (66, 133, 244), "dart": (15, 157, 88), "pdrop": (171, 71, 188),
               "random": (120, 120, 120), "uniform": (244, 180, 0), "sparsevlm": (0, 150, 136),
               "visionzip": (121, 85, 72), "trio-ve": (0, 0, 0)}
    for index, method in enumerate(palette):
        points = [(x(r["budget"]), y(r["accuracy"])) for r in result.rows
                  if r["method"] == method and r["backend"] == "torch" and r["accuracy"] is not None]
        if not points:
            continue
        draw.line(sorted(points), fill=palette[method], width=3)
        for px, py in points:
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=palette[method])
        draw.text((width - margin - 90, margin + 18 * index), method, fill=palette[method])
    draw.text((margin, 20), f"accuracy vs layer-averaged image-token budget (n={result.n}; grey: full tokens)", fill="black")
    image.save(path)
