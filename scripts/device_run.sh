#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root: unpacks .device/bundle.tar.xz (made here by
# scripts/device_bundle.sh), then runs the given command with the bundle's binaries on PATH and
# its libraries on LD_LIBRARY_PATH, e.g.  scripts/device_run.sh test_gpu --gtest_brief=1
set -uo pipefail
root=$(pwd)
bundle=/tmp/g4-bundle
if [ ! -x "$bundle/bin/g4" ]; then
  mkdir -p "$bundle" && tar -C "$bundle" -xJf .device/bundle.tar.xz || exit 1
fi
# The tests read their fixtures and run g4 from here, not from the paths compiled in where they were built.
export G4_TEST_DATA="$root/tests/data"
export G4_BINARY="$bundle/bin/g4"
nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) + "/lib")' 2>/dev/null || true)
# Python (the Hugging Face side of the benchmarks) must not see the bundle's libraries.
export G4_PYTHON_LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:/usr/local/cuda/extras/CUPTI/lib64:${nccl}:${LD_LIBRARY_PATH:-}"
export PATH="$bundle/bin:$PATH"
export NCCL_NVLS_ENABLE=0
# The bundle's Open MPI, relocated to where it was unpacked: the ranks load the bundle's libmpi and
# PMIx, which a GPU machine's own mpirun (another Open MPI build) does not speak to.
if [ -x "$bundle/ompi/bin/mpirun" ]; then
  export OPAL_PREFIX="$bundle/ompi" PATH="$bundle/ompi/bin:$PATH"
fi
"$@"
