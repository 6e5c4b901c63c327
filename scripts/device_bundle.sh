#!/usr/bin/env bash
# Packs the GPU test and benchmark binaries built here, with the shared libraries they need that a
# bare CUDA machine lacks (OpenBLAS, yaml-cpp, SentencePiece, Open MPI, ...), into
# .device/bundle.tar.xz, for running on a GPU machine that has the CUDA toolkit and driver but not
# our Debian packages. CUDA's own libraries (cuBLAS, NCCL, the runtime) are taken from that
# machine. Unpack there with: tar xf .device/bundle.tar.xz -C DIR; LD_LIBRARY_PATH=DIR/lib.
set -euo pipefail
cd "$(dirname "$0")/.."
# G4_BUNDLE_BENCHES (e.g. "bench_moe bench_gemv") packs only those benchmarks: the device machine takes
# at most 64 MiB of working tree and bundle together.
bins=(build/g4 build/test_gpu "$@")
if [ -n "${G4_BUNDLE_BENCHES+set}" ]; then
  for b in $G4_BUNDLE_BENCHES; do bins+=("build/$b"); done
else
  for b in build/bench_*; do [ -x "$b" ] && bins+=("$b"); done
fi
stage=$(mktemp -d)
mkdir -p "$stage/bin" "$stage/lib" .device
# Every resolved dependency of $1 except the C runtime and CUDA's libraries, into $2.
copy_deps() {
  ldd "$1" | awk '/=> \//{print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      # The C and C++ runtimes there are newer than ours (and compatible); CUDA's come with its driver.
      libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libstdc++*|libgcc_s*) ;;
      libcuda.so*|libcublas*|libnccl*|libcudart*|libcupti*) ;;
      *) cp -L -n "$lib" "$2/" ;;
    esac
  done
}
for b in "${bins[@]}"; do
  [ -x "$b" ] || { echo "missing $b (build first)"; exit 1; }
  cp "$b" "$stage/bin/"
  strip --strip-debug "$stage/bin/$(basename "$b")"  # the symbols stay: a crash on the GPU machine gives a readable backtrace
  copy_deps "$b" "$stage/lib"
done
# Open MPI's launcher for multi-rank tests on the GPU machine (whose own mpirun is another build): mpirun, its plugins and
# help files in Debian's layout under ompi/ (relocated there by OPAL_PREFIX, see device_run.sh),
# and the libraries they load.
ompi=/usr/lib/x86_64-linux-gnu/openmpi
if [ -x /usr/bin/orterun ] && [ -d "$ompi" ]; then
  o="$stage/ompi"
  mkdir -p "$o/bin" "$o/lib/x86_64-linux-gnu" "$o/share"
  cp -L /usr/bin/orterun "$o/bin/orterun" && ln -s orterun "$o/bin/mpirun"
  [ -x /usr/bin/orted ] && cp -L /usr/bin/orted "$o/bin/orted"
  cp -a "$ompi" "$o/lib/x86_64-linux-gnu/" && rm -rf "$o/lib/x86_64-linux-gnu/openmpi/include"
  # Ranks on one machine talk through shared memory and TCP: the network fabrics' plugins (and their
  # large libraries) stay behind.
  find "$o/lib" \( -name '*ofi*' -o -name '*ucx*' -o -name '*uct*' -o -name '*psm*' -o -name '*openib*' \
    -o -name '*verbs*' -o -name '*usnic*' -o -name '*portals*' -o -name '*java*' -o -name '*oshmem*' \
    -o -name 'libmpi_mpifh*' -o -name 'libmpi_use*' \) -delete
  cp -a /usr/share/openmpi "$o/share/"
  for f in "$o"/bin/orterun "$o"/lib/x86_64-linux-gnu/openmpi/lib/*.so "$o"/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/*.so; do
    copy_deps "$f" "$stage/lib" 2>/dev/null || true
  done
fi
# Written under build/ (ignored, on the same file system) and renamed into place, so that a GPU call
# carrying .device meanwhile takes the previous bundle whole rather than part of this one.
XZ_OPT=-9e tar -C "$stage" -cJf build/.bundle.tar.xz.part bin lib $( [ -d "$stage/ompi" ] && echo ompi )
mv build/.bundle.tar.xz.part .device/bundle.tar.xz
rm -rf "$stage"
ls -la .device/bundle.tar.xz
