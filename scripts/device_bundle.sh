#!/usr/bin/env bash
# Packs the GPU test and benchmark binaries built here, with the shared libraries they need that a
# bare CUDA machine lacks (OpenBLAS, yaml-cpp, SentencePiece, Open MPI, ...), into
# .device/bundle.tar.xz, for running on a GPU machine that has the CUDA toolkit and driver but not
# our Debian packages. CUDA's own libraries (cuBLAS, NCCL, the runtime) are taken from that
# machine. Unpack there with: tar xf .device/bundle.tar.xz -C DIR; LD_LIBRARY_PATH=DIR/lib.
set -euo pipefail
cd "$(dirname "$0")/.."
bins=(build/g4 build/test_gpu "$@")
for b in build/bench_*; do [ -x "$b" ] && bins+=("$b"); done
stage=$(mktemp -d)
mkdir -p "$stage/bin" "$stage/lib" .device
for b in "${bins[@]}"; do
  [ -x "$b" ] || { echo "missing $b (build first)"; exit 1; }
  cp "$b" "$stage/bin/"
  strip --strip-debug "$stage/bin/$(basename "$b")"  # the symbols stay: a crash on the GPU machine gives a readable backtrace
  # Every resolved dependency except the C runtime and CUDA's libraries.
  ldd "$b" | awk '/=> \//{print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      # The C and C++ runtimes there are newer than ours (and compatible); CUDA's come with its driver.
      libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libstdc++*|libgcc_s*) ;;
      libcuda.so*|libcublas*|libnccl*|libcudart*) ;;
      *) cp -L -n "$lib" "$stage/lib/" ;;
    esac
  done
done
# Open MPI loads plugins and help files at run time; single-rank runs on the GPU machine do not
# initialise MPI, so only the libraries travel.
tar -C "$stage" -cJf .device/bundle.tar.xz bin lib
rm -rf "$stage"
ls -la .device/bundle.tar.xz
