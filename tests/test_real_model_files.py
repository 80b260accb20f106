"""The ONNX Model Zoo classic forms (tests/model_zoo_forms.py) are valid legacy ONNX files.

Small-width versions of each reconstruction, still at 224x224: checker-valid, IR 3 with every
initializer also a graph input, the zoo's legacy opset, the zoo's input/output names, and a finite
onnxruntime output of the zoo's shape. These tests say nothing about the project's front end.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import model_zoo_forms as zoo

WIDTH = 0.125

# name -> (input name, output name, output shape, ops the zoo file is known for)
EXPECTED = {
    "bvlc_alexnet": ("data_0", "prob_1", (1, 1000),
                     {"LRN", "Dropout", "Gemm", "Softmax", "Reshape"}),
    "zfnet512": ("gpu_0/data_0", "gpu_0/softmax_1", (1, 1000), {"LRN", "Dropout", "Gemm"}),
    "vgg19_caffe2": ("data_0", "prob_1", (1, 1000), {"Dropout", "Gemm", "Softmax", "Reshape"}),
    "resnet50_caffe2": ("gpu_0/data_0", "gpu_0/softmax_1", (1, 1000),
                        {"BatchNormalization", "Sum", "Softmax", "Reshape"}),
    "resnet50_v1_mxnet": ("data", "resnetv17_dense0_fwd", (1, 1000),
                          {"BatchNormalization", "Add", "Flatten", "Gemm", "GlobalAveragePool"}),
    "squeezenet1.0": ("data_0", "softmaxout_1", (1, 1000, 1, 1),
                      {"Concat", "Dropout", "GlobalAveragePool", "Softmax"}),
    "densenet121": ("data_0", "fc6_1", (1, 1000, 1, 1),
                    {"Concat", "BatchNormalization", "Unsqueeze", "Mul", "Add", "AveragePool"}),
    "inception_v1": ("data_0", "prob_1", (1, 1000),
                     {"LRN", "Concat", "AveragePool", "Dropout", "Softmax"}),
    "inception_v2": ("data_0", "prob_1", (1, 1000),
                     {"BatchNormalization", "Concat", "AveragePool"}),
    "shufflenet_v1": ("gpu_0/data_0", "gpu_0/softmax_1", (1, 1000),
                      {"Reshape", "Transpose", "Sum", "Concat", "AveragePool"}),
}


def test_every_builder_has_expectations():
    assert set(EXPECTED) == set(zoo.BUILDERS)


@pytest.mark.parametrize("name", list(zoo.BUILDERS))
def test_zoo_form_is_valid_legacy_onnx_and_runs(name):
    inp, out, out_shape, ops = EXPECTED[name]
    model = zoo.build(name, width=WIDTH)
    onnx.checker.check_model(model, full_check=True)

    assert model.ir_version == 3
    assert [(o.domain, o.version) for o in model.opset_import] in ([("", 7)], [("", 8)])
    input_names = [i.name for i in model.graph.input]
    init_names = {t.name for t in model.graph.initializer}
    assert init_names and init_names <= set(input_names), "IR 3: initializers are graph inputs"
    assert [n for n in input_names if n not in init_names] == [inp]
    assert [o.name for o in model.graph.output] == [out]
    assert ops <= set(zoo.ops_used(model))
    for node in model.graph.node:
        if node.op_type == "Dropout":
            assert [a.name for a in node.attribute] == ["ratio"]
        if node.op_type == "Reshape":
            assert node.input[1] in init_names, "Reshape takes its shape from an initializer"

    y = zoo.run_onnxruntime(model)
    assert y.shape == out_shape
    assert np.isfinite(y).all()
    assert float(np.std(y)) > 0.0


@pytest.mark.parametrize("opset", [7, 9])
def test_other_legacy_opsets(opset):
    model = zoo.build("resnet50_caffe2", width=WIDTH, opset=opset)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == opset
    assert model.ir_version == (3 if opset <= 8 else 4)
    assert np.isfinite(zoo.run_onnxruntime(model)).all()


def test_width_scales_channels_and_seed_fixes_weights():
    small = zoo.build("squeezenet1.0", width=WIDTH)
    half = zoo.build("squeezenet1.0", width=0.25)
    count = lambda m: sum(int(np.prod(t.dims)) for t in m.graph.initializer)  # noqa: E731
    assert count(small) < count(half)
    assert zoo.build("squeezenet1.0", width=WIDTH).SerializeToString() == small.SerializeToString()
    assert zoo.build("squeezenet1.0", width=WIDTH, seed=1).SerializeToString() != \
        small.SerializeToString()
    with pytest.raises(ValueError, match="opset"):
        zoo.build("squeezenet1.0", width=WIDTH, opset=13)
    with pytest.raises(KeyError, match="unknown zoo form"):
        zoo.build("lenet")


def test_manifest_lists_ops_inputs_and_digest(tmp_path):
    model = zoo.build("shufflenet_v1", width=WIDTH)
    path = tmp_path / "shufflenet_v1.onnx"
    onnx.save(model, path)
    entry = zoo.manifest_entry(path, "onnx.helper", onnx.__version__)
    assert entry["ops"] == zoo.ops_used(model)
    assert entry["ops"]["Transpose"] == 16 and entry["ops"]["Conv"] == 49
    assert entry["inputs"] == [{"name": "gpu_0/data_0", "shape": [1, 3, 224, 224]}]
    assert entry["initializers_as_inputs"] == len(model.graph.initializer)
    assert entry["opset_import"] == {"ai.onnx": 8} and entry["ir_version"] == 3
    assert len(entry["sha256"]) == 64
    written = json.loads(zoo.write_manifest(tmp_path, [entry]).read_text())
    assert written["files"][0]["ops"]["Sum"] == 13


def test_manifest_lists_external_data(tmp_path):
    model = zoo.build("squeezenet1.0", width=WIDTH)
    path = tmp_path / "sq.onnx"
    onnx.save(model, path, save_as_external_data=True, location="sq.onnx.data",
              size_threshold=0)
    entry = zoo.manifest_entry(path, "onnx.helper", onnx.__version__)
    assert list(entry["external_data"]) == ["sq.onnx.data"]
    assert entry["ops"] == zoo.ops_used(model)


def test_dynamic_batch_where_the_zoo_declares_it():
    for name in ("resnet50_caffe2", "resnet50_v1_mxnet"):
        dims = zoo.build(name, width=WIDTH).graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 224, 224]
