#!/usr/bin/env bash
# Proves the CUDA build compiles (`--features cuda,cudnn`: candle's CUDA backend, its kernels,
# its cuDNN convolutions and this crate's device-generic paths) on a machine with neither a
# GPU nor a CUDA toolkit (cudarc loads libcudnn at run time, so none is needed to build).
# NVIDIA's CUDA 13.0 compiler wheels (nvcc, cicc, the CUDA headers) are fetched from PyPI and
# unpacked, not installed, into a cache folder, so candle-kernels' build script can compile
# its kernels; then clippy checks every target with the feature on. Nothing runs on a GPU.
#
#   tools/ci/cuda_check.sh            # cache: target/cuda-toolkit (or $CUDA_TOOLKIT_CACHE)
#
# Needs python3 with pip (only `pip download` is used) and a C++ compiler (build-essential).
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${CUDA_TOOLKIT_CACHE:-target/cuda-toolkit}
root="$cache/nvidia/cu13"
if [ ! -x "$root/bin/nvcc" ]; then
    mkdir -p "$cache/wheels"
    python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$cache/wheels" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
    python3 - "$cache" <<'PY'
import glob, os, sys, zipfile
cache = sys.argv[1]
for wheel in sorted(glob.glob(os.path.join(cache, "wheels", "*.whl"))):
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.filename.startswith("nvidia/"):
                path = z.extract(info, cache)
                mode = info.external_attr >> 16
                if mode:
                    os.chmod(path, mode & 0o777)
PY
fi
CUDA_HOME=$(cd "$root" && pwd)
export CUDA_HOME CUDA_PATH="$CUDA_HOME" PATH="$CUDA_HOME/bin:$PATH"
# No GPU to ask: compile for Ampere (sm_80) and tell cudarc the toolkit's version.
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80} CUDARC_CUDA_VERSION=13000
nvcc --version | tail -n 1
cargo clippy --features cuda,cudnn --all-targets -- -D warnings
