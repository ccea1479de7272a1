"""Test helpers shared by several test files (importable as `from helpers import ...`)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from trio_edge.artifact.graphs import graph_specs
from trio_edge.artifact.plan import plan_for
from trio_edge.models.split import build_modules
from trio_edge.runtime.backends.torch_backend import TorchBackend
from trio_edge.runtime.pipeline import Pipeline
from trio_edge.trio.schedule import Schedule

PROMPTS = (
    "what color is the circle?",
    "how many objects are there?",
    "describe this image please",
    "which shape is on the left?",
    "is there a red square in the picture?",
    "read the first letter",
)


def random_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A deterministic image: smooth colour blobs plus noise (so tokens differ but are not all alike)."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        cx, cy, r = rng.rand() * width, rng.rand() * height, (0.2 + rng.rand() * 0.5) * max(width, height)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        channels.append(0.7 * blob + 0.3 * rng.rand(height, width))
    array = (np.stack(channels, axis=-1) * 255).clip(0, 255).astype("uint8")
    return Image.fromarray(array, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(array, "RGB")


class RecordingTorchBackend(TorchBackend):
    """Torch backend that also records every logits output of the last segment (prefill + decode steps)."""

    def __init__(self, specs, modules, head_graph: str, device: str = "cpu"):
        super().__init__(specs, modules, device)
        self.head_graph = head_graph
        self.logits: list[torch.Tensor] = []

    def run_impl(self, graph, inputs):
        outputs = super().run_impl(graph, inputs)
        if graph == self.head_graph:
            self.logits.append(outputs["logits"][0].detach().clone())
        return outputs


def make_pipeline(loaded, schedule: Schedule | str | None = None, max_text_tokens: int = 64,
                  max_new_tokens: int = 16, *, grid=None, stop_token_ids=None, nms_iterations: int = 16,
                  runtime_form: bool = True, method: str = "trio", images: int = 1, video_frames: int = 0,
                  budget_per_image: bool = False) -> Pipeline:
    """A torch-backend Pipeline for `loaded` (a registry.LoadedModel) and `schedule` (resolved for the same images /
    video); `runtime_form=False` runs the decoder segments in the form export traces."""
    adapter = loaded.adapter
    if schedule is None or isinstance(schedule, str):
        schedule = Schedule.parse(schedule or "")
    grid = tuple(grid or adapter.default_grid())
    plan = plan_for(adapter, schedule, grid=grid, max_text_tokens=max_text_tokens, max_new_tokens=max_new_tokens,
                    nms_iterations=nms_iterations, method=method, images=images, video_frames=video_frames,
                    budget_per_image=budget_per_image)
    modules = build_modules(adapter, plan, runtime_form=runtime_form)
    specs = graph_specs(plan, tile_count=adapter.tile_count(grid), pixel_shape=adapter.pixel_shape(grid), dtype="float32")
    head = next(seg.name for seg in plan.segments if seg.with_head)
    backend = RecordingTorchBackend(specs, modules, head)
    stops = adapter.stop_token_ids() if stop_token_ids is None else stop_token_ids
    return Pipeline(plan, backend, adapter, stop_token_ids=stops, dtype="float32")


def hf_generate(loaded, image, prompt: str, grid=None, max_new_tokens: int = 6, video=None):
    """transformers' own greedy `generate` on the adapter's inputs at `grid` (default: the model's): (new token ids,
    each step's logits). `image`: one image or a list; `video`: a SampledVideo (with `image` None)."""
    inputs = loaded.adapter.hf_inputs(image, prompt, tuple(grid or loaded.adapter.default_grid()), video=video)
    with torch.no_grad():
        out = loaded.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, output_logits=True,
                                    return_dict_in_generate=True)
    return out.sequences[0, inputs["input_ids"].shape[1]:].tolist(), [logits[0] for logits in out.logits]


def assert_unpruned_equals_generate(loaded, image, prompt: str, grid, runtime_form: bool, steps: int = 6) -> None:
    """The unpruned torch pipeline (its runtime form or the form export traces) == transformers' generate: tokens,
    and every step's logits."""
    expected_ids, expected_logits = hf_generate(loaded, image, prompt, grid, steps)
    pipeline = make_pipeline(loaded, Schedule(), max_new_tokens=steps, grid=grid, runtime_form=runtime_form)
    assert pipeline.generate(image, prompt).token_ids == expected_ids
    assert len(pipeline.backend.logits) == len(expected_logits)
    for ours, theirs in zip(pipeline.backend.logits, expected_logits):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def assert_both_forms_alike(loaded, schedule: Schedule, method: str, image, prompt: str, grid) -> None:
    """A method's pipeline answers alike in the torch runtime's form and the form export traces, keeping each
    cut's budget."""
    answers = [make_pipeline(loaded, schedule, max_new_tokens=3, grid=grid, runtime_form=form, method=method)
               .generate(image, prompt) for form in (True, False)]
    assert answers[0].kept == answers[1].kept and answers[0].token_ids == answers[1].token_ids
    assert [len(k) for k in answers[0].kept] == [c.keep for c in schedule.cuts]


def generate_with_logits(pipe: Pipeline, image, prompt: str, **kwargs):
    """pipe.generate plus the logits of every generated step (list of (V,) tensors)."""
    pipe.backend.logits.clear()
    result = pipe.generate(image, prompt, **kwargs)
    return result, list(pipe.backend.logits)


def assert_same_generations(expected: Pipeline, got: Pipeline, requests, *, max_new_tokens: int = 8,
                            tol: float = 1e-3) -> None:
    """(image, prompt) requests in a row (state such as KV buffers and captured graphs carries over):
    identical kept sets and tokens, first logits within `tol`."""
    for index, (image, prompt) in enumerate(requests):
        want = expected.generate(image, prompt, max_new_tokens=max_new_tokens)
        have = got.generate(image, prompt, max_new_tokens=max_new_tokens)
        assert have.kept == want.kept, f"request {index}: kept indices differ"
        assert have.vision_kept == want.vision_kept, f"request {index}: vision-stage kept tokens differ"
        assert have.token_ids == want.token_ids, f"request {index}: tokens differ"
        torch.testing.assert_close(have.first_logits.cpu(), want.first_logits.cpu(), rtol=tol, atol=tol)


def assert_ready_for_tensorrt(directory) -> None:
    """trio-check finds no error in any graph of the export at `directory` (TensorRT 10.3 rules)."""
    from trio_edge.exporters.trt_check import check_directory

    reports = check_directory(directory)
    assert reports and all(r.ok for r in reports), [f.message for r in reports for f in r.errors]


def _op_types(graph):
    for node in graph.node:
        yield node.op_type
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs]:
                yield from _op_types(sub)


def assert_fixed_shape_ops(model) -> set[str]:
    """An ONNX model's op types (graph, subgraphs, functions): no control flow, no NonZero, no Scatter*."""
    ops = set(_op_types(model.graph)) | {node.op_type for function in model.functions for node in function.node}
    assert not ops & {"Loop", "If", "NonZero", "Scan"}, ops
    assert not [op for op in ops if op.startswith("Scatter")], ops
    return ops


def assert_export_refused(source, tmp_path, capsys, argv, message: str) -> None:
    """trio-export SOURCE with `argv` exits 2 with one stderr line containing `message` and writes nothing."""
    from trio_edge.cli.export import main as export_main

    out = tmp_path / "never"
    assert export_main([str(source), "-o", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def sample_records() -> list[tuple[Image.Image, str, str]]:
    """The shipped sample records (trio_edge.samples) as (RGB image, question, answer)."""
    from trio_edge import samples

    return [(Image.open(record["image"]).convert("RGB"), record["question"], record["answer"])
            for record in samples.records()]


def assert_pipeline_answers(loaded, schedule: Schedule | None = None) -> None:
    """The torch pipeline in the form export traces answers every shipped sample record right: unpruned, token for
    token as transformers' generate; pruned by `schedule`, keeping some but not all image tokens."""
    tokens = loaded.adapter.image_token_count(loaded.adapter.default_grid())
    pipeline = make_pipeline(loaded, schedule, max_text_tokens=40, max_new_tokens=3, runtime_form=False)
    for image, question, answer in sample_records():
        result = pipeline.generate(image, question)
        assert result.text.strip() == answer, (schedule, question)
        if schedule is None:
            assert result.token_ids == hf_generate(loaded, image, question, max_new_tokens=3)[0]
        else:
            assert 0 < len(result.kept[-1]) < tokens


def assert_export_answers_as_transformers(loaded, folder) -> None:
    """One unpruned export of `loaded` to `folder` answers every shipped sample record right, token for token as
    generate."""
    from trio_edge import load as load_export
    from trio_edge.exporters.export import export

    export(loaded.source, folder, loaded=loaded, max_text_tokens=40, max_new_tokens=3, progress=False)
    with load_export(folder) as graphs:
        for image, question, answer in sample_records():
            result = graphs.generate(image, question)
            assert result.text.strip() == answer
            assert result.token_ids == hf_generate(loaded, image, question, max_new_tokens=3)[0]
