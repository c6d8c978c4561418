"""Hand-built ONNX models (onnx.helper) for the tests; random weights, seeded."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Tiny helper: add nodes with initializers, then ``model()``."""

    def __init__(self, input_shape, seed=0, batch="N", opset=13):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.input_shape = tuple(input_shape)
        self.batch = batch
        self.opset = opset
        self.n = 0

    def _name(self, prefix):
        self.n += 1
        return f"{prefix}{self.n}"

    def init(self, arr, prefix="w"):
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self._name(op.lower() + "_")
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=self._name(op), **attrs))
        return out

    def conv(self, x, cin, cout, k=3, stride=1, pad=1, groups=1, bias=True, scale=None):
        fan = cin // groups * k * k
        w = self.rng.normal(0, scale or np.sqrt(2.0 / fan), (cout, cin // groups, k, k)).astype(np.float32)
        ins = [x, self.init(w)]
        if bias:
            ins.append(self.init(self.rng.normal(0, 0.1, cout).astype(np.float32), "b"))
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4, group=groups)

    def bn(self, x, c):
        r = self.rng
        return self.node("BatchNormalization", [
            x, self.init(r.uniform(0.5, 1.5, c).astype(np.float32)),
            self.init(r.normal(0, 0.1, c).astype(np.float32)),
            self.init(r.normal(0, 0.1, c).astype(np.float32)),
            self.init(r.uniform(0.5, 1.5, c).astype(np.float32))], epsilon=1e-5)

    def gemm(self, x, fin, fout, gain=1.0, bias=0.1):
        w = self.rng.normal(0, gain * np.sqrt(2.0 / fin), (fout, fin)).astype(np.float32)
        b = self.rng.normal(0, bias, fout).astype(np.float32)
        return self.node("Gemm", [x, self.init(w), self.init(b, "b")], transB=1)

    def relu(self, x):
        return self.node("Relu", [x])

    def model(self, out, out_dim) -> onnx.ModelProto:
        """``out_dim``: classes, or a per-sample shape tuple (e.g. (C, 1, 1) for a conv head)."""
        inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [self.batch, *self.input_shape])
        dims = list(out_dim) if isinstance(out_dim, tuple) else [out_dim]
        o = helper.make_tensor_value_info(out, TensorProto.FLOAT, [self.batch, *dims])
        g = helper.make_graph(self.nodes, "test", [inp], [o], initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def small_cnn(seed=0, residual=True, pool="gap"):
    """Conv-BN-ReLU, (residual block), pooling, Gemm, Softmax on 1x12x12 inputs."""
    b = GraphBuilder((1, 12, 12), seed)
    h = b.relu(b.bn(b.conv("x", 1, 4), 4))
    if residual:
        r = b.relu(b.bn(b.conv(h, 4, 4), 4))
        r = b.bn(b.conv(r, 4, 4), 4)
        h = b.relu(b.node("Add", [h, r]))
    if pool == "gap":
        h = b.node("GlobalAveragePool", [h])
        h = b.node("Flatten", [h], axis=1)
        h = b.gemm(h, 4, 5, gain=8.0, bias=0.0)
    else:
        h = b.node("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
        h = b.node("Flatten", [h], axis=1)
        h = b.gemm(h, 4 * 6 * 6, 5, gain=3.0, bias=0.0)
    h = b.node("Softmax", [h], axis=1)
    return b.model(h, 5)


def dense_block_cnn(seed=0, growth=3, layers=3):
    """DenseNet-style: a stem, a dense block whose every layer (BN-ReLU-1x1 conv-BN-ReLU-3x3
    conv) is concatenated onto its input *before* the next BN-ReLU (concatenations of
    pre-activations), a transition BN-ReLU, global average pooling and a 1x1 conv head
    whose output stays (N, 5, 1, 1) (no Flatten), on 1x12x12 inputs."""
    b = GraphBuilder((1, 12, 12), seed)
    h, c = b.conv("x", 1, 4), 4
    for _ in range(layers):
        t = b.relu(b.bn(h, c))
        t = b.relu(b.bn(b.conv(t, c, 2 * growth, k=1, pad=0), 2 * growth))
        t = b.conv(t, 2 * growth, growth)
        h, c = b.node("Concat", [h, t], axis=1), c + growth
    h = b.relu(b.bn(h, c))
    h = b.node("GlobalAveragePool", [h])
    h = b.conv(h, c, 5, k=1, pad=0, scale=2.0)
    return b.model(h, (5, 1, 1))


def mlp(sizes=(20, 16, 12, 4), seed=0):
    b = GraphBuilder((sizes[0],), seed)
    h = "x"
    for i, (a, c) in enumerate(zip(sizes[:-1], sizes[1:])):
        h = b.gemm(h, a, c)
        if i < len(sizes) - 2:
            h = b.relu(h)
    return b.model(h, sizes[-1])


def se_cnn(seed=11):
    """A ReLU map (4, 8, 8) times a squeeze-excitation gate (4, 1, 1) (GAP, 1x1 conv, ReLU,
    1x1 conv, Sigmoid), GAP, Linear(4 -> 3)."""
    b = GraphBuilder((1, 8, 8), seed)
    h = b.relu(b.bn(b.conv("x", 1, 4), 4))
    s = b.node("GlobalAveragePool", [h])
    s = b.relu(b.conv(s, 4, 2, k=1, pad=0))
    s = b.node("Sigmoid", [b.conv(s, 2, 4, k=1, pad=0)])
    h = b.node("Mul", [h, s])                          # (4, 8, 8) * (4, 1, 1)
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    return b.model(b.gemm(h, 4, 3), 3)


def save(model, path):
    onnx.save(model, str(path))
    return str(path)
