#!/usr/bin/env bash
# Create .venv (if needed) and install prunelab with every optional extra (prunelab[all]: data sets,
# images, reports, ONNX, Ray, trackers, Hugging Face transformers, test tools), which the README's main
# job and the tests need.
# torch is pinned through constraints.txt so pip takes the CPU wheel instead of a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[all]"
