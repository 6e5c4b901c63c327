#!/usr/bin/env bash
# Installs the Debian packages g4 builds against. Safe to run repeatedly; skips what is present.
set -euo pipefail
pkgs=(cmake ninja-build g++ ccache pkg-config libopenblas-dev nlohmann-json3-dev libcli11-dev libyaml-cpp-dev
      libgtest-dev libopenmpi-dev openmpi-bin libsentencepiece-dev libcpp-httplib-dev
      libjpeg62-turbo-dev libpng-dev  # image files (io/image.h)
      python3-venv bible-kjv-text bible-kjv
      clang libclang-rt-dev)  # clang + libFuzzer: scripts/fuzz.sh
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
