#!/usr/bin/env bash
# Wall time and peak RSS of cp -r (the floor), cpm-convert, and the plain PyTorch path, on
# synthetic checkpoints shaped like CPM-LM Large, at several depths, warm page cache.
#
#   scripts/bench-convert.sh WORKDIR [LAYERS ...]      (default: 8 16 32)
#
# WORKDIR must be outside the repository; the 32-layer run needs about 25 GB free there.
# The PyTorch path (needs torch + safetensors) runs only where it fits in memory: it needs
# about 3.8x the checkpoint in RAM, so by default only up to 16 layers (TORCH_MAX_LAYERS).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:?usage: scripts/bench-convert.sh WORKDIR [LAYERS ...]}
shift
depths=${*:-8 16 32}
torch_max=${TORCH_MAX_LAYERS:-16}
mkdir -p "$work"
work=$(cd "$work" && pwd)
case "$work" in "$here"*) echo "WORKDIR must be outside the repository" >&2; exit 2;; esac
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }

max=0; for l in $depths; do [ "$l" -gt "$max" ] && max=$l; done
need_gb=$(( (160 * max + 310) * 4 / 1000 + 1 ))   # input + cp copy + our output + torch output
free_gb=$(df -Pk "$work" | awk 'NR==2 {print int($4/1048576)}')
echo "disk: need about ${need_gb} GB in $work, ${free_gb} GB free"
[ "$free_gb" -ge "$need_gb" ] || { echo "not enough free disk" >&2; exit 2; }

(cd "$here" && cargo build --release -q -p cpm-convert)
conv="$here/target/release/cpm-convert"
have_torch=0
python3 -c "import torch, safetensors" 2>/dev/null && have_torch=1

measure() {  # label, command...: prints "seconds kB"
  local f; f=$(mktemp)
  /usr/bin/time -f "%e %M" -o "$f" "${@:2}" >/dev/null 2>"$f.err" || { cat "$f.err" >&2; exit 1; }
  cat "$f"; rm -f "$f" "$f.err"
}

printf "%-6s %6s | %6s %9s | %7s %6s %9s %8s | %8s %9s %9s\n" layers GB "cp s" "cp+sum s" "ours s" "x cp" "x cp+sum" "ours MB" "torch s" "torch MB" "torch/ours"
for l in $depths; do
  ck="$work/ckpt$l"
  [ -f "$ck/80000/mp_rank_01_model_states.pt" ] || python3 "$here/scripts/make_synthetic_ckpt.py" "$ck" --layers "$l" >/dev/null
  gb=$(du -sk "$ck" | awk '{printf "%.2f", $1/1048576}')
  cat "$ck"/80000/*.pt >/dev/null   # warm the page cache
  rm -rf "$work/cp" "$work/out"
  read -r cp_s _ < <(measure cp cp -r "$ck" "$work/cp")
  # The floor for a copy that also writes SHA256SUMS: cp, then hash what it wrote.
  read -r sum_s _ < <(measure sum sh -c "sha256sum '$work'/cp/80000/*.pt")
  rm -rf "$work/cp"
  cpsum_s=$(awk -v a="$cp_s" -v b="$sum_s" 'BEGIN{printf "%.2f", a+b}')
  read -r our_s our_kb < <(measure ours "$conv" "$ck" -o "$work/out" --quiet)
  (cd "$work/out" && sha256sum -c --quiet SHA256SUMS)
  rm -rf "$work/out"
  t_s="-"; t_mb="-"; speed="-"
  if [ "$have_torch" = 1 ] && [ "$l" -le "$torch_max" ]; then
    read -r t_s t_kb < <(measure torch python3 "$here/scripts/torch_convert.py" "$ck/80000" "$work/torch.safetensors")
    rm -f "$work/torch.safetensors"
    t_mb=$((t_kb / 1024)); speed=$(awk -v a="$t_s" -v b="$our_s" 'BEGIN{printf "%.1f", a/b}')
  fi
  ratio=$(awk -v a="$our_s" -v b="$cp_s" 'BEGIN{printf "%.2f", a/b}')
  ratio2=$(awk -v a="$our_s" -v b="$cpsum_s" 'BEGIN{printf "%.2f", a/b}')
  printf "%-6s %6s | %6s %9s | %7s %6s %9s %8s | %8s %9s %9s\n" "$l" "$gb" "$cp_s" "$cpsum_s" "$our_s" "$ratio" "$ratio2" "$((our_kb / 1024))" "$t_s" "$t_mb" "$speed"
done
