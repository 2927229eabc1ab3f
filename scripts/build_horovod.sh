#!/usr/bin/env bash
# Builds horovod 0.28.1 (a source-only release) against the venv's torch once, and caches the wheel.
# Two fixes make the stock sdist build against torch >= 2.1 and CMake 4 (see ../shared/STACK.md):
# the C++ standard goes from 14 to 17, and CMAKE_POLICY_VERSION_MINIMUM lets the bundled gloo configure.
# Usage: scripts/build_horovod.sh PYTHON WHEEL_CACHE_DIR
set -euo pipefail
py=${1:?python of the venv}
cache=${2:?wheel cache folder}
hvd_version=0.28.1
torch_version=$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')
dest="$cache/horovod-$hvd_version-torch-$torch_version"
if ls "$dest"/horovod-*.whl >/dev/null 2>&1; then
  echo "horovod wheel cached in $dest"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip download --quiet --no-deps --no-binary :all: "horovod==$hvd_version" -d "$work"
tar -xzf "$work/horovod-$hvd_version.tar.gz" -C "$work"
src="$work/horovod-$hvd_version"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
echo "building horovod $hvd_version against torch $torch_version (about 10 minutes on 2 cores)..."
export CMAKE_POLICY_VERSION_MINIMUM=3.5 \
  HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
  HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo \
  MAKEFLAGS="-j$(nproc)"
if [ -n "${HOROVOD_BUILD_GPU:-}" ]; then export HOROVOD_GPU_OPERATIONS=NCCL; fi
mkdir -p "$dest.tmp"
"$py" -m pip wheel --no-deps --no-build-isolation -w "$dest.tmp" "$src"
mv "$dest.tmp" "$dest"
echo "horovod wheel cached in $dest"
