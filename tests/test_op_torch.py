"""The op table's PyTorch form: every op and opset form of tests/onnx_op_cases.py, run as a GraphNet, equals
onnxruntime on the original file within 1e-4; the GraphNet's own ONNX export (opset 17) gives the same
answers in onnxruntime; and a batch of 3 runs as three images one by one do (training batches)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mirrornet_tvm.frontend import load_model
from mirrornet_tvm.graph import GraphNet
from onnx_op_cases import CASES, ort_run

torch.set_num_threads(1)
TOL = 1e-4


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_graphnet_matches_onnxruntime(case):
    proto = case.build()
    x = case.random_input()
    want = ort_run(proto, x)
    graph = load_model(proto).graph()
    with torch.no_grad():
        got = graph(torch.from_numpy(x)).numpy()
    if want.ndim == 4 and want.shape[2:] == (1, 1) and got.shape == want.shape[:2]:
        want = want.reshape(got.shape)   # [1, C, 1, 1] outputs are flattened to logits on load
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)

    exported = graph.export_onnx()
    np.testing.assert_allclose(ort_run(exported, x), want, atol=TOL, rtol=TOL)
    with torch.no_grad():
        again = GraphNet.from_onnx(exported)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(again, want, atol=TOL, rtol=TOL)

    if want.ndim == 4 and want.shape[0] == 1:  # the batch axis is kept: batches of several images run
        xs = np.concatenate([case.random_input(seed) for seed in range(3)])
        with torch.no_grad():
            batch = graph(torch.from_numpy(xs)).numpy()
            single = [graph(torch.from_numpy(xs[i:i + 1])).numpy() for i in range(3)]
        np.testing.assert_allclose(batch, np.concatenate(single), atol=TOL, rtol=TOL)
