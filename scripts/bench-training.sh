#!/usr/bin/env bash
# Wall time and peak RSS of converting GPT-2-small-sized (12 x 768, vocabulary 30 000) training
# checkpoints written by the training libraries themselves to a Hugging Face folder, against the
# floor and the peers users run today:
#   ZeRO-2 (DeepSpeed 0.19.8, bf16, 2 gloo ranks on CPU)  ->  DeepSpeed's zero_to_fp32.py
#   torch DCP (accelerate save_fsdp_model after FSDP2, 2 ranks) -> dcp_to_torch_save + transformers
#                                                                  save_pretrained
# Every output holds the fp32 weights as float32: ours model.safetensors (wte once, lm_head tied),
# zero_to_fp32 pytorch_model.bin (its --safe_serialization refuses the tied model),
# save_pretrained model.safetensors.
#
#   scripts/bench-training.sh WORKDIR
#   PY=/tmp/train-py311/bin/python      a Python with torch, transformers, accelerate 1.15.0 and
#                                       deepspeed 0.19.8 (see fixtures/make_training_fixtures.py)
#   RUNS=5                              rounds measured (after one warm-up round, discarded)
#   OURS_ZERO='cmd {in} {out}'          our converter, instead of target/release/cpm-convert
#   OURS_DCP='cmd {in} {out}'           (built by this script): {in} is the checkpoint folder,
#                                       {out} a fresh output folder
#   FLOOR_HASH='openssl dgst -sha256'   the floor's hasher (default openssl when present: SHA-NI,
#                                       the fastest SHA-256 here; else sha256sum)
#
# The floor of one conversion is one process that reads exactly the input bytes the conversion
# needs (the ranges `cpm-inspect --mapped --json` reports: ZeRO's fp32 partitions, never the Adam
# moments or the bf16 module copy, plus the pickles and zip directories; DCP's chunks and
# .metadata), with pread in 8 MiB blocks (scripts/bench_read_ranges.c), then the SHA-256 of every
# file our conversion wrote. It writes nothing, so it does not pay what ours does for writing
# (and fsyncing) the output.
#
# All measured warm: the page cache holds the inputs (a whole warm-up round runs first and is
# discarded; nothing drops caches), so the figures are CPU and memory-copy costs, not the disk's.
# Each round runs peer, ours, floor for one checkpoint, then the next; each column is the best
# of RUNS rounds, each ratio the median of the per-round ratios (paired within a round, so
# drift on a shared machine hits both sides alike), with the rounds' range below the table.
#
# Making the two checkpoints takes about 3 minutes of CPU on 2 cores and ~3 GB of disk/RAM (the
# ZeRO optimizer files hold fp32 master weights plus two Adam moments); they are kept in WORKDIR
# and reused by later runs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:?usage: scripts/bench-training.sh WORKDIR}
py=${PY:-python3}
runs=${RUNS:-5}
mkdir -p "$work"
work=$(cd "$work" && pwd)
case "$work" in "$here"*) echo "WORKDIR must be outside the repository" >&2; exit 2;; esac
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
"$py" -c "import torch, transformers, accelerate, deepspeed" 2>/dev/null ||
  { echo "$py lacks torch/transformers/accelerate/deepspeed (set PY)" >&2; exit 2; }
export DS_ACCELERATOR=cpu
export PATH="$(dirname "$py"):$PATH"   # ninja, for DeepSpeed's CPU ops

# --- the checkpoints, written by DeepSpeed and accelerate (reused when present)
zero="$work/ckpts/zero2-bf16-w2"
dcp="$work/ckpts/dcp-fsdp2-accelerate"
for c in zero2-bf16-w2 dcp-fsdp2-accelerate; do
  [ -f "$work/ckpts/$c/reference/config.json" ] && continue
  MAKE_TRAINING_SHAPE=gpt2-small "$py" "$here/fixtures/make_training_fixtures.py" \
    --out "$work/ckpts" --cases "$c"
done
config="$zero/reference/config.json"
# DeepSpeed copies this script beside each checkpoint (run from its package folder, the
# neighbouring deepspeed/utils/torch.py would shadow torch); the fixtures drop the copy.
z2f="$work/zero_to_fp32.py"
cp "$("$py" -c "import deepspeed.utils.zero_to_fp32 as z; print(z.__file__)" 2>/dev/null)" "$z2f"

(cd "$here" && cargo build --release -q -p cpm-convert --bins)
conv="$here/target/release/cpm-convert"
ours_zero=${OURS_ZERO:-"$conv {in} -o {out} --heads 12 -q"}
ours_dcp=${OURS_DCP:-"$conv {in} -o {out} --heads 12 -q"}
if [ -z "${FLOOR_HASH:-}" ]; then
  if command -v openssl >/dev/null; then FLOOR_HASH="openssl dgst -sha256"; else FLOOR_HASH=sha256sum; fi
fi
reader="$work/read-ranges"
gcc -O2 "$here/scripts/bench_read_ranges.c" -o "$reader"

# What each conversion reads, and its largest output tensor (bytes).
for k in z d; do
  in=$zero/checkpoint; [ $k = d ] && in=$dcp/checkpoint
  "$here/target/release/cpm-inspect" "$in" --mapped --heads 12 --json >"$work/$k.inspect.json" 2>/dev/null
  python3 "$here/scripts/bench_training_ranges.py" "$in" "$work/$k.inspect.json" \
    >"$work/$k.ranges" 2>"$work/$k.sizes"
done

measure() {  # command...: prints "seconds kB"
  local f; f=$(mktemp)
  /usr/bin/time -f "%e %M" -o "$f" "$@" >/dev/null 2>"$f.err" || { cat "$f.err" >&2; exit 1; }
  cat "$f"; rm -f "$f" "$f.err"
}
ours() {  # template, in, out: our conversion
  local cmd=${1//\{in\}/$2}; cmd=${cmd//\{out\}/$3}
  rm -rf "$3"; measure bash -c "$cmd"
}
floor() {  # ranges, output folder: read the ranges, then hash every output file
  measure bash -c "\"\$1\" \"\$2\" && $FLOOR_HASH \"\$3\"/*" floor "$reader" "$1" "$2"
}
round() {  # k, peer command..., then ours' template and input as $OURS/$IN: appends to $work/k.*
  local k=$1; shift
  rm -rf "$work/out-$k"
  measure "$@" >>"$work/$k.peer"
  ours "$OURS" "$IN" "$work/ours-$k" >>"$work/$k.ours"
  floor "$work/$k.ranges" "$work/ours-$k" >>"$work/$k.floor"
  rm -rf "$work/out-$k"
}

load=()
for r in $(seq 0 "$runs"); do
  [ "$r" = 1 ] && for f in z d; do : >"$work/$f.peer"; : >"$work/$f.ours"; : >"$work/$f.floor"; done
  load+=("$(cut -d' ' -f1 /proc/loadavg)")
  # --safe_serialization refuses a tied model (lm_head.weight shares wte's storage): .bin output
  OURS=$ours_zero IN=$zero/checkpoint round z "$py" "$z2f" "$zero/checkpoint" "$work/out-z"
  OURS=$ours_dcp IN=$dcp/checkpoint round d "$py" "$here/scripts/bench_training_peer.py" dcp \
    "$dcp/checkpoint/pytorch_model_fsdp_0" "$config" "$work/out-d"
  if [ "$r" = 0 ]; then  # the warm-up round: check our outputs once
    (cd "$work/ours-z" && sha256sum -c --quiet SHA256SUMS)
    (cd "$work/ours-d" && sha256sum -c --quiet SHA256SUMS)
  fi
done

gb() { du -sk "$1" | awk '{printf "%.2f", $1/1048576}'; }
best() { awk 'NR == 1 || $1 < m {m = $1; r = $0} END {print r}' "$1"; }
ratios() {  # a file, b file: per-round a/b, sorted
  paste -d' ' "$1" "$2" | awk '{printf "%.2f\n", $1 / $3}' | sort -n
}
median() { awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
range() { awk 'NR == 1 {a = $1} {b = $1} END {printf "%s-%s", a, b}'; }
row() {  # label, input, k
  local k=$3 f o p lt mib
  f=$(best "$work/$k.floor"); o=$(best "$work/$k.ours"); p=$(best "$work/$k.peer")
  read -r _ lt <"$work/$k.sizes"
  mib=$(awk -v b="$lt" 'BEGIN {printf "%.1f", b / 1048576}')
  printf "%-22s %5s | %6s %5s | %6s %5s | %6s %5s | %10s %9s %10s | %7s %7s\n" "$1" "$(gb "$2")" \
    "${f% *}" "$(( ${f#* } / 1024 ))" "${o% *}" "$(( ${o#* } / 1024 ))" \
    "${p% *}" "$(( ${p#* } / 1024 ))" \
    "$(ratios "$work/$k.ours" "$work/$k.floor" | median)" \
    "$(ratios "$work/$k.peer" "$work/$k.ours" | median)" \
    "$(ratios "$work/$k.peer" "$work/$k.floor" | median)" \
    "$mib" "$(awk -v m="$mib" 'BEGIN {printf "%.1f", 2.5 * m + 64}')"
}
rounds() {  # label, k
  printf "  %s rounds: ours/floor %s, peer/ours %s, peer/floor %s; floor reads %s MB\n" "$1" \
    "$(ratios "$work/$2.ours" "$work/$2.floor" | range)" \
    "$(ratios "$work/$2.peer" "$work/$2.ours" | range)" \
    "$(ratios "$work/$2.peer" "$work/$2.floor" | range)" \
    "$(awk '{printf "%.0f", $1 / 1e6}' "$work/$2.sizes")"
}
printf "%-22s %5s | %6s %5s | %6s %5s | %6s %5s | %10s %9s %10s | %7s %7s\n" input GB \
  "floor" "MiB" "ours" "MiB" "peer" "MiB" "ours/floor" "peer/ours" "peer/floor" "largest" "bound"
row "ZeRO-2 bf16, 2 ranks" "$zero/checkpoint" z
row "DCP (FSDP2), 2 ranks" "$dcp/checkpoint/pytorch_model_fsdp_0" d
rounds ZeRO z
rounds DCP d
echo "seconds (best of $runs rounds after a warm-up round, warm page cache) and peak RSS in MiB;" \
  "ratios the median of the per-round ratios; largest output tensor and the RSS bound" \
  "(2.5 x largest + 64) in MiB"
echo "floor: read-ranges + $FLOOR_HASH; peers: DeepSpeed zero_to_fp32.py (pytorch_model.bin)," \
  "dcp_to_torch_save + transformers save_pretrained (safetensors); $(nproc) cores, load average" \
  "at each round's start: ${load[*]}"
rm -rf "$work/ours-z" "$work/ours-d"
