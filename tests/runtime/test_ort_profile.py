"""op_times: ONNX Runtime's profile trace of a real session, read back as ms per operator type."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from trio_edge.runtime.backends.ort_profile import op_times


def profiled_session(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.ones(64 * 64, np.float32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "trace")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep MatMul and Relu apart
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_op_times_reads_each_operator_of_the_measured_runs(tmp_path):
    session = profiled_session(tmp_path)
    for _ in range(4):
        session.run(None, {"x": np.ones((64, 64), np.float32)})
    trace = session.end_profiling()
    times = op_times(trace)
    assert set(times["ms_per_run_by_op"]) == {"MatMul", "Relu"}
    assert all(ms > 0 for ms in times["ms_per_run_by_op"].values())
    # kernels run inside the runs, one after another: per run they add up to at most the mean run (the median
    # run is no bound: one preempted kernel on a shared machine lifts the mean alone)
    assert sum(times["ms_per_run_by_op"].values()) <= times["model_run_mean_ms"] + 0.002  # + 2 us of rounding
    assert not (tmp_path / trace).exists() and not list(tmp_path.glob("trace*"))


def test_op_times_needs_a_run_beyond_the_skipped_ones(tmp_path):
    session = profiled_session(tmp_path)
    session.run(None, {"x": np.ones((64, 64), np.float32)})
    with pytest.raises(ValueError, match="1 run"):
        op_times(session.end_profiling())
