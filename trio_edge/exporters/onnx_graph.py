"""Export one plan graph to ONNX, and validate it against its PyTorch module in ONNX Runtime.

Workarounds live here: the select graph calls torch.autograd.grad, which neither ONNX exporter
accepts, so it is first traced (forward + backward) into a plain FX graph with make_fx and the core
ATen decompositions, and that graph is exported (DESIGN.md section 3).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from ..artifact.graphs import GraphSpec
from ..errors import ExportError

# Graphs whose weights exceed this are written with external data (protobuf's limit is 2 GiB).
EXTERNAL_DATA_BYTES = 1 << 30


@contextlib.contextmanager
def quiet_export():
    """torch.onnx prints progress lines and warnings per graph; keep the CLI's own output readable."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript",
                                                    "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def traced_joint(module: torch.nn.Module, example: tuple) -> torch.nn.Module:
    """Forward + autograd.grad of `module` as one plain FX graph (symbolic shapes kept)."""
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(module, decomposition_table=core_aten_decompositions(), tracing_mode="symbolic",
                   _allow_non_fake_inputs=True)(*example)


def cheap_powers(model) -> int:
    """Rewrite Pow by a constant 1 or 2 (RMSNorm's square, and its backward's x**1 in select graphs) as the
    input itself or one Mul: ONNX Runtime's Pow kernel costs tens of ms on an (S, D) tensor, a Mul a few,
    and torch computes x**2 as x*x too. Returns the number of nodes rewritten."""
    import onnx_ir as ir

    rewritten = 0
    for node in list(model.graph):
        if node.op_type != "Pow" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        base, exponent = node.inputs
        constant = ir.convenience.get_const_tensor(exponent) if exponent is not None else None
        if constant is None or constant.size != 1 or base.dtype != node.outputs[0].dtype:
            continue
        power = float(constant.numpy().ravel()[0])
        output = node.outputs[0]
        if power == 2.0:
            square = ir.node("Mul", [base, base])
            model.graph.insert_before(node, square)
            replacement = square.outputs[0]
        elif power == 1.0 and not output.is_graph_output():
            replacement = base
        else:
            continue
        replacement.shape, replacement.type = output.shape, output.type
        if output.is_graph_output():  # only a new Mul gets here: it takes over the output's name
            name, output.name = output.name, None
            replacement.name = name
        output.replace_all_uses_with(replacement, replace_graph_outputs=True)
        model.graph.remove(node, safe=True)
        if exponent.is_initializer() and not exponent.uses():
            del model.graph.initializers[exponent.name]
        rewritten += 1
    return rewritten


def _contrib_translations() -> dict:
    """Our custom ops -> ONNX Runtime contrib ops (com.microsoft), for the onnxruntime export target."""
    import onnxscript
    from onnx.defs import OpSchema

    from ..models import attention_op  # noqa: F401  (registers torch.ops.trio_edge.group_query_attention)

    param = OpSchema.FormalParameter
    schema = OpSchema(
        "GroupQueryAttention", "com.microsoft", 1,
        inputs=[param("query", "T"), param("key", "T"), param("value", "T"), param("past_key", "T"),
                param("past_value", "T"), param("seqlens_k", "M"), param("total_sequence_length", "M")],
        outputs=[param("output", "T"), param("present_key", "T"), param("present_value", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "activations"),
                          ("M", ["tensor(int32)"], "lengths")],
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "query heads"),
                    OpSchema.Attribute("kv_num_heads", OpSchema.AttrType.INT, "key/value heads"),
                    OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "softmax scale")])
    gqa = onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), "GroupQueryAttention", schema)

    def group_query_attention(query, key, value, past_key, past_value, seqlens_k, total_sequence_length,
                              num_heads: int, kv_num_heads: int, scale: float):
        return gqa(query, key, value, past_key, past_value, seqlens_k, total_sequence_length,
                   num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, _outputs=3)

    return {torch.ops.trio_edge.group_query_attention.default: group_query_attention}


def dynamic_shapes(spec: GraphSpec, ranges: dict[str, tuple[int, int]], module=None):
    """torch.export's dynamic_shapes for the spec's inputs, in the structure of `module`'s forward: inputs past
    its named parameters form one tuple when it takes *args (a segment's per-layer caches)."""
    import inspect

    from torch.export import Dim

    dims = {name: Dim(name, min=lo, max=hi) for name, (lo, hi) in ranges.items()}
    shapes = []
    for tensor in spec.inputs:
        axes = {axis: dims[tensor.shape[axis]] for axis in tensor.dynamic_axes()}
        shapes.append(axes or None)
    if module is not None:
        parameters = list(inspect.signature(module.forward).parameters.values())
        if parameters and parameters[-1].kind == inspect.Parameter.VAR_POSITIONAL:
            named = len(parameters) - 1
            # {} rather than None inside the group: torch.onnx reads a tuple of Nones as one tensor's axes
            shapes = shapes[:named] + [tuple(axes or {} for axes in shapes[named:])]
    return tuple(shapes)


def export_graph(module, spec: GraphSpec, example: dict, ranges: dict, path: Path, *, opset: int,
                 needs_joint_trace: bool, external_data: bool = False) -> Path:
    """Export `module` to `path`; weights go to `path`.data when they exceed EXTERNAL_DATA_BYTES or when
    `external_data` is set (graphs whose weights other graphs will point at)."""
    args = tuple(example[t.name] for t in spec.inputs)
    try:
        with quiet_export(), torch.no_grad():
            target = traced_joint(module, args) if needs_joint_trace else module
            program = torch.onnx.export(
                target, args, dynamo=True, opset_version=opset,
                input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                dynamic_shapes=dynamic_shapes(spec, ranges, module) if ranges else None,
                custom_translation_table=_contrib_translations(),
            )
            cheap_powers(program.model)
            weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
            program.save(path, external_data=external_data or weights > EXTERNAL_DATA_BYTES)
    except ExportError:
        raise
    except Exception as error:  # the exporters raise many types; name the graph and keep the cause
        raise ExportError(f"exporting graph {spec.name} failed: {type(error).__name__}: {str(error)[:2000]}") from error
    return path


def run_onnx(session, spec: GraphSpec, inputs: dict) -> dict:
    feed = {t.name: inputs[t.name].detach().cpu().numpy() for t in spec.inputs}
    outputs = session.run([t.name for t in spec.outputs], feed)
    return {t.name: torch.from_numpy(out) for t, out in zip(spec.outputs, outputs)}


def compare_outputs(spec: GraphSpec, expected: dict, actual: dict, *, atol: float, rtol: float) -> list[dict]:
    """Per-output max abs/rel diff; exact equality for integer and bool outputs."""
    rows = []
    for tensor in spec.outputs:
        want, got = expected[tensor.name].detach().cpu(), actual[tensor.name]
        row = {"graph": spec.name, "output": tensor.name, "shape_ok": tuple(want.shape) == tuple(got.shape)}
        if not row["shape_ok"]:
            row.update(max_abs=float("inf"), max_rel=float("inf"), ok=False)
        elif want.dtype.is_floating_point:
            diff = (want.float() - got.float()).abs()
            scale = want.float().abs().max().clamp_min(1e-12)
            row.update(max_abs=float(diff.max()) if diff.numel() else 0.0,
                       max_rel=float(diff.max() / scale) if diff.numel() else 0.0)
            row["ok"] = bool(torch.allclose(got.float(), want.float(), atol=atol, rtol=rtol))
        else:
            equal = bool(torch.equal(want, got.to(want.dtype)))
            row.update(max_abs=0.0 if equal else float("inf"), max_rel=0.0 if equal else float("inf"), ok=equal)
        rows.append(row)
    return rows
