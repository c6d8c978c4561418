#!/usr/bin/env python3
"""Train and export seven small CNN fixture models (MobileNetV2-, two EfficientNet-style,
three GELU/ReLU CNNs and an Inception-style CNN) on Fashion-MNIST, for testing the compiler on other op patterns.

This script is *not* part of the amosc package and needs PyTorch, which the
project itself does not depend on.  Run it from a separate environment, e.g.::

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 "numpy<2" onnx onnxruntime
    /tmp/torchenv/bin/python scripts/make_fixtures.py --out examples/fixtures

Data: Fashion-MNIST idx .gz files (``apt-get install -y dataset-fashion-mnist``
puts them under /usr/share/datasets/fashion-mnist).  Data loading, seeding, the
training loop and the ONNX export are shared with scripts/make_example.py.

The models are trained on the training split only.  They share the calibration and
test data already shipped with the example model (examples/fmnist_resnet/calib.npy:
512 training images; test_x.npy / test_y.npy: the first 500 test images).  The larger
held-out set, examples/fmnist_test2000.npz (the first 2000 official test images as
uint8 "x" (2000, 1, 28, 28) and their uint8 labels "y"; the first 500 are test_x.npy),
is (re)written by every run (--heldout; load_heldout reads it).

Outputs (in --out):
    mobilenet.onnx     opset 11, fixed batch 1: input "input" (1, 1, 28, 28) -> "probs" (1, 10)
    efficientnet.onnx  opset 17, symbolic batch: input "input" (N, 1, 28, 28) -> "probs" (N, 10)
    gelu_maxpool.onnx  opset 13, symbolic batch: input "input" (N, 1, 28, 28) -> "probs" (N, 10)
    relu_maxpool.onnx  opset 9, symbolic batch: input "input" (N, 1, 28, 28) -> "probs" (N, 10)
    gelu_wide.onnx     opset 18, symbolic batch
    effnet_se6.onnx    opset 15, fixed batch 1
    inception.onnx     opset 19, symbolic batch
    README.md          description, op histograms, accuracies, how to regenerate
Inputs are float32 pixels / 255 in [0, 1] (no normalization); outputs are softmax
probabilities.  BatchNormalization nodes are kept (not folded into the convolutions).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_example  # noqa: E402  (shared data loading, training loop and export)

SHIPPED_DATA = "examples/fmnist_resnet"
HELDOUT = "examples/fmnist_test2000.npz"
HELDOUT_N = 2000


def write_heldout(path: str, data, n: int = HELDOUT_N):
    """The first n official test images (uint8 pixels, (n, 1, 28, 28)) and labels (uint8)
    as a compressed .npz with fixed zip timestamps, so regenerating it gives the same bytes."""
    import io
    import zipfile

    x = np.rint(data["test_x"][:n] * 255).astype(np.uint8)
    y = data["test_y"][:n].astype(np.uint8)
    assert np.array_equal(x.astype(np.float32) / np.float32(255.0), data["test_x"][:n])
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for key, arr in (("x", x), ("y", y)):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, buf.getvalue(), compresslevel=9)
    os.replace(tmp, path)
    print(f"wrote {path}: {n} test images, {os.path.getsize(path)} bytes")


def load_heldout(path: str = HELDOUT):
    """(x float32 (n, 1, 28, 28) in [0, 1], y int64 (n,)) from the held-out .npz, scaled as
    the models' inputs (pixel / 255, bit-identical to examples/fmnist_resnet/test_x.npy)."""
    with np.load(path) as f:
        return f["x"].astype(np.float32) / np.float32(255.0), f["y"].astype(np.int64)


# ----------------------------------------------------------------------------- models

def _parts(act):
    """Building blocks shared by the MobileNet- and EfficientNet-style models: conv+BN(+act)
    layers, a residual body, and a classifier with the GAP + Linear head."""
    import torch.nn as nn

    def conv_bn(cin, cout, k, stride=1, groups=1, act_on=True):
        layers = [nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        return layers + [act()] if act_on else layers

    class Block(nn.Module):
        def __init__(self, layers, residual):
            super().__init__()
            self.body = nn.Sequential(*layers)
            self.residual = residual

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    class Classifier(nn.Module):
        def __init__(self, *features):
            super().__init__()
            self.features = nn.Sequential(*features)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def logits(self, x):
            return self.fc(self.gap(self.features(x)).flatten(1))

        def forward(self, x):
            return self.logits(x).softmax(dim=1)

    return conv_bn, Block, Classifier


def build_mobilenet():
    """MobileNetV2-style: ReLU6 (-> Clip(0, 6)), inverted residuals with linear bottlenecks."""
    import torch.nn as nn
    conv_bn, Block, Classifier = _parts(nn.ReLU6)

    def inverted_residual(cin, hidden, cout, stride):
        return Block([*conv_bn(cin, hidden, 1),                                # expand
                      *conv_bn(hidden, hidden, 3, stride, groups=hidden),      # depthwise
                      *conv_bn(hidden, cout, 1, act_on=False)],                # linear bottleneck
                     stride == 1 and cin == cout)

    return Classifier(
        *conv_bn(1, 16, 3),                          # 16x28x28
        inverted_residual(16, 32, 24, 2),            # 24x14x14
        inverted_residual(24, 32, 24, 1),            # 24x14x14, residual Add
        inverted_residual(24, 32, 32, 2),            # 32x7x7
        *conv_bn(32, 32, 1),                         # head 1x1 conv
    )


def build_efficientnet():
    """EfficientNet-style: SiLU, MBConv blocks with depthwise conv and squeeze-excitation."""
    import torch.nn as nn
    conv_bn, Block, Classifier = _parts(nn.SiLU)

    class SqueezeExcite(nn.Module):
        def __init__(self, c, reduced):
            super().__init__()
            self.gate = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(c, reduced, 1), nn.SiLU(),
                nn.Conv2d(reduced, c, 1), nn.Sigmoid(),
            )

        def forward(self, x):
            return x * self.gate(x)  # (N, C, 1, 1) broadcast over H, W

    def mbconv(cin, hidden, cout, stride, se_reduced):
        return Block([*conv_bn(cin, hidden, 1),                                # expand
                      *conv_bn(hidden, hidden, 3, stride, groups=hidden),      # depthwise
                      SqueezeExcite(hidden, se_reduced),
                      *conv_bn(hidden, cout, 1, act_on=False)],                # project
                     stride == 1 and cin == cout)

    return Classifier(
        *conv_bn(1, 16, 3),              # 16x28x28
        mbconv(16, 32, 24, 2, 8),        # 24x14x14
        mbconv(24, 32, 24, 1, 8),        # 24x14x14, residual Add
        mbconv(24, 32, 32, 2, 8),        # 32x7x7
        *conv_bn(32, 32, 1),             # head 1x1 conv
    )


def build_gelu_maxpool():
    """Plain CNN: GELU (exact, erf), 2x2 max pooling, Flatten + two Linear layers."""
    import torch.nn as nn

    def conv_bn_gelu(cin, cout, k):
        return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.GELU()]

    class GeluMaxPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                *conv_bn_gelu(1, 16, 3), nn.MaxPool2d(2),    # 16x14x14
                *conv_bn_gelu(16, 32, 3), nn.MaxPool2d(2),   # 32x7x7
                *conv_bn_gelu(32, 16, 3),                    # 16x7x7
            )
            self.classifier = nn.Sequential(
                nn.Flatten(), nn.Linear(16 * 7 * 7, 24), nn.GELU(), nn.Linear(24, 10))

        def logits(self, x):
            return self.classifier(self.features(x))

        def forward(self, x):
            return self.logits(x).softmax(dim=1)

    return GeluMaxPool()


def build_relu_maxpool():
    """VGG-style CNN: ReLU before every MaxPool (where --maxpool lipool applies), one
    padded 3x3/2 pool, GlobalAveragePool + Linear head."""
    import torch.nn as nn

    def conv_bn_relu(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    class ReluMaxPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                *conv_bn_relu(1, 16), nn.MaxPool2d(2),                        # 16x14x14
                *conv_bn_relu(16, 32), nn.MaxPool2d(3, stride=2, padding=1),  # 32x7x7
                *conv_bn_relu(32, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.classifier = nn.Linear(32, 10)

        def logits(self, x):
            return self.classifier(self.features(x))

        def forward(self, x):
            return self.logits(x).softmax(dim=1)

    return ReluMaxPool()


def build_gelu_wide():
    """GELU CNN with a 5x5 stem, other widths and the wide Flatten -> Linear head (1568 ->
    64) after GELU."""
    import torch.nn as nn

    def conv_bn_gelu(cin, cout, k):
        return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.GELU()]

    class GeluWide(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                *conv_bn_gelu(1, 24, 5), nn.MaxPool2d(2),    # 24x14x14
                *conv_bn_gelu(24, 32, 3), nn.MaxPool2d(2),   # 32x7x7
            )
            self.classifier = nn.Sequential(
                nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.GELU(), nn.Linear(64, 10))

        def logits(self, x):
            return self.classifier(self.features(x))

        def forward(self, x):
            return self.logits(x).softmax(dim=1)

    return GeluWide()


def build_effnet_se6():
    """EfficientNet-style at expand x6: stride-2 stem, two MBConv blocks with
    squeeze-excitation (the first with a stride-2 depthwise 5x5), SiLU."""
    import torch.nn as nn
    conv_bn, Block, _ = _parts(nn.SiLU)

    class SqueezeExcite(nn.Module):
        def __init__(self, c, reduced):
            super().__init__()
            self.gate = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(c, reduced, 1), nn.SiLU(),
                nn.Conv2d(reduced, c, 1), nn.Sigmoid(),
            )

        def forward(self, x):
            return x * self.gate(x)

    def mbconv(cin, cout, k, stride, expand=6, se_reduced=8):
        hidden = cin * expand
        return Block([*conv_bn(cin, hidden, 1),                                # expand x6
                      *conv_bn(hidden, hidden, k, stride, groups=hidden),      # depthwise kxk
                      SqueezeExcite(hidden, se_reduced),
                      *conv_bn(hidden, cout, 1, act_on=False)],                # project
                     stride == 1 and cin == cout)

    class EffNetSE6(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                *conv_bn(1, 12, 3, 2),           # 12x14x14 (stride-2 stem)
                mbconv(12, 16, 5, 2),            # 72 hidden, dw 5x5/2 -> 16x7x7
                mbconv(16, 16, 3, 1),            # 96 hidden, dw 3x3, residual Add
                *conv_bn(16, 48, 1),             # head 1x1 conv
            )
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(48, 10)

        def logits(self, x):
            return self.fc(self.gap(self.features(x)).flatten(1))

        def forward(self, x):
            return self.logits(x).softmax(dim=1)

    return EffNetSE6()


def build_inception():
    """Inception-style: stem Conv+ReLU+MaxPool, four parallel branches on the stem's output
    (1x1; 1x1 -> 3x3; 5x5; MaxPool 3x3/1 pad 1 -> 1x1), Concat, Tanh, AveragePool, a 3x3
    conv, GlobalAveragePool + Linear head."""
    import torch
    import torch.nn as nn

    def conv_bn(cin, cout, k):
        return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Inception(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(*conv_bn(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2))   # 16x14x14
            self.b1 = nn.Sequential(*conv_bn(16, 8, 1))                                 # 1x1
            self.b2 = nn.Sequential(*conv_bn(16, 8, 1), nn.ReLU(), *conv_bn(8, 12, 3))  # 1x1 -> 3x3
            self.b3 = nn.Sequential(*conv_bn(16, 4, 5))                                 # 5x5
            self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *conv_bn(16, 8, 1))
            self.act = nn.Tanh()                                                        # 32x14x14
            self.head = nn.Sequential(
                nn.AvgPool2d(2),                                                        # 32x7x7
                *conv_bn(32, 32, 3), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

        def logits(self, x):
            s = self.stem(x)
            return self.head(self.act(torch.cat([self.b1(s), self.b2(s), self.b3(s), self.b4(s)], 1)))

        def forward(self, x):
            return self.logits(x).softmax(dim=1)

    return Inception()


MODELS = {
    "mobilenet": dict(
        build=build_mobilenet, opset=11, dynamic_batch=False, epochs=4,
        arch="Conv3x3(1->16)+BN+ReLU6 stem at 28x28; three inverted-residual blocks "
             "(1x1 expand Conv+BN+ReLU6, 3x3 depthwise Conv+BN+ReLU6, 1x1 project Conv+BN "
             "with no activation): 16->32->24 stride 2 (14x14), 24->32->24 stride 1 with "
             "residual Add, 24->32->32 stride 2 (7x7); head 1x1 Conv(32->32)+BN+ReLU6; "
             "GlobalAveragePool, Flatten, Gemm(32->10), Softmax. ReLU6 is exported as "
             "Clip(0, 6) with min/max given by Constant nodes (Clip-11 takes them as inputs).",
    ),
    "efficientnet": dict(
        build=build_efficientnet, opset=17, dynamic_batch=True, epochs=4,
        arch="Conv3x3(1->16)+BN+SiLU stem at 28x28; three MBConv blocks (1x1 expand "
             "Conv+BN+SiLU, 3x3 depthwise Conv+BN+SiLU, squeeze-excitation, 1x1 project "
             "Conv+BN): 16->32->24 stride 2 (14x14), 24->32->24 stride 1 with residual Add, "
             "24->32->32 stride 2 (7x7); squeeze-excitation = GlobalAveragePool -> 1x1 "
             "Conv(32->8, bias) -> SiLU -> 1x1 Conv(8->32, bias) -> Sigmoid -> Mul with the "
             "feature map (broadcast (N,32,1,1) over H,W); head 1x1 Conv(32->32)+BN+SiLU; "
             "GlobalAveragePool, Flatten, Gemm(32->10), Softmax. SiLU is exported as "
             "Sigmoid followed by Mul(x, sigmoid(x)).",
    ),
    "gelu_maxpool": dict(
        build=build_gelu_maxpool, opset=13, dynamic_batch=True, epochs=5,
        arch="Conv3x3(1->16)+BN+GELU, MaxPool 2x2/2 (14x14); Conv3x3(16->32)+BN+GELU, "
             "MaxPool 2x2/2 (7x7); Conv3x3(32->16)+BN+GELU; Flatten (784), Gemm(784->24), "
             "GELU, Gemm(24->10), Softmax. GELU (exact, erf form) is exported as "
             "Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5, constants as Constant nodes.",
    ),
    "relu_maxpool": dict(
        build=build_relu_maxpool, opset=9, dynamic_batch=True, epochs=4,
        arch="Conv3x3(1->16)+BN+ReLU, MaxPool 2x2/2 (14x14); Conv3x3(16->32)+BN+ReLU, "
             "MaxPool 3x3/2 pad 1 (7x7); Conv3x3(32->32)+BN+ReLU; GlobalAveragePool, Flatten, "
             "Gemm(32->10), Softmax. Every MaxPool reads a ReLU, so both MaxPool circuits "
             "(--maxpool tree and lipool) apply; opset 9, the oldest the compiler accepts.",
    ),
    "gelu_wide": dict(
        build=build_gelu_wide, opset=18, dynamic_batch=True, epochs=5,
        arch="Conv5x5 pad 2 (1->24)+BN+GELU, MaxPool 2x2/2 (14x14); Conv3x3(24->32)+BN+GELU, "
             "MaxPool 2x2/2 (7x7); Flatten (1568), Gemm(1568->64), GELU, Gemm(64->10), Softmax: "
             "the wide Flatten -> Gemm head after GELU. GELU (exact, erf form) as in gelu_maxpool; "
             "opset 18.",
    ),
    "effnet_se6": dict(
        build=build_effnet_se6, opset=15, dynamic_batch=False, epochs=6,
        arch="Conv3x3/2 (1->12)+BN+SiLU stem (14x14); MBConv 12->72->16 at expand x6 with a "
             "depthwise 5x5 stride 2 (7x7) and squeeze-excitation (GlobalAveragePool -> 1x1 "
             "Conv(72->8, bias) -> SiLU -> 1x1 Conv(8->72, bias) -> Sigmoid -> broadcast Mul); "
             "MBConv 16->96->16 at expand x6, depthwise 3x3 stride 1, squeeze-excitation "
             "(96->8->96), residual Add; head 1x1 Conv(16->48)+BN+SiLU; GlobalAveragePool, "
             "Flatten, Gemm(48->10), Softmax. Two blocks (efficientnet.onnx has three at "
             "expand x2); opset 15, fixed batch 1.",
    ),
    "inception": dict(
        build=build_inception, opset=19, dynamic_batch=True, epochs=6,
        arch="Stem Conv3x3(1->16)+BN+ReLU, MaxPool 2x2/2 (16x14x14); four branches on the "
             "stem's output: 1x1 Conv(16->8)+BN; 1x1 Conv(16->8)+BN+ReLU -> 3x3 Conv(8->12)+BN; "
             "5x5 Conv(16->4)+BN; MaxPool 3x3 stride 1 pad 1 -> 1x1 Conv(16->8)+BN; Concat "
             "(32 channels), Tanh; AveragePool 2x2/2 (7x7); Conv3x3(32->32)+BN+ReLU; "
             "GlobalAveragePool, Flatten, Gemm(32->10), Softmax. Opset 19.",
    ),
}


# ----------------------------------------------------------------------------- checks

def check_fixture(path: str, model, opset: int, dynamic_batch: bool, samples: np.ndarray):
    """onnx.checker, exactly one graph input and output, default domain only, and
    onnxruntime against torch.  Returns the onnx model, op histogram and a session."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    domains = {o.domain for o in m.opset_import}
    if domains - {"", "ai.onnx"} or any(n.domain not in ("", "ai.onnx") for n in m.graph.node):
        raise SystemExit(f"error: {path}: non-default domain used: {sorted(domains)}")
    got_opset = max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    if got_opset != opset:
        raise SystemExit(f"error: {path}: opset {got_opset}, expected {opset}")
    inputs = list(m.graph.input)  # the exporter does not list initializers as inputs
    if len(inputs) != 1 or len(m.graph.output) != 1:
        raise SystemExit(f"error: {path}: expected one input and one output, got "
                         f"{[i.name for i in inputs]} -> {[o.name for o in m.graph.output]}")
    dims = [d.dim_param or d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    want = ["N" if dynamic_batch else 1, 1, 28, 28]
    if inputs[0].name != "input" or dims != want:
        raise SystemExit(f"error: {path}: unexpected graph input {inputs[0].name} {dims}, want {want}")
    ops = collections.Counter(n.op_type for n in m.graph.node)
    if "BatchNormalization" not in ops:
        raise SystemExit(f"error: {path}: BatchNormalization was folded away")

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    diff = 0.0
    for n in ((1, 7, len(samples)) if dynamic_batch else (1,)):  # exercise the symbolic batch
        got = sess.run(None, {"input": samples[:n]})[0]
        if got.shape != (n, 10):
            raise SystemExit(f"error: {path}: output shape {got.shape}, want {(n, 10)}")
        ref = make_example.predict(model, samples[:n])
        diff = max(diff, float(np.abs(got - ref).max()))
    if not dynamic_batch:  # fixed batch 1: compare image by image
        got = run_onnx(sess, samples, dynamic_batch)
        diff = max(diff, float(np.abs(got - make_example.predict(model, samples)).max()))
    if not diff < 1e-4:
        raise SystemExit(f"error: {path}: onnxruntime vs torch mismatch: max abs diff {diff}")
    print(f"{os.path.basename(path)}: onnx check ok; onnxruntime vs torch max abs diff {diff:.2e}")
    return m, ops, sess, diff


def run_onnx(sess, x: np.ndarray, dynamic_batch: bool) -> np.ndarray:
    step = 1000 if dynamic_batch else 1
    return np.concatenate([sess.run(None, {"input": x[i:i + step]})[0]
                           for i in range(0, len(x), step)])


# ----------------------------------------------------------------------------- main

def make_one(name, spec, data, test_x, test_y, args):
    import torch  # noqa: F401  (fails early, with a clear message, when the dev extra is missing)

    make_example.seed_everything(args.seed)
    model = spec["build"]()
    n_params = sum(p.numel() for p in model.parameters())
    epochs = args.epochs if args.epochs is not None else spec["epochs"]
    print(f"\n== {name}: {n_params} parameters; training {epochs} epochs on {args.threads} thread(s)")
    t0 = time.time()
    make_example.train(model, data["train_x"], data["train_y"], epochs, args.batch, args.lr, args.seed)
    train_s = time.time() - t0
    print(f"training time: {train_s:.1f}s")
    model.eval()

    path = os.path.join(args.out, f"{name}.onnx")
    make_example.export_onnx(model, path, opset_version=spec["opset"], dynamic_batch=spec["dynamic_batch"])
    m, ops, sess, diff = check_fixture(path, model, spec["opset"], spec["dynamic_batch"], test_x[:64])

    probs_full = run_onnx(sess, data["test_x"], spec["dynamic_batch"])
    acc_full = float((probs_full.argmax(1) == data["test_y"]).mean())
    acc_torch = float((make_example.predict(model, data["test_x"]).argmax(1) == data["test_y"]).mean())
    probs_sub = run_onnx(sess, test_x, spec["dynamic_batch"])
    acc_sub = float((probs_sub.argmax(1) == test_y).mean())
    if acc_full != acc_torch:
        print(f"warning: onnxruntime accuracy {acc_full} != torch accuracy {acc_torch}")
    print(f"test accuracy (onnxruntime): full 10k {acc_full:.4f} (torch {acc_torch:.4f}); "
          f"shipped {len(test_x)}: {acc_sub:.4f}")
    print("op counts: " + ", ".join(f"{op} {c}" for op, c in sorted(ops.items())))
    return dict(name=name, params=n_params, epochs=epochs, opset=spec["opset"],
                dynamic_batch=spec["dynamic_batch"], ops=dict(sorted(ops.items())),
                acc_full=acc_full, acc_torch=acc_torch, acc_sub=acc_sub, n_sub=len(test_x),
                max_diff=diff, train_s=round(train_s, 1), size=os.path.getsize(path),
                arch=spec["arch"])


RESULTS_TAG = "<!-- make_fixtures results: "


def read_results(out_dir):
    path = os.path.join(out_dir, "README.md")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        for line in f:
            if line.startswith(RESULTS_TAG):
                return json.loads(line[len(RESULTS_TAG):].rsplit(" -->", 1)[0])
    return []


def write_readme(out_dir, results, args):
    parts = ["""# Fixture models (Fashion-MNIST)

Seven small CNNs trained on the Fashion-MNIST training split, exported to ONNX with the
TorchScript exporter (`torch.onnx.export(..., dynamo=False)`, torch 2.13,
`training=TrainingMode.PRESERVE`, no constant folding), to exercise the compiler on op
patterns the example model (`examples/fmnist_resnet`) does not have: ReLU6 as `Clip`,
depthwise convolutions (3x3 and 5x5, stride 1 and 2), squeeze-excitation (`Sigmoid` gate,
broadcast `Mul`) at expand x2 and x6, SiLU, GELU (`Erf`), `MaxPool` after GELU and after
ReLU (padded too, and 3x3 stride 1 in an Inception branch), a wide Flatten -> Gemm head
(1568 -> 64) after GELU, parallel branches joined by `Concat` followed by `Tanh`, fixed
batch vs symbolic batch, opsets 9 / 11 / 13 / 15 / 17 / 18 / 19. The first four
(`mobilenet`, `efficientnet`, `gelu_maxpool`, `relu_maxpool`) are the ones the compiler
was developed against; the last three (`gelu_wide`, `effnet_se6`, `inception`) were added
later as held-out architectures of new shape, not tuned on.

All models take `input`: float32 `(N, 1, 28, 28)` (pixel / 255 in `[0, 1]`, no mean/std
normalization; `N` is fixed to 1 in `mobilenet.onnx` and `effnet_se6.onnx`) and produce
`probs`: float32 `(N, 10)` softmax probabilities. Each graph has exactly this one input
(initializers are not listed as graph inputs). They keep their `BatchNormalization` nodes
(not folded into the convolutions) and use only the default ONNX domain. Any Identity
nodes that the exporter inserts for parameters with equal values are replaced by
separate initializers (as for the example model); `Constant` nodes (Clip bounds, GELU
constants) are left as exported.

Data: the fixtures share the example's files, which are held out from training for these
models too:
`examples/fmnist_resnet/calib.npy` (512 training images, for calibration) and
`examples/fmnist_resnet/test_x.npy` / `test_y.npy` (the first 500 images of the official
test set), and the larger held-out set `examples/fmnist_test2000.npz`: the first 2000
images of the official test set (`x`: uint8 `(2000, 1, 28, 28)`, raw pixels; `y`: uint8
labels), written by this script; `x / 255` as float32 equals `test_x.npy` on the first
500 (`make_fixtures.load_heldout` reads it that way). Accuracies below are float
accuracies of the ONNX models under onnxruntime.

| model | params | opset | batch | test acc (500 shipped) | test acc (2000 held out) | test acc (10k) | size |
|-------|--------|-------|-------|------------------------|--------------------------|----------------|------|
"""]
    for r in results:
        batch = "symbolic `N`" if r["dynamic_batch"] else "fixed 1"
        parts.append(f"| `{r['name']}.onnx` | {r['params']} | {r['opset']} | {batch} | "
                     f"{r['acc_sub'] * 100:.2f}% | {r['acc_heldout'] * 100:.2f}% | {r['acc_full'] * 100:.2f}% | "
                     f"{r['size'] / 1024:.1f} KiB |\n")
    for r in results:
        shape = "(N, 1, 28, 28) -> (N, 10), batch axis symbolic `N`" if r["dynamic_batch"] \
            else "(1, 1, 28, 28) -> (1, 10), fixed batch of 1 (run images one at a time)"
        op_lines = "\n".join(f"| {op} | {c} |" for op, c in r["ops"].items())
        parts.append(f"""
## `{r['name']}.onnx`

- architecture: {r['arch']}
- parameters: {r['params']}; opset {r['opset']}; {shape}
- trained {r['epochs']} epochs (Adam, one-cycle, peak lr {args.lr}, batch {args.batch}, seed {args.seed})
- float accuracy (onnxruntime): **{r['acc_sub'] * 100:.2f}%** on the {r['n_sub']} shipped test images,
  **{r['acc_heldout'] * 100:.2f}%** on the {r['n_heldout']} held-out images,
  **{r['acc_full'] * 100:.2f}%** on the full 10,000-image test set (torch: {r['acc_torch'] * 100:.2f}%;
  max abs difference of the probabilities onnxruntime vs torch {r['max_diff']:.1e})

| op | nodes |
|----|-------|
{op_lines}
""")
    parts.append(f"""
## Regenerate

Needs PyTorch in a separate environment, and `apt-get install -y dataset-fashion-mnist`
for the data. Training is seeded and deterministic on CPU; all {len(results)} models take about
{sum(r['train_s'] for r in results) / 60:.0f} minutes on 1 thread:

```
python3 -m venv /tmp/torchenv
/tmp/torchenv/bin/pip install torch==2.13.0 "numpy<2" onnx onnxruntime
/tmp/torchenv/bin/python scripts/make_fixtures.py --out examples/fixtures
```

`--only NAME` (re)makes one model ({', '.join(MODELS)}) and updates its entry here;
`--epochs N` overrides the per-model number of epochs.
""")
    parts.append(f"\n{RESULTS_TAG}{json.dumps(results)} -->\n")
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("".join(parts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="examples/fixtures", help="output directory")
    ap.add_argument("--only", choices=sorted(MODELS), action="append",
                    help="make only this model (repeatable); the README keeps the others' entries")
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs for every model (default: per model, "
                         + ", ".join(f"{k} {v['epochs']}" for k, v in MODELS.items()) + ")")
    ap.add_argument("--data-dir", default=make_example.DEFAULT_DATA_DIR,
                    help=f"directory with the Fashion-MNIST idx .gz files (default {make_example.DEFAULT_DATA_DIR})")
    ap.add_argument("--shipped-data", default=SHIPPED_DATA,
                    help=f"directory with the shipped test_x.npy / test_y.npy (default {SHIPPED_DATA})")
    ap.add_argument("--heldout", default=HELDOUT,
                    help=f"write the first {HELDOUT_N} test images and labels here (default {HELDOUT})")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (Adam, one-cycle)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    data = make_example.load_fashion_mnist(args.data_dir)  # fail on missing data before importing torch
    test_x = np.load(os.path.join(args.shipped_data, "test_x.npy"))
    test_y = np.load(os.path.join(args.shipped_data, "test_y.npy"))
    n = len(test_x)
    if not (np.array_equal(test_x, data["test_x"][:n]) and np.array_equal(test_y, data["test_y"][:n])):
        sys.exit(f"error: {args.shipped_data}/test_x.npy, test_y.npy are not the first {n} test images")

    write_heldout(args.heldout, data)
    hx, hy = load_heldout(args.heldout)
    assert np.array_equal(hx[:n], test_x) and np.array_equal(hy[:n], test_y)

    import torch

    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    # the README carries the per-model results as JSON (in an HTML comment), so that
    # --only can rebuild it with the other models' entries
    results = {r["name"]: r for r in read_results(args.out)}
    for name in (args.only or MODELS):
        results[name] = make_one(name, MODELS[name], data, test_x, test_y, args)
    ordered = [results[k] for k in MODELS if k in results]
    import onnxruntime as ort
    for r in ordered:  # float accuracy on the held-out set, also for models not remade now
        sess = ort.InferenceSession(os.path.join(args.out, f"{r['name']}.onnx"),
                                    providers=["CPUExecutionProvider"])
        r["acc_heldout"] = float((run_onnx(sess, hx, r["dynamic_batch"]).argmax(1) == hy).mean())
        r["n_heldout"] = len(hx)
    write_readme(args.out, ordered, args)

    print("\nfiles:")
    for r in ordered:
        print(f"  {r['name'] + '.onnx':18s} {r['size']:8d} bytes  params {r['params']:6d}  "
              f"acc 10k {r['acc_full']:.4f}  500 {r['acc_sub']:.4f}  train {r['train_s']:.0f}s")


if __name__ == "__main__":
    main()
