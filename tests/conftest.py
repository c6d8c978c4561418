import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("AMOSC_PROGRESS", "0")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "fmnist_resnet")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def uniform_inputs(shape, n, seed=0, lo=0.0, hi=1.0):
    return np.random.default_rng(seed).uniform(lo, hi, (n, *shape)).astype(np.float32)


def structured_inputs(shape, n, seed=0):
    """Images with varied content: a random low-resolution pattern, upsampled, plus noise,
    so that a random CNN's argmax differs between inputs."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    low = rng.uniform(-1, 1, (n, c, 3, 3))
    up = np.repeat(np.repeat(low, -(-h // 3), axis=2), -(-w // 3), axis=3)[:, :, :h, :w]
    x = 0.5 + 0.5 * up + 0.1 * rng.normal(size=(n, c, h, w))
    return np.clip(x, 0, 1).astype(np.float32)
