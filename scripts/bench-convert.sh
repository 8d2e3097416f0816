#!/usr/bin/env bash
# Wall time and peak RSS of the floor (cp -r of the input; openssl's SHA-256 of the output),
# cpm-convert, and the plain PyTorch path, on synthetic checkpoints shaped like CPM-LM Large, at
# several depths, warm page cache.
#
#   scripts/bench-convert.sh WORKDIR [LAYERS ...]      (default: 8 16 32)
#   RUNS=3 TORCH_RUNS=3 TORCH_MAX_LAYERS=16            (environment, defaults shown)
#
# WORKDIR must be outside the repository; the 32-layer run needs about 16 GB free there (the
# checkpoint, then one output at a time).
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
need_gb=$(( (160 * max + 310) * 3 / 1000 + 1 ))   # input + one copy (cp's, ours or torch's) at a time
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

# Each figure is the best of $RUNS runs (default 3), taken in rounds (cp, ours, openssl, ...) so
# drift on a shared machine hits every column alike. The floor is the larger of `cp -r` of the
# input and `openssl dgst -sha256` of our model.safetensors (one core's SHA-256, warm cache).
# `cp sync` is what making the copy durable (`sync FILE...`, i.e. fsync) costs cp on top;
# cpm-convert's own figure already includes its fsync.
runs=${RUNS:-3}
torch_runs=${TORCH_RUNS:-$runs}
best() { awk 'NR == 1 || $1 < m {m = $1; r = $0} END {print r}'; }
printf "%-6s %6s | %6s %7s %8s %7s | %7s %8s %8s | %8s %9s %9s | %s\n" layers GB "cp s" "cp sync" "openssl" "floor" \
  "ours s" "x floor" "ours MB" "torch s" "torch MB" "torch/ours" "load avg"
for l in $depths; do
  ck="$work/ckpt$l"
  [ -f "$ck/80000/mp_rank_01_model_states.pt" ] || python3 "$here/scripts/make_synthetic_ckpt.py" "$ck" --layers "$l" >/dev/null
  gb=$(du -sk "$ck" | awk '{printf "%.2f", $1/1048576}')
  cat "$ck"/80000/*.pt >/dev/null   # warm the page cache
  load0=$(cut -d' ' -f1 /proc/loadavg)
  rm -rf "$work/cp" "$work/out"
  : >"$work/cp.t"; : >"$work/sync.t"; : >"$work/ours.t"; : >"$work/ossl.t"
  for _ in $(seq "$runs"); do
    measure cp cp -r "$ck" "$work/cp" >>"$work/cp.t"
    measure sync sync "$work"/cp/80000/*.pt >>"$work/sync.t"
    rm -rf "$work/cp"
    measure ours "$conv" "$ck" -o "$work/out" --quiet >>"$work/ours.t"
    (cd "$work/out" && sha256sum -c --quiet SHA256SUMS)
    cat "$work/out/model.safetensors" >/dev/null   # openssl, too, reads from a warm cache
    measure openssl openssl dgst -sha256 "$work/out/model.safetensors" >>"$work/ossl.t"
    rm -rf "$work/out"
  done
  read -r cp_s _ < <(best <"$work/cp.t")
  read -r sync_s _ < <(best <"$work/sync.t")
  read -r our_s our_kb < <(best <"$work/ours.t")
  read -r ossl_s _ < <(best <"$work/ossl.t")
  rm -f "$work"/{cp,sync,ours,ossl}.t
  floor=$(awk -v a="$cp_s" -v b="$ossl_s" 'BEGIN{print (a > b ? a : b)}')
  t_s="-"; t_mb="-"; speed="-"
  if [ "$have_torch" = 1 ] && [ "$l" -le "$torch_max" ]; then
    : >"$work/torch.t"
    for _ in $(seq "$torch_runs"); do
      measure torch python3 "$here/scripts/torch_convert.py" "$ck/80000" "$work/torch.safetensors" >>"$work/torch.t"
      rm -f "$work/torch.safetensors"
    done
    read -r t_s t_kb < <(best <"$work/torch.t"); rm -f "$work/torch.t"
    t_mb=$((t_kb / 1024)); speed=$(awk -v a="$t_s" -v b="$our_s" 'BEGIN{printf "%.1f", a/b}')
  fi
  ratio=$(awk -v a="$our_s" -v b="$floor" 'BEGIN{printf "%.2f", a/b}')
  printf "%-6s %6s | %6s %7s %8s %7s | %7s %8s %8s | %8s %9s %9s | %s\n" "$l" "$gb" "$cp_s" "$sync_s" "$ossl_s" "$floor" \
    "$our_s" "$ratio" "$((our_kb / 1024))" "$t_s" "$t_mb" "$speed" "$load0 -> $(cut -d' ' -f1 /proc/loadavg)"
done
