#!/usr/bin/env bash
# Wheels that bench/gpu_suite.py needs and the lent GPU machine's image lacks, saved into .whl/
# (git-ignored) so they travel with the working tree (`carry: [".whl"]`, 64 MiB in all).
#
# Why these: that image has torch, transformers (an older 5.x), opencv, pyarrow, pandas, but no
# pycolmap, diffusers, hydra/omegaconf; transformers is pinned to this project's version so the
# image processor classes match. Ray (79 MB) does not fit in the carry limit: the suite's
# triangulation section then uses a spawn process pool (same triangulate_clip, one thread each).
# About 56 MiB in all. Run from the repository root, on a machine where pip reaches the index:
#     bash bench/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d .whl pycolmap==4.2.1 diffusers==0.42.1 transformers==5.24.0 \
  hydra-core==1.3.8 omegaconf==2.3.1 importlib_metadata
# antlr4-python3-runtime 4.9.x (hydra/omegaconf) ships as an sdist only: build its pure wheel
"$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
du -sh .whl
