"""graph_ops.top_k / sort_ascending: torch.topk / torch.sort in TopK rounds TensorRT accepts (K <= 3840 each)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from trio_edge.exporters.trt_check import check_model
from trio_edge.graph_ops import TOPK_MAX_K, sort_ascending, top_k


def tied_scores(n: int, distinct: int, seed: int) -> torch.Tensor:
    return torch.randint(0, distinct, (n,), generator=torch.Generator().manual_seed(seed)).float()


@pytest.mark.parametrize("n,k", [(10, 10), (TOPK_MAX_K, TOPK_MAX_K), (TOPK_MAX_K + 1, TOPK_MAX_K + 1),
                                 (9000, 3841), (9000, 7681), (12000, 12000)])
def test_top_k_equals_torch_topk(n, k):
    """Distinct values: the same values and indices as one torch.topk; ties: the same values, each index once and
    holding its value."""
    generator = torch.Generator().manual_seed(n + k)
    distinct = torch.randperm(n, generator=generator).float()
    for largest in (True, False):
        values, indices = top_k(distinct, k, largest=largest)
        want = torch.topk(distinct, k, largest=largest)
        assert torch.equal(values, want.values) and torch.equal(indices, want.indices)
    for spread in (1, 3, 1000):
        tied = tied_scores(n, spread, n + spread)
        values, indices = top_k(tied, k)
        assert torch.equal(values, torch.topk(tied, k).values)
        assert indices.unique().numel() == k and torch.equal(tied[indices], values)
    keys = torch.randperm(n, generator=generator)  # int64, ascending
    assert torch.equal(top_k(keys, k, largest=False)[1], torch.topk(keys, k, largest=False).indices)
    assert torch.equal(sort_ascending(keys), torch.sort(keys).values)


class TopKAndSort(torch.nn.Module):
    def forward(self, scores, keys):
        values, indices = top_k(scores, scores.shape[0])
        return values, indices, sort_ascending(keys), top_k(keys.float(), 5000)[1]


def test_rounds_export_to_topk_within_tensorrt_limit(tmp_path):
    """Exported: every TopK takes at most 3840 (trio-check finds no error) and ONNX Runtime returns torch's sort."""
    n = 9000
    path = tmp_path / "topk.onnx"
    example = (tied_scores(n, 50, 0), torch.randperm(n))
    torch.onnx.export(TopKAndSort().eval(), example, str(path), dynamo=True, opset_version=18)
    model = onnx.load(str(path))
    ks = [int(onnx.numpy_helper.to_array(init)[0]) for init in model.graph.initializer
          if any(node.op_type == "TopK" and node.input[1] == init.name for node in model.graph.node)]
    assert ks and max(ks) <= TOPK_MAX_K, ks
    report = check_model(path)
    assert report.ok, [finding.message for finding in report.errors]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for seed in range(3):
        scores, keys = tied_scores(n, 7 + seed * 500, seed + 1), torch.randperm(n)
        values, indices, ascending, top = session.run(None, dict(zip(names, (scores.numpy(), keys.numpy()))))
        np.testing.assert_array_equal(values, torch.sort(scores, descending=True).values.numpy())
        assert sorted(indices.tolist()) == list(range(n)) and np.array_equal(scores.numpy()[indices], values)
        np.testing.assert_array_equal(ascending, np.sort(keys.numpy()))
        np.testing.assert_array_equal(top, torch.topk(keys.float(), 5000).indices.numpy())
