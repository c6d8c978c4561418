"""Import rules refuse what they do not handle (never a silently different graph), and a
layer whose every weight is zero compiles to constants instead of crashing."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import amosc
from amosc.compiler.importer import ATTRIBUTES, import_model
from amosc.errors import ModelError
from conftest import structured_inputs
from onnx_builders import GraphBuilder, save


def _pool_model(tmp_path, op, opset=19, **attrs):
    b = GraphBuilder((1, 8, 8), 3, opset=opset)
    h = b.node(op, [b.relu(b.conv("x", 1, 2))], kernel_shape=[2, 2], **attrs)
    h = b.node("Flatten", [h], axis=1)
    n = 2 * (8 - (2 - 1) * attrs.get("dilations", [1, 1])[0]) ** 2
    return save(b.model(b.gemm(h, n, 3), 3), tmp_path / f"{op}.onnx")


def test_a_dilated_average_pool_is_refused_by_name(tmp_path):
    path = _pool_model(tmp_path, "AveragePool", dilations=[2, 2])
    with pytest.raises(ModelError, match=r"'AveragePool\d+' \(AveragePool\): attribute dilations=\[2, 2\] "
                                         r"is not supported \(only \[1, 1\]\)"):
        import_model(path)
    # the default value is accepted and means what onnxruntime computes
    ok = _pool_model(tmp_path, "AveragePool", dilations=[1, 1])
    x = structured_inputs((1, 8, 8), 20)
    prog = amosc.compile(ok, x, bits=8)
    assert prog.validate(ok, x).agreement >= 0.95


def test_an_unknown_attribute_is_refused_naming_node_op_and_attribute(tmp_path):
    b = GraphBuilder((1, 6, 6))
    h = b.node("Relu", [b.conv("x", 1, 2)])
    h = b.node("Flatten", [h], axis=1)
    m = b.model(b.gemm(h, 72, 3), 3)
    next(n for n in m.graph.node if n.op_type == "Relu").attribute.append(onnx.helper.make_attribute("mystery", 3))
    path = save(m, tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=r"m.onnx: node 'Relu\d+' \(Relu\): attribute 'mystery' is not "
                                         r"supported by amosc's Relu \(it understands: none\)"):
        import_model(path)


def test_every_declared_rule_is_a_supported_op():
    from amosc.compiler.importer import SUPPORTED_OPS
    assert set(ATTRIBUTES) <= set(SUPPORTED_OPS)


def test_softmax_over_the_batch_axis_is_refused(tmp_path):
    b = GraphBuilder((4,))
    h = b.node("Softmax", [b.gemm("x", 4, 3)], axis=0)
    path = save(b.model(h, 3), tmp_path / "s.onnx")
    with pytest.raises(ModelError, match="axis 0 is not over the classes"):
        import_model(path)


def test_shape_with_start_and_end_reads_the_slice(tmp_path):
    """Shape(start=1) of an activation, used to build a Reshape target (opset 15)."""
    b = GraphBuilder((2, 3, 3), opset=15)
    h = b.relu(b.conv("x", 2, 2))
    shp = b.node("Shape", [h], start=0, end=1)                       # [N]
    tail = b.init(np.array([-1], np.int64))
    target = b.node("Concat", [shp, tail], axis=0)                   # [N, -1]
    h = b.node("Reshape", [h, target])
    path = save(b.model(b.gemm(h, 18, 3), 3), tmp_path / "shape.onnx")
    x = structured_inputs((2, 3, 3), 30)
    prog = amosc.compile(path, x, bits=8)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})[0]
    assert (prog.run(x).logits.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_a_layer_with_all_zero_weights_folds_into_constants(tmp_path):
    b = GraphBuilder((1, 6, 6))
    h = b.relu(b.conv("x", 1, 2))
    zero = b.node("Conv", [h, b.init(np.zeros((2, 2, 3, 3), np.float32)),
                           b.init(np.array([0.5, -0.2], np.float32))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.node("Add", [h, b.relu(zero)])                               # adds relu(bias): a constant
    h = b.node("Flatten", [h], axis=1)
    path = save(b.model(b.gemm(h, 72, 3), 3), tmp_path / "z.onnx")
    x = structured_inputs((1, 6, 6), 40)
    prog = amosc.compile(path, x, bits=6)
    assert len(prog.populations) == 3        # input, the live ReLU, output: the constant gate is folded
    rep = prog.validate(path, x)
    assert rep.agreement == 1.0 and rep.logits_max_err < 0.02
    np.testing.assert_array_equal(prog.run(x).output, amosc.ir.semantics.evaluate(prog, x)["output"])


def test_an_output_that_does_not_depend_on_the_input_is_refused(tmp_path):
    b = GraphBuilder((4,))
    h = b.relu(b.node("Gemm", ["x", b.init(np.zeros((3, 4), np.float32)), b.init(np.ones(3, np.float32))],
                      transB=1))
    path = save(b.model(b.gemm(h, 3, 2), 2), tmp_path / "c.onnx")
    with pytest.raises(ModelError, match="does not depend on the input"):
        amosc.compile(path, structured_inputs((4, 1, 1), 10).reshape(10, 4), bits=4)


def test_padded_maxpool_after_any_non_negative_producer(tmp_path):
    """Inception-style: a padded 3x3/1 MaxPool reads a 2x2 MaxPool of a ReLU (a max of ReLUs,
    not one gate's codes) and a concat of ReLU branches; range analysis proves both inputs
    non-negative. A padded pool of a SiLU (down to -0.28) is still refused, naming the bound."""
    b = GraphBuilder((1, 8, 8), 5)
    stem = b.node("MaxPool", [b.relu(b.conv("x", 1, 3))], kernel_shape=[2, 2], strides=[2, 2])
    p1 = b.node("MaxPool", [stem], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    br = b.relu(b.conv(stem, 3, 2))
    cat = b.node("Concat", [p1, br], axis=1)
    p2 = b.node("MaxPool", [cat], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    h = b.node("Tanh", [b.conv(p2, 5, 4)])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    path = save(b.model(b.gemm(h, 4, 3, gain=4.0), 3), tmp_path / "incep.onnx")
    x = structured_inputs((1, 8, 8), 60, seed=2)
    prog = amosc.compile(path, x, bits=8)
    assert prog.validate(path, x).agreement >= 0.95

    b = GraphBuilder((1, 6, 6), 5)
    c = b.conv("x", 1, 2)
    silu = b.node("Mul", [c, b.node("Sigmoid", [c])])
    h = b.node("MaxPool", [silu], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    h = b.node("Flatten", [h], axis=1)
    path = save(b.model(b.gemm(h, 72, 3), 3), tmp_path / "silu.onnx")
    with pytest.raises(ModelError, match=r"can be negative \(range analysis: down to -0.278"):
        import_model(path)
