"""The export's ONNX rewrites: Pow by a constant 1 or 2 becomes its input or a Mul, with the same results."""

import numpy as np
import pytest
import torch

from trio_edge.exporters.onnx_graph import cheap_powers


class Powers(torch.nn.Module):
    def forward(self, x):  # RMSNorm's square, a backward's x**1, a cube that must stay, and a squared output
        return x.pow(2).mean(-1, keepdim=True) * x.pow(1.0) + x.pow(3), (x + 1).pow(2)


def test_pow_by_one_or_two_is_rewritten_and_computes_the_same(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(64, 32)
    program = torch.onnx.export(Powers(), (x,), dynamo=True, opset_version=18)
    assert cheap_powers(program.model) == 3
    powers = [node for node in program.model.graph if node.op_type == "Pow"]
    assert len(powers) == 1  # the cube
    program.save(tmp_path / "powers.onnx")
    session = ort.InferenceSession(str(tmp_path / "powers.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    for got, expected in zip(outputs, Powers()(x)):
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=1e-6)
    assert [o.name for o in session.get_outputs()] == [o.name for o in program.model.graph.outputs]
