#!/usr/bin/env bash
# The demo: makes a small sample catalog with ffmpeg (lavfi, so nothing is downloaded), then scores it
# with the catalog flow and the tiny preset on the embedded defaults. Results land under $GVMGEN_HOME/demo/scored.
set -euo pipefail
cd "$(dirname "$0")/.."
export GVMGEN_HOME=${GVMGEN_HOME:-$PWD/.gvmgen}
catalog="$GVMGEN_HOME/demo/catalog"
scored="$GVMGEN_HOME/demo/scored"
mkdir -p "$catalog" "$scored"

make_clip() {  # name, duration, then lavfi sources: one shot each, joined by hard cuts
  local name=$1 secs=$2; shift 2
  [ -f "$catalog/$name.mp4" ] && return
  local inputs=() filters="" n=0
  for src in "$@"; do inputs+=(-f lavfi -t "$secs" -i "$src"); filters+="[$n:v]"; n=$((n + 1)); done
  ffmpeg -v error -y "${inputs[@]}" -filter_complex "${filters}concat=n=$n:v=1:a=0,format=yuv420p[v]" \
    -map "[v]" -c:v libx264 -preset veryfast -r 25 "$catalog/.$name.mp4" && mv "$catalog/.$name.mp4" "$catalog/$name.mp4"
}
make_clip city-lights 4 "testsrc2=s=640x360:r=25" "mandelbrot=s=640x360:r=25" "life=s=640x360:r=25:mold=10"
make_clip ocean 6 "gradients=s=640x360:r=25:speed=0.02" "cellauto=s=640x360:r=25:rule=110"
make_clip long-take 40 "testsrc=s=640x360:r=25"

# The catalog flow (Prefect, no server) on the embedded defaults: the folder above, SQLite under GVMGEN_HOME.
.venv/bin/gvmgen score "$catalog" --out "$scored" --model tiny --seed 0
echo
echo "Scored videos, their music tracks (.flac) and reports (.report.png) are in $scored"
echo "Run metadata is in $GVMGEN_HOME/gvmgen.db; run 'make demo' again and nothing is scored twice."
echo "(tiny preset: untrained weights, so the music is noise; see README, 'Models and real weights'.)"
