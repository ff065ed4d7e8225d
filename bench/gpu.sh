#!/usr/bin/env bash
# GPU benchmarks (one command, about 5 minutes on an H100/H200), `small`-shaped models in bf16:
#  1. generation on full 30-s windows at batch 1, 8 and 32, ours vs. transformers' generate() per
#     window (real-time factor = audio-seconds per wall-second);
#  2. training steps on batches of four 30-s clips, per LM mode (cross-attention, LoRA, full).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
PYTHONPATH=. "$PY" bench/generation.py --preset small --seconds 30 --device cuda --dtype bfloat16 --parts ours,steps
# The anchor apart: transformers' generate() hit a device-side assert on an H100 (transformers 5.17),
# which poisons the CUDA context of its process.
PYTHONPATH=. "$PY" bench/generation.py --preset small --seconds 30 --device cuda --dtype bfloat16 --parts anchor \
  --batches 1 || echo "anchor: transformers generate() failed on this GPU"
PYTHONPATH=. "$PY" bench/training.py --preset small --device cuda --steps 12 --batch 4
