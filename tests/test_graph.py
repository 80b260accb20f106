"""GraphNet: ONNX -> trainable PyTorch form -> ONNX, against onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from mirrornet_tvm.errors import ModelError, UnsupportedOpError
from mirrornet_tvm.frontend import check_onnx, from_torch
from mirrornet_tvm.graph import GraphNet

torch.set_num_threads(1)
RNG = np.random.default_rng(0)


def _w(*shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def make_model(nodes, inits, in_shape, out_name="y", opset=17, out_shape=None):
    """A single-input float32 model from ONNX nodes and {name: array} initializers."""
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)  # fills in the output shapes


def ort_run(model, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def torch_run(net, x):
    with torch.no_grad():
        return net.eval()(torch.from_numpy(x)).numpy()


def assert_round_trip(model, in_shape, tol=1e-5):
    """GraphNet matches onnxruntime, and so does its ONNX re-export."""
    x = RNG.random(in_shape, dtype=np.float32) * 2 - 1
    ref = ort_run(model, x)[0]
    net = GraphNet.from_onnx(model)
    if ref.ndim == 4 and ref.shape[2:] == (1, 1):
        ref = ref.reshape(ref.shape[:2])   # [1, C, 1, 1] outputs are flattened to logits on load
    np.testing.assert_allclose(torch_run(net, x), ref, atol=tol, rtol=0)
    again = net.export_onnx()
    check_onnx(again)
    np.testing.assert_allclose(ort_run(again, x)[0], ref, atol=tol, rtol=0)
    return net


def test_conv_asymmetric_pads_groups_dilation_and_batchnorm():
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[0, 1, 2, 1], strides=[2, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["n1"], name="bn", epsilon=1e-3),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="dw", group=4, dilations=[2, 2], pads=[2, 2, 2, 2]),
    ]
    inits = {"w1": _w(4, 2, 3, 3), "b1": _w(4), "s": _w(4) + 1, "bb": _w(4), "m": _w(4),
             "v": np.abs(_w(4)) + 0.5, "w2": _w(4, 1, 3, 3)}
    net = assert_round_trip(make_model(nodes, inits, [1, 2, 9, 8]), (1, 2, 9, 8))
    assert [n.op for n in net.nodes] == ["Conv", "BatchNormalization", "Relu", "Conv"]
    assert net.nodes[0].attrs["pads"] == (0, 1, 2, 1)
    assert net.tensor_shapes["c1"] == (1, 4, 5, 8)
    assert net.channels("r1") == 4


@pytest.mark.parametrize("ceil_mode", [0, 1])
@pytest.mark.parametrize("pads", [[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]])
def test_pools_ceil_mode_and_pads(ceil_mode, pads):
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=pads,
                         ceil_mode=ceil_mode),
        helper.make_node("AveragePool", ["p1"], ["p2"], kernel_shape=[2, 2], strides=[1, 1], pads=pads,
                         ceil_mode=ceil_mode, count_include_pad=0),
        helper.make_node("AveragePool", ["p2"], ["p3"], kernel_shape=[3, 3], strides=[2, 2], pads=pads,
                         count_include_pad=1),
        helper.make_node("GlobalAveragePool", ["p3"], ["y"]),
    ]
    assert_round_trip(make_model(nodes, {}, [1, 3, 12, 11]), (1, 3, 12, 11))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(["MaxPool", "AveragePool"]), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ceil=st.integers(0, 1),
       pads=st.lists(st.integers(0, 2), min_size=4, max_size=4), h=st.integers(3, 9), w=st.integers(3, 9),
       include=st.integers(0, 1))
def test_pooling_matches_onnxruntime_property(op, kh, kw, sh, sw, ceil, pads, h, w, include):
    # ONNX requires pads smaller than the kernel
    pads = [min(pads[0], kh - 1), min(pads[1], kw - 1), min(pads[2], kh - 1), min(pads[3], kw - 1)]
    assume(h + pads[0] + pads[2] >= kh and w + pads[1] + pads[3] >= kw)
    extra = {"count_include_pad": include} if op == "AveragePool" else {}
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[kh, kw], strides=[sh, sw], pads=pads, ceil_mode=ceil,
                            **extra)
    model = make_model([node], {}, [1, 2, h, w])
    x = RNG.random((1, 2, h, w), dtype=np.float32)
    ref = ort_run(model, x)[0]
    got = torch_run(GraphNet.from_onnx(model), x)
    if ref.ndim == 4 and ref.shape[2:] == (1, 1):
        ref = ref.reshape(ref.shape[:2])   # [1, C, 1, 1] outputs are flattened to logits on load
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("trans_a,trans_b,alpha,beta,c_shape", [(0, 1, 1.0, 1.0, (4,)), (0, 0, 0.5, 2.0, (1, 4)),
                                                             (1, 0, 1.5, 0.0, (4,)), (0, 1, 1.0, 0.5, ())])
def test_gemm_attributes(trans_a, trans_b, alpha, beta, c_shape):
    b = _w(4, 6) if trans_b else _w(6, 4)
    shape = np.array([6, 1] if trans_a else [1, 6], np.int64)  # transA reads a column
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["a"]),
             helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=trans_a, transB=trans_b, alpha=alpha,
                              beta=beta)]
    c = _w(*c_shape) if c_shape else np.array(0.7, np.float32)
    net = assert_round_trip(make_model(nodes, {"b": b, "c": c, "shape": shape}, [1, 6]), (1, 6))
    assert isinstance(net.module_of(net.nodes[1]), torch.nn.Linear)


def test_matmul_bias_add_leakyrelu_clip_softmax():
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["a"]),
        helper.make_node("LeakyRelu", ["a"], ["l"], alpha=0.2),
        helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.array(-0.1, np.float32))),
        helper.make_node("Clip", ["l", "lo", "hi"], ["c"]),
        helper.make_node("Softmax", ["c"], ["y"], axis=1),
    ]
    net = assert_round_trip(make_model(nodes, {"w": _w(12, 5), "bias": _w(5), "hi": np.array(0.3, np.float32)},
                                       [1, 3, 2, 2]), (1, 3, 2, 2))
    clip = [n for n in net.nodes if n.op == "Clip"][0]
    assert clip.attrs["min"] == pytest.approx(-0.1) and clip.attrs["max"] == pytest.approx(0.3)
    assert clip.inputs == ("l",)  # constants are folded out of the inputs
    assert "Constant" not in [n.op for n in net.nodes]


def test_clip_attributes_of_old_opset():
    nodes = [helper.make_node("Clip", ["x"], ["y"], min=0.0, max=6.0)]
    net = assert_round_trip(make_model(nodes, {}, [1, 2, 3, 3], opset=10), (1, 2, 3, 3))
    assert (net.nodes[0].attrs["min"], net.nodes[0].attrs["max"]) == (0.0, 6.0)


def test_concat_identity_reshape_and_residual_add():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Identity", ["r"], ["i"]),
        helper.make_node("Add", ["i", "c"], ["a"]),
        helper.make_node("Concat", ["a", "r"], ["cat"], axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["y"]),
    ]
    model = make_model(nodes, {"w": _w(3, 3, 3, 3), "shape": np.array([1, -1], np.int64)}, [1, 3, 4, 4])
    net = assert_round_trip(model, (1, 3, 4, 4))
    assert net.tensor_shapes["y"] == (1, 96)


def test_batchnorm_on_flattened_features_and_deepcopy():
    import copy

    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("BatchNormalization", ["f", "s", "b", "m", "v"], ["y"])]
    inits = {"s": _w(8) + 1, "b": _w(8), "m": _w(8), "v": np.abs(_w(8)) + 0.5}
    net = assert_round_trip(make_model(nodes, inits, [1, 2, 2, 2]), (1, 2, 2, 2))
    twin = copy.deepcopy(net)
    x = torch.rand(4, 2, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(twin.eval()(x), net.eval()(x))
    net.train()(x)  # training mode runs on a 2-D batch too
    assert net.nodes == twin.nodes


def test_direct_construction_checks_the_node_order():
    net = GraphNet.from_onnx(from_torch(_small_cnn().eval(), (1, 10, 10)))
    layers = dict(net.layers.items())
    again = GraphNet(net.nodes, layers, net.input_name, net.output_name, net.input_shape)
    assert again.tensor_shapes == net.tensor_shapes
    with pytest.raises(ModelError, match="which no earlier node produces"):
        GraphNet(net.nodes[::-1], layers, net.input_name, net.output_name, net.input_shape)
    with pytest.raises(ModelError, match="no node produces the output 'nope'"):
        GraphNet(net.nodes, layers, net.input_name, "nope", net.input_shape)


def test_reshape_allowzero_without_a_zero_is_a_reshape():
    """torch's dynamo exporter writes allowzero=1 on every flatten; without a 0 in the shape it changes nothing."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=1, name="rz")]
    model = make_model(nodes, {"shape": np.array([1, -1], np.int64)}, [1, 2, 2, 2])
    assert assert_round_trip(model, (1, 2, 2, 2)).tensor_shapes["y"] == (1, 8)


def _small_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3), torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(6, 5))


def test_trainable_batched_and_exportable_by_torch(tmp_path):
    torch.manual_seed(0)
    proto = from_torch(_small_cnn().eval(), (1, 10, 10))
    net = GraphNet.from_onnx(proto)
    # any batch size, and each row equals the batch-1 result
    xb = torch.rand(3, 1, 10, 10)
    with torch.no_grad():
        yb = net.eval()(xb)
        y0 = net(xb[:1])
    assert yb.shape == (3, 5)
    torch.testing.assert_close(yb[:1], y0, atol=1e-6, rtol=0)
    # optimisers see every weight; a few SGD steps lower the loss
    names = dict(net.named_parameters())
    assert names and all(p.requires_grad for p in names.values())
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    target = torch.tensor([1, 2, 3])
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xb), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # state_dict round-trip into a fresh conversion
    fresh = GraphNet.from_onnx(proto)
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(xb), net.eval()(xb))
    # torch.onnx.export of a GraphNet gives a model the front end accepts, with the same outputs
    again = from_torch(net, (1, 10, 10))
    x = xb[:1].numpy()
    np.testing.assert_allclose(ort_run(again, x)[0], torch_run(net, x), atol=1e-5, rtol=0)
    # export_onnx writes the trained weights atomically
    path = tmp_path / "out" / "net.onnx"
    written = net.export_onnx(path)
    assert path.exists() and not list(path.parent.glob(".*tmp"))
    assert onnx.load(str(path)).graph.input[0].name == "input"
    np.testing.assert_allclose(ort_run(written, x)[0], torch_run(net, x), atol=1e-5, rtol=0)


def test_return_tensors_subgraph_and_extra_outputs():
    torch.manual_seed(0)
    net = GraphNet.from_onnx(from_torch(_small_cnn().eval(), (1, 10, 10)))
    relu = [n for n in net.nodes if n.op == "Relu"][0].output
    pool = [n for n in net.nodes if n.op == "MaxPool"][0].output
    x = torch.rand(1, 1, 10, 10)
    with torch.no_grad():
        out, tensors = net.eval()(x, return_tensors=[relu, pool])
    assert set(tensors) == {relu, pool}
    assert tuple(tensors[pool].shape) == net.tensor_shapes[pool] == (1, 4, 5, 5)
    torch.testing.assert_close(tensors[pool], torch.nn.functional.max_pool2d(tensors[relu], 2))
    with pytest.raises(ModelError, match="no tensor named 'nope'"):
        net(x, return_tensors=["nope"])

    between = net.subgraph(relu, net.output_name)
    assert between[0].op == "MaxPool" and between[-1].output == net.output_name
    assert [n.op for n in net.subgraph(net.input_name, relu)] == ["Conv", "Relu"]
    with pytest.raises(ModelError, match="does not depend"):
        net.subgraph(pool, relu)
    assert net.producer(pool).op == "MaxPool" and net.producer(net.input_name) is None
    assert [n.op for n in net.consumers(relu)] == ["MaxPool"]

    model = net.export_onnx(extra_outputs={"tap:a": relu, "tap:b": pool})
    assert [o.name for o in model.graph.output] == ["logits", "tap:a", "tap:b"]
    outs = ort_run(model, x.numpy())
    np.testing.assert_allclose(outs[1], tensors[relu].numpy(), atol=1e-6)
    np.testing.assert_allclose(outs[2], tensors[pool].numpy(), atol=1e-6)
    np.testing.assert_allclose(outs[0], out.numpy(), atol=1e-5)


def test_output_selection_prunes_to_its_cone():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["r"], ["z"]),
    ]
    model = make_model(nodes, {}, [1, 2, 4, 4])
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 1, 1]))
    first = GraphNet.from_onnx(model)
    assert first.output_name == "y" and [n.op for n in first.nodes] == ["Relu", "MaxPool"]
    other = GraphNet.from_onnx(model, output="z")
    assert [n.op for n in other.nodes] == ["Relu", "GlobalAveragePool"] and other.num_classes == 2
    with pytest.raises(ModelError, match="no output 'w'"):
        GraphNet.from_onnx(model, output="w")


def test_unsupported_constructs_are_refused_by_name():
    erf = [helper.make_node("Erf", ["x"], ["y"])]
    with pytest.raises(UnsupportedOpError, match="uses op Erf"):
        GraphNet.from_onnx(make_model(erf, {}, [1, 2, 2, 2]))
    # a shape computed from a static shape folds to a constant on load
    static = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])]
    assert [n.op for n in GraphNet.from_onnx(make_model(static, {}, [1, 2, 2, 2])).nodes] == ["Reshape"]
    computed = [helper.make_node("Relu", ["x"], ["r"]),
                helper.make_node("Conv", ["x", "w"], ["c"]),
                helper.make_node("Add", ["r", "c"], ["y"])]
    ok = make_model(computed, {"w": _w(2, 2, 1, 1)}, [1, 2, 2, 2])
    assert len(GraphNet.from_onnx(ok).nodes) == 3
    conv_from_act = [helper.make_node("Conv", ["x", "x"], ["y"])]
    with pytest.raises(UnsupportedOpError, match="Conv at node .* weight and bias must be constants"):
        GraphNet.from_onnx(make_model(conv_from_act, {}, [1, 1, 1, 1]))
