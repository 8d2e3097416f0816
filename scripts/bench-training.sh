#!/usr/bin/env bash
# Wall time and peak RSS of converting GPT-2-small-sized (12 x 768, vocabulary 30 000) training
# checkpoints written by the training libraries themselves, against the peers users run today:
#   ZeRO-2 (DeepSpeed 0.19.8, bf16, 2 gloo ranks on CPU)  ->  DeepSpeed's zero_to_fp32.py
#   torch DCP (accelerate save_fsdp_model after FSDP2, 2 ranks) -> dcp_to_torch_save + transformers
#                                                                  save_pretrained
#
#   scripts/bench-training.sh WORKDIR
#   PY=/tmp/train-py311/bin/python      a Python with torch, transformers, accelerate 1.15.0 and
#                                       deepspeed 0.19.8 (see fixtures/make_training_fixtures.py)
#   RUNS=3                              best of RUNS, taken in rounds
#   OURS_ZERO='cmd {in} {out}'          our converter, once it reads these formats: {in} is the
#   OURS_DCP='cmd {in} {out}'           checkpoint folder, {out} a fresh output folder
#
# Making the two checkpoints takes about 3 minutes of CPU on 2 cores and ~3 GB of disk/RAM (the
# ZeRO optimizer files hold fp32 master weights plus two Adam moments); they are kept in WORKDIR
# and reused by later runs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:?usage: scripts/bench-training.sh WORKDIR}
py=${PY:-python3}
runs=${RUNS:-3}
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

measure() {  # command...: prints "seconds kB"
  local f; f=$(mktemp)
  /usr/bin/time -f "%e %M" -o "$f" "$@" >/dev/null 2>"$f.err" || { cat "$f.err" >&2; exit 1; }
  cat "$f"; rm -f "$f" "$f.err"
}
best() { awk 'NR == 1 || $1 < m {m = $1; r = $0} END {print r}'; }
ours() {  # template, in, out: runs our converter when its command is given
  local cmd=${1//\{in\}/$2}; cmd=${cmd//\{out\}/$3}
  rm -rf "$3"; measure bash -c "$cmd"
}

gb() { du -sk "$1" | awk '{printf "%.2f", $1/1048576}'; }
cat "$zero"/checkpoint/*/* "$dcp"/checkpoint/pytorch_model_fsdp_0/* >/dev/null  # warm the cache
: >"$work/z.peer"; : >"$work/z.ours"; : >"$work/d.peer"; : >"$work/d.ours"
for _ in $(seq "$runs"); do
  rm -rf "$work/out-z"
  # --safe_serialization refuses a tied model (lm_head.weight shares wte's storage): .bin output
  measure "$py" "$z2f" "$zero/checkpoint" "$work/out-z" >>"$work/z.peer"
  if [ -n "${OURS_ZERO:-}" ]; then ours "$OURS_ZERO" "$zero/checkpoint" "$work/ours-z" >>"$work/z.ours"; fi
  rm -rf "$work/out-d"
  measure "$py" "$here/scripts/bench_training_peer.py" dcp "$dcp/checkpoint/pytorch_model_fsdp_0" \
    "$config" "$work/out-d" >>"$work/d.peer"
  if [ -n "${OURS_DCP:-}" ]; then ours "$OURS_DCP" "$dcp/checkpoint" "$work/ours-d" >>"$work/d.ours"; fi
done
row() {  # label, input, peer file, ours file
  local p o; p=$(best <"$3"); o=$(best <"$4")
  printf "%-22s %6s | %8s %9s | %8s %9s | %s\n" "$1" "$(gb "$2")" \
    "${p% *}" "$(( ${p#* } / 1024 ))" "${o% *}" "$([ -n "$o" ] && echo $(( ${o#* } / 1024 )))" \
    "$([ -n "$o" ] && awk -v a="${p% *}" -v b="${o% *}" 'BEGIN {printf "%.2f", a / b}')"
}
printf "%-22s %6s | %8s %9s | %8s %9s | %s\n" input GB "peer s" "peer MB" "ours s" "ours MB" "peer/ours"
row "ZeRO-2 bf16, 2 ranks" "$zero/checkpoint" "$work/z.peer" "$work/z.ours"
row "DCP (FSDP2), 2 ranks" "$dcp/checkpoint/pytorch_model_fsdp_0" "$work/d.peer" "$work/d.ours"
echo "best of $runs; load average $(cut -d' ' -f1-3 /proc/loadavg); peers: DeepSpeed zero_to_fp32.py" \
  "(pytorch_model.bin), dcp_to_torch_save + transformers save_pretrained (safetensors)"
