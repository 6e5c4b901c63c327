#!/usr/bin/env bash
# Writes the embedded default's training corpus: the King James Bible (public domain), read from
# Debian's bible-kjv-text package, as plain text with one blank-line-separated document per
# chapter and verse numbers removed. Output: data/kjv.txt (about 4.3 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/kjv.txt
[ -s "$out" ] && exit 0
if ! command -v bible >/dev/null; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bible-kjv bible-kjv-text >/dev/null
fi
mkdir -p data
# "Ge1:1 In the beginning ..." -> verse text; a new chapter starts a new paragraph.
bible -f "Gen1:1-Rev22:21" | awk '
  {
    ref = $1; sub(/:[0-9]+$/, "", ref)
    if (ref != chapter && NR > 1) printf "\n\n"
    else if (NR > 1) printf " "
    chapter = ref
    $1 = ""; sub(/^ /, "")
    printf "%s", $0
  }
  END { printf "\n" }' > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(wc -c < "$out") bytes)"
