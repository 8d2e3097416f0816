#!/usr/bin/env bash
# Re-sharding a synthetic CPM-LM Large checkpoint (2 ranks) to 1, 4 and 8 ranks (`--to cpm`) and
# to Megatron tp 2 x pp 2: wall time and peak RSS against `cp -r` of the input and against the
# `hf` conversion of the same input, warm page cache. Each output is deleted after its run, so
# the disk needs about 3x the checkpoint (input, one output, page-cache slack).
#
#   scripts/bench-reshard.sh CKPT_DIR [WORKDIR]     e.g. /tmp/bench/ckpt32 /tmp/bench-reshard
#
# CKPT_DIR: a CPM-layout checkpoint (scripts/make_synthetic_ckpt.py makes one).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ck=${1:?usage: scripts/bench-reshard.sh CKPT_DIR [WORKDIR]}
work=${2:-$(mktemp -d)}
mkdir -p "$work"
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time" >&2; exit 2; }
(cd "$here" && cargo build --release -q -p cpm-convert)
conv="$here/target/release/cpm-convert"

measure() {  # command...: prints "seconds peak-RSS-MB"
  local f; f=$(mktemp)
  /usr/bin/time -f "%e %M" -o "$f" "$@" >/dev/null 2>"$f.err" || { cat "$f.err" >&2; exit 1; }
  awk '{printf "%s %.0f\n", $1, $2/1024}' "$f"; rm -f "$f" "$f.err"
}

gb=$(du -sk "$ck" | awk '{printf "%.2f", $1/1048576}')
echo "input: $ck ($gb GB)"
find "$ck" -name '*.pt' -exec cat {} + >/dev/null   # warm the page cache
run() {  # label, command...
  local label=$1; shift
  rm -rf "$work/out"
  read -r s mb < <(measure "$@")
  local out_gb; out_gb=$(du -sk "$work/out" | awk '{printf "%.2f", $1/1048576}')
  printf "%-22s %8s s %8s MB  output %s GB\n" "$label" "$s" "$mb" "$out_gb"
  rm -rf "$work/out"
}
run "cp -r" cp -r "$ck" "$work/out"
run "--to hf" "$conv" "$ck" -o "$work/out" -q
for tp in 1 4 8; do
  run "--to cpm --tp $tp" "$conv" "$ck" -o "$work/out" -q --to cpm --tp "$tp"
done
run "--to megatron 2x2" "$conv" "$ck" -o "$work/out" -q --to megatron --tp 2 --pp 2
