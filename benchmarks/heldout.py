"""Write a larger held-out test set for benchmarks/fidelity.py --test DIR.

    python benchmarks/heldout.py --out /tmp/fmnist_heldout [--first 5000 --count 3000]

Reads the Fashion-MNIST test set installed by `apt-get install dataset-fashion-mnist`
(images 5000..7999 by default: disjoint from the 500 shipped ones) and writes
test_x.npy (float32 in [0, 1]) and test_y.npy (int64). Not committed: about 9 MB.
"""

import argparse
import gzip
import os

import numpy as np

DATA = "/usr/share/datasets/fashion-mnist"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-dir", default=DATA)
    ap.add_argument("--first", type=int, default=5000)
    ap.add_argument("--count", type=int, default=3000)
    a = ap.parse_args()
    imgs = os.path.join(a.data_dir, "t10k-images-idx3-ubyte.gz")
    labs = os.path.join(a.data_dir, "t10k-labels-idx1-ubyte.gz")
    if not (os.path.isfile(imgs) and os.path.isfile(labs)):
        raise SystemExit(f"error: {imgs} not found; install it with: apt-get install -y dataset-fashion-mnist")
    with gzip.open(imgs) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(labs) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    sl = slice(a.first, a.first + a.count)
    os.makedirs(a.out, exist_ok=True)
    np.save(os.path.join(a.out, "test_x.npy"), (x[sl] / 255.0).astype(np.float32))
    np.save(os.path.join(a.out, "test_y.npy"), y[sl].astype(np.int64))
    print(f"wrote {a.out}: {len(y[sl])} images")


if __name__ == "__main__":
    main()
