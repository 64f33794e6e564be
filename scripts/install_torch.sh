#!/usr/bin/env bash
# Install torch==$TORCH_VERSION into the environment of the given pip, never pulling CUDA wheels on a
# machine without an NVIDIA GPU: on CPU-only machines the +cpu build (a local wheel when pip's
# find-links has one, else PyTorch's CPU index); with a GPU, the default (CUDA) build.
set -euo pipefail
PIP=${1:?usage: install_torch.sh PIP}
PY=$(dirname "$PIP")/python
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

if "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "torch $TORCH_VERSION already installed"
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$PIP" install "torch==$TORCH_VERSION"
else
  "$PIP" install "torch==$TORCH_VERSION+cpu" 2>/dev/null \
    || "$PIP" install "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX"
fi
