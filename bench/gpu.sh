#!/usr/bin/env bash
# GPU benchmark (one command, under 5 minutes on an H100/H200): `small`-shaped generation in bf16 on
# full 30-s windows at batch 1, 8 and 32, ours vs. transformers' generate() per window. Real-time
# factor = audio-seconds per wall-second, printed per line.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
PYTHONPATH=. "$PY" bench/generation.py --preset small --seconds 30 --device cuda --dtype bfloat16
