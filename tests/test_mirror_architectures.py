"""The CPM mirrored from standard architectures (ResNet-18/50, MobileNetV2, SqueezeNet 1.1, DenseNet-121,
SE-ResNet-18 at 3x32x32): at a shallow, a middle and the deepest tap the plan ends in the class count, the
MirrorNet runs, and its combined ONNX export gives the torch logits in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mirrornet_tvm import architectures
from mirrornet_tvm.analysis import candidate_taps
from mirrornet_tvm.frontend import load_model
from mirrornet_tvm.mirror import MirrorNet, strip_softmax
from mirrornet_tvm.strategy import Strategy

torch.set_num_threads(1)


@pytest.mark.parametrize("name", architectures.NAMES)
def test_cpm_of_a_standard_architecture_exports_as_it_runs(name):
    torch.manual_seed(0)
    graph = load_model(architectures.build(name, (3, 32, 32))).graph()
    taps = candidate_taps(graph)
    assert len(taps) >= 10, [t.name for t in taps]
    x = torch.randn(2, 3, 32, 32)
    for tap in (taps[0], taps[len(taps) // 2], taps[-1]):
        net = MirrorNet(graph, Strategy(taps=(tap.name,), width_ratio=0.25)).eval()
        assert net.plan.ops[-1].shape == (1, 10), (tap.name, net.plan.ops[-1])
        with torch.no_grad():
            rect, logits, _ = net(x)
        np.testing.assert_allclose(logits.numpy(), graph(x).detach().numpy(), rtol=1e-5, atol=1e-5)
        session = ort.InferenceSession(net.export_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
        got = np.concatenate([session.run(["logits"], {"input": x[i:i + 1].numpy()})[0] for i in range(2)])
        scale = max(float(np.abs(rect.numpy()).max()), 1e-6)
        np.testing.assert_allclose(got / scale, rect.numpy() / scale, atol=1e-4, err_msg=f"{name} at {tap.name}")


@pytest.mark.parametrize("name", ["shufflenet_v1", "densenet121", "inception_v1"])
def test_cpm_of_a_model_zoo_form_exports_as_it_runs(name):
    """Channel shuffles, joins of a concat's scaled parts with one scaled whole (ShuffleNet), convolutional
    [1, C, 1, 1] logits (DenseNet), LRN and inception concats, in the ONNX Model Zoo's habits."""
    import model_zoo_forms

    graph = strip_softmax(load_model(model_zoo_forms.build(name, width=0.125)).graph())
    taps = candidate_taps(graph)
    x = torch.randn(1, *graph.input_shape[1:])
    for tap in (taps[len(taps) // 2], taps[-2]):
        for width in (0.25, 0.0625):
            net = MirrorNet(graph, Strategy(taps=(tap.name,), width_ratio=width)).eval()
            with torch.no_grad():
                rect, _, _ = net(x)
            assert tuple(rect.shape) == (1, 1000)
            session = ort.InferenceSession(net.export_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
            got = session.run(["logits"], {"input": x.numpy()})[0]
            scale = max(float(np.abs(rect.numpy()).max()), 1e-6)
            np.testing.assert_allclose(got / scale, rect.numpy() / scale, atol=1e-4, err_msg=f"{name} at {tap.name}")
