#!/usr/bin/env bash
# Set up, then compile the shipped example CNN and validate it against onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
EX=examples/fmnist_resnet
mkdir -p out
.venv/bin/amosc compile "$EX/model.onnx" --calib "$EX/calib.npy" -o out/fmnist_resnet.amos --bits 8
.venv/bin/amosc inspect out/fmnist_resnet.amos | tail -n 1
.venv/bin/amosc validate out/fmnist_resnet.amos --onnx "$EX/model.onnx" \
    --input "$EX/test_x.npy" --labels "$EX/test_y.npy"
