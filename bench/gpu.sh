#!/usr/bin/env bash
# GPU benchmarks (one command, about 5 minutes on an H100/H200), `small`-shaped models in bf16:
#  1. generation on full 30-s windows at batch 1, 8 and 32, ours vs. transformers' generate() per
#     window (real-time factor = audio-seconds per wall-second);
#  2. training steps on batches of four 30-s clips, per LM mode (cross-attention, LoRA, full).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
PYTHONPATH=. "$PY" bench/generation.py --preset small --seconds 30 --device cuda --dtype bfloat16
PYTHONPATH=. "$PY" bench/training.py --preset small --device cuda --steps 12 --batch 4
