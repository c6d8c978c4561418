#!/usr/bin/env python3
"""Train and export the shipped example model (a small residual CNN on Fashion-MNIST).

This script is *not* part of the amosc package and needs PyTorch, which the
project itself does not depend on.  Run it from a separate environment, e.g.::

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 "numpy<2" onnx onnxruntime
    /tmp/torchenv/bin/python scripts/make_example.py --out examples/fmnist_resnet

Data: Fashion-MNIST idx .gz files (``apt-get install -y dataset-fashion-mnist``
puts them under /usr/share/datasets/fashion-mnist).

Outputs (in --out):
    model.onnx   float32 model, input "input" of shape (N, 1, 28, 28), pixels in [0, 1],
                 output "probs" of shape (N, 10) (softmax probabilities)
    calib.npy    float32 (n_calib, 1, 28, 28) training images for calibration
    test_x.npy   float32 (n_test, 1, 28, 28) test images (the first n_test of the test set)
    test_y.npy   int64   (n_test,) labels of test_x
    README.md    description, accuracies, how to regenerate
"""

from __future__ import annotations

import argparse
import collections
import gzip
import os
import random
import sys
import time
import warnings

import numpy as np

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
ALLOWED_OPS = {
    "Conv", "BatchNormalization", "Relu", "Add", "AveragePool",
    "GlobalAveragePool", "Flatten", "Gemm", "Softmax",
}
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


# ----------------------------------------------------------------------------- data

def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{path}: unsupported idx magic {magic:#x}")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(dims)


def load_fashion_mnist(data_dir: str):
    missing = [n for n in FILES.values() if not os.path.isfile(os.path.join(data_dir, n))]
    if missing:
        sys.exit(
            f"error: Fashion-MNIST files not found in {data_dir!r}: {', '.join(missing)}\n"
            "Install them with:  apt-get install -y dataset-fashion-mnist\n"
            "or point --data-dir at a directory holding the four idx .gz files."
        )
    out = {k: _read_idx(os.path.join(data_dir, n)) for k, n in FILES.items()}
    # images -> float32 (N, 1, 28, 28) in [0, 1]; labels -> int64
    for k in ("train_x", "test_x"):
        out[k] = (out[k].astype(np.float32) / np.float32(255.0))[:, None, :, :]
    for k in ("train_y", "test_y"):
        out[k] = out[k].astype(np.int64)
    assert out["train_x"].shape == (60000, 1, 28, 28) and out["test_x"].shape == (10000, 1, 28, 28)
    return out


# ----------------------------------------------------------------------------- model

def build_model():
    import torch.nn as nn

    def conv_bn(cin, cout, k):
        return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        """conv-bn-relu-conv-bn + shortcut, then ReLU.  Shortcut is identity, or 1x1 conv+BN."""

        def __init__(self, cin, cout):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, 3), nn.ReLU(), *conv_bn(cout, cout, 3))
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1)) if cin != cout else nn.Identity()
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.shortcut(x))

    class FmnistResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(*conv_bn(1, 16, 3), nn.ReLU())  # 16x28x28
            self.block1 = Block(16, 16)                                # 16x28x28
            self.down = nn.AvgPool2d(2)                                # 16x14x14
            self.block2 = Block(16, 32)                                # 32x14x14
            self.gap = nn.AdaptiveAvgPool2d(1)                         # 32x1x1 -> GlobalAveragePool
            self.fc = nn.Linear(32, 10)

        def logits(self, x):
            x = self.block2(self.down(self.block1(self.stem(x))))
            return self.fc(self.gap(x).flatten(1))

        def forward(self, x):  # exported graph ends in Softmax
            return self.logits(x).softmax(dim=1)

    return FmnistResNet()


# ----------------------------------------------------------------------------- helpers

def seed_everything(seed: int):
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def predict(model, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(x[i:i + batch])).numpy())
    return np.concatenate(outs)


def train(model, x, y, epochs, batch, lr, seed, log=print):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps_per_epoch = (len(x) + batch - 1) // batch
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1, div_factor=10)
    for ep in range(epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(x), generator=g)
        tot_loss, tot_ok = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * batch:(s + 1) * batch]
            xb, yb = xt[idx], yt[idx]  # no augmentation: this small model underfits
            logits = model.logits(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(idx)
            tot_ok += (logits.argmax(1) == yb).sum().item()
        log(f"epoch {ep + 1}/{epochs}: loss {tot_loss / len(x):.4f} "
            f"train-acc {tot_ok / len(x):.4f} ({time.time() - t0:.1f}s)")


def export_onnx(model, path: str, opset_version: int = 13, dynamic_batch: bool = True):
    """Export with the TorchScript exporter, BatchNormalization kept.  The defaults are
    what this script uses; scripts/make_fixtures.py passes other opsets / a fixed batch
    of 1 (``dynamic_batch=False``)."""
    import torch

    model.eval()
    dummy = torch.zeros(1, 1, 28, 28, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            model,
            (dummy,),
            path,
            export_params=True,
            opset_version=opset_version,
            do_constant_folding=False,
            # PRESERVE (with the model in eval mode) keeps BatchNormalization nodes
            # visible instead of letting the exporter fold them into the Convs.
            training=torch.onnx.TrainingMode.PRESERVE,
            input_names=["input"],
            output_names=["probs"],
            dynamic_axes={"input": {0: "N"}, "probs": {0: "N"}} if dynamic_batch else None,
            dynamo=False,
        )
    for w in caught:
        print(f"exporter warning: {w.category.__name__}: {w.message}")
    _undo_initializer_dedup(path)


def _undo_initializer_dedup(path: str):
    """The exporter replaces parameters with identical values (e.g. BN running stats that
    happen to coincide) by ``Identity`` nodes reading one shared initializer.  Turn those
    back into separate initializers so the graph only holds the ops listed in ALLOWED_OPS."""
    import onnx

    m = onnx.load(path)
    inits = {t.name: t for t in m.graph.initializer}
    keep, n_removed = [], 0
    for node in m.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            m.graph.initializer.append(t)
            n_removed += 1
        else:
            keep.append(node)
    if n_removed:
        del m.graph.node[:]
        m.graph.node.extend(keep)
        onnx.save(m, path)
        print(f"replaced {n_removed} Identity nodes (deduplicated initializers) by initializers")


def check_onnx(path: str, model, samples: np.ndarray):
    import onnx
    import onnxruntime as ort

    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    bad = set(ops) - ALLOWED_OPS
    if bad:
        raise SystemExit(f"error: exported graph uses unexpected ops: {sorted(bad)}")
    inp = m.graph.input[0]
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    if inp.name != "input" or dims != ["N", 1, 28, 28]:
        raise SystemExit(f"error: unexpected graph input {inp.name} {dims}")

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for n in (1, 7, len(samples)):  # several batch sizes exercise the symbolic batch dim
        got = sess.run(None, {"input": samples[:n]})[0]
        ref = predict(model, samples[:n])
        diff = float(np.abs(got - ref).max())
        if not diff < 1e-4:
            raise SystemExit(f"error: onnxruntime vs torch mismatch (batch {n}): max abs diff {diff}")
    print(f"onnx check ok; onnxruntime vs torch max abs diff {diff:.2e}")
    return m, ops, sess


# ----------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="examples/fmnist_resnet", help="output directory")
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                    help=f"directory with the Fashion-MNIST idx .gz files (default {DEFAULT_DATA_DIR})")
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (Adam, one-cycle)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-calib", type=int, default=512, help="training images saved as calib.npy")
    ap.add_argument("--n-test", type=int, default=500, help="test images saved as test_x/test_y.npy")
    args = ap.parse_args(argv)

    data = load_fashion_mnist(args.data_dir)  # fail on missing data before importing torch

    import torch

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    os.makedirs(args.out, exist_ok=True)

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters; training {args.epochs} epochs on {args.threads} threads")
    t0 = time.time()
    train(model, data["train_x"], data["train_y"], args.epochs, args.batch, args.lr, args.seed)
    train_s = time.time() - t0
    print(f"training time: {train_s:.1f}s")
    model.eval()

    # shipped subsets
    rng = np.random.default_rng(args.seed)
    calib_idx = np.sort(rng.choice(len(data["train_x"]), size=args.n_calib, replace=False))
    calib = np.ascontiguousarray(data["train_x"][calib_idx], dtype=np.float32)
    test_x = np.ascontiguousarray(data["test_x"][:args.n_test], dtype=np.float32)
    test_y = np.ascontiguousarray(data["test_y"][:args.n_test], dtype=np.int64)

    model_path = os.path.join(args.out, "model.onnx")
    export_onnx(model, model_path)
    onnx_model, ops, sess = check_onnx(model_path, model, test_x[:64])

    # float accuracies of the exported model (onnxruntime), cross-checked against torch
    probs_full = np.concatenate([sess.run(None, {"input": data["test_x"][i:i + 1000]})[0]
                                 for i in range(0, 10000, 1000)])
    acc_full = float((probs_full.argmax(1) == data["test_y"]).mean())
    acc_torch = float((predict(model, data["test_x"]).argmax(1) == data["test_y"]).mean())
    acc_sub = float((probs_full[:args.n_test].argmax(1) == test_y).mean())
    print(f"test accuracy (onnxruntime): full 10k {acc_full:.4f} (torch {acc_torch:.4f}); "
          f"shipped {args.n_test}: {acc_sub:.4f}")

    np.save(os.path.join(args.out, "calib.npy"), calib)
    np.save(os.path.join(args.out, "test_x.npy"), test_x)
    np.save(os.path.join(args.out, "test_y.npy"), test_y)

    op_lines = "\n".join(f"| {op} | {c} |" for op, c in sorted(ops.items()))
    readme = f"""# Fashion-MNIST residual CNN (example model)

`model.onnx` is a small residual CNN ({n_params} parameters) trained on Fashion-MNIST
(28x28 grayscale, 10 classes), opset 13, float32.

- input `input`: float32 `(N, 1, 28, 28)`, pixel values scaled to `[0, 1]` (no mean/std
  normalization; the model expects raw `pixel / 255`)
- output `probs`: float32 `(N, 10)` softmax probabilities; class order {', '.join(CLASSES)}
- architecture: Conv3x3(1->16)+BN+ReLU; residual block at 16 ch (conv-bn-relu-conv-bn +
  identity, ReLU); AveragePool(2); residual block 16->32 ch with 1x1 conv+BN shortcut;
  GlobalAveragePool, Flatten, Gemm(32->10), Softmax. BatchNormalization nodes are kept
  (not folded into the convolutions).

Float test accuracy (onnxruntime): **{acc_full * 100:.2f}%** on the full 10,000-image test set,
**{acc_sub * 100:.2f}%** on the {args.n_test} shipped test images.

| op | nodes |
|----|-------|
{op_lines}

Files:

- `calib.npy`: float32 `{calib.shape}`, {args.n_calib} training images (seeded random choice),
  for calibration
- `test_x.npy`: float32 `{test_x.shape}`, the first {args.n_test} images of the test set
- `test_y.npy`: int64 `{test_y.shape}`, their labels

Regenerate (needs PyTorch in a separate environment, and
`apt-get install -y dataset-fashion-mnist` for the data); training is seeded and takes
a few minutes on 2 CPU cores:

```
python3 -m venv /tmp/torchenv
/tmp/torchenv/bin/pip install torch==2.13.0 "numpy<2" onnx onnxruntime
/tmp/torchenv/bin/python scripts/make_example.py --out examples/fmnist_resnet
```
"""
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(readme)

    print("op counts:")
    for op, c in sorted(ops.items()):
        print(f"  {op:20s} {c}")
    total = 0
    print("files:")
    for name in ("model.onnx", "calib.npy", "test_x.npy", "test_y.npy", "README.md"):
        size = os.path.getsize(os.path.join(args.out, name))
        total += size
        print(f"  {name:12s} {size:9d} bytes")
    print(f"  total        {total:9d} bytes")


if __name__ == "__main__":
    main()
