#!/usr/bin/env bash
# GPU benchmarks, one command: every figure of the GPU targets, `small`-shaped random weights in bf16,
# full 30-s windows, guidance 3.0, top-k 250, sized to fit a 15-minute lease of one H100/H200 (run it
# with a 10-minute limit: on an H100 the tests take 0.5 minute, the catalog 1.5 to 4, generation 4 and the
# anchor 2, last, so a stalled catalog costs the anchor), the figures that matter most first:
#  1. the CUDA tests: graph replays sample the eager step's tokens, a step never waits for the host;
#  2. the whole catalog (bench/catalog.py): $VIDEOS synthetic videos of 60-120 s through the score-catalog
#     flow: catalog vs. generation-only throughput, the GPU's busy share (NVML with the `gpu` extra,
#     `pip install -e .[gpu]`; else CUDA events), the prepare/compose/finish split; every thread's stack
#     each minute while it runs (in the lease of 2026-11-27 no task of it ended in 3 minutes), with
#     native frames and the GIL's holder where py-spy is on PATH (the `gpu` extra), stopped after
#     CATALOG_S seconds (default 240) so that the steps after it still run;
#  3. generation: the static-shape decoder replayed as CUDA graphs and the same step run eagerly, at
#     batch 1 and 32 (audio-s per wall-s, ms a step, graph capture time per bucket), the graphs again
#     with the span-masked fused self-attention instead of the split one (the decoder before it), the step
#     time at token 100 vs. 1400, the kernels of a late step at batch 32 by device time (and
#     how many kernels a step runs), and that step's self-attention alone per kernel that could run it,
#     with the GB/s each reads the cache at (where batch 32's time goes);
#  4. the anchor, transformers' generate() once per window, called right (explicit attention mask,
#     encoder-decoder cache): about 2 minutes on an H100 (ANCHOR=0 leaves it out);
#  5. with ANCHOR_DEFAULT=1, the anchor called as this bench called it before, with transformers'
#     defaults, in a process of its own (it hit a device-side assert on an H100, which poisons the process);
#  6. with TRAINING=1, training steps on batches of four 30-s clips, per LM mode.
# The target figures are summed up at the end. BATCHES (default 1,32) and VIDEOS (default 8: two batches of
# four) resize it.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
log=$(mktemp)
run() { "$PY" "$@" 2>&1 | tee -a "$log"; }
common=(--preset small --seconds 30 --device cuda --dtype bfloat16 --batches "${BATCHES:-1,32}")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
"$PY" -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'transformers', transformers.__version__)" | tee -a "$log"
"$PY" -m pytest -q -p no:cacheprovider --tb=short tests/model/test_cuda_decoding.py 2>&1 | tail -n 60 | tee -a "$log" \
  || echo "CUDA tests failed (above)" | tee -a "$log"
timeout -k 15 "${CATALOG_S:-240}" "$PY" bench/catalog.py --preset small --videos "${VIDEOS:-8}" --min-seconds 60 \
  --max-seconds 120 --batch-videos 4 --stall-dump 60 2>&1 | tee -a "$log" \
  || echo "catalog bench failed or ran past ${CATALOG_S:-240} s" | tee -a "$log"
run bench/generation.py "${common[@]}" --parts eager,graphs,spans,steps,profile,attention \
  || echo "generation: graph and eager paths failed on this GPU" | tee -a "$log"
if [ "${ANCHOR:-1}" = 1 ]; then
  run bench/generation.py "${common[@]}" --parts anchor --anchor-call fixed \
    || echo "anchor: transformers generate() (fixed call) failed on this GPU" | tee -a "$log"
fi
if [ "${ANCHOR_DEFAULT:-0}" = 1 ]; then
  timeout 100 "$PY" bench/generation.py "${common[@]}" --parts anchor --anchor-call default 2>&1 | tail -n 25 \
    | tee -a "$log" || echo "anchor as called before (transformers' defaults): failed (its error above)" | tee -a "$log"
fi
if [ "${TRAINING:-0}" = 1 ]; then
  run bench/training.py --preset small --device cuda --steps 12 --batch 4 || echo "training bench failed"
fi
"$PY" - "$log" <<'SUMMARY'
import math, re, sys
r = {}
for line in open(sys.argv[1]):
    m = re.match(r"RESULT (\w+)=(\S+)", line)
    if m:
        r[m[1]] = float(m[2])
get = lambda k: r.get(k, math.nan)
print("\n== targets (this run) ==")
rows = [
    ("step time, batch 1 (2 rows), graphs [ms]        target <= 3", get("graph_step_ms_b1")),
    ("audio-s/s, batch 1, graphs                      target >= 6", get("graph_audio_s_per_s_b1")),
    ("audio-s/s, batch 32, graphs                     target >= 250", get("graph_audio_s_per_s_b32")),
    ("graphs vs. eager, batch 1                       target >= 4", get("graph_vs_eager_b1")),
    ("graphs vs. eager, batch 32                      target >= 4", get("graph_vs_eager_b32")),
    ("audio-s/s, batch 1, eager", get("eager_audio_s_per_s_b1")),
    ("audio-s/s, batch 32, eager", get("eager_audio_s_per_s_b32")),
    ("audio-s/s, anchor (generate(), fixed call)", get("anchor_fixed_audio_s_per_s_b1")),
    ("graphs vs. anchor, batch 1", get("graph_audio_s_per_s_b1") / get("anchor_fixed_audio_s_per_s_b1")),
    ("graphs, split vs. span-masked self-attention, batch 1", get("split_vs_spans_b1")),
    ("graphs, split vs. span-masked self-attention, batch 32", get("split_vs_spans_b32")),
    ("step time, batch 32, graphs [ms]", get("graph_step_ms_b32")),
    ("graph capture, bucket of batch 1 [s]", get("graph_capture_s_b1")),
    ("graph capture, bucket of batch 32 [s]", get("graph_capture_s_b32")),
    ("catalog GPU busy share after the first compose  target >= 0.85", get("gpu_busy_share")),
    ("catalog vs. generation-only throughput          target >= 0.70", get("catalog_vs_generation_only")),
    ("catalog music-s per wall-s", get("catalog_music_s_per_s")),
    ("catalog model passes (videos joining as others are done)", get("catalog_model_passes")),
    ("the same with fixed batches of videos in catalog order", get("fixed_batch_passes")),
]
rows += [(f"{k.replace('_', ' ')} (late eager step)", v) for k, v in r.items()
         if k.startswith(("operators_per", "kernels_per"))]
rows += [(f"{k.replace('_', ' ')} (one layer, token 1400)", v) for k, v in r.items() if k.startswith("attention_us")]
for name, value in rows:
    print(f"{name:66} {value:10.3f}")
SUMMARY
rm -f "$log"
