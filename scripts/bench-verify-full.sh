#!/usr/bin/env bash
# cpm-verify on a full-size (CPM-LM Large shaped, 2.6B) converted model, against transformers on
# the same machine and threads: wall time, forward time, peak RSS.
#
#   scripts/bench-verify-full.sh WORKDIR [THREADS]
#
# Makes WORKDIR/ckpt32 (5.2 GB) if missing, records WORKDIR/ref32 from the ORIGINAL rank files
# with fixtures/record.py (torch, rank-by-rank Megatron forward), converts, verifies, then loads
# the converted model in transformers (float32: ~11 GB of RAM) and runs the same tokens.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:?usage: scripts/bench-verify-full.sh WORKDIR [THREADS]}
threads=${2:-2}
mkdir -p "$work"
(cd "$here" && cargo build --release -q -p cpm-convert -p cpm-verify)
ck="$work/ckpt32"
[ -f "$ck/80000/mp_rank_01_model_states.pt" ] || python3 "$here/scripts/make_synthetic_ckpt.py" "$ck" --layers 32
[ -f "$work/ref32/logits.npy" ] || python3 "$here/fixtures/record.py" --megatron "$ck" --trust-checkpoint --seq 64 --batch 1 --out "$work/ref32"
rm -rf "$work/out32"
"$here/target/release/cpm-convert" "$ck" -o "$work/out32" --quiet
/usr/bin/time -f "%e %M" -o "$work/t.ours" "$here/target/release/cpm-verify" "$work/out32" "$work/ref32" --threads "$threads" --json > "$work/ours.json"
/usr/bin/time -f "%e %M" -o "$work/t.hf" python3 "$here/scripts/hf_forward.py" "$work/out32" "$work/ref32" --threads "$threads" > "$work/hf.json" 2>/dev/null
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
ours, hf = json.load(open(f"{w}/ours.json")), json.load(open(f"{w}/hf.json"))
ow, orss = open(f"{w}/t.ours").read().split()
hw, hrss = open(f"{w}/t.hf").read().split()
print(f"cpm-verify:   pass={ours['pass']} max|diff| vs original {ours['max_abs_diff']:.2e}  "
      f"wall {float(ow):.2f} s  forward {ours['forward_seconds']:.2f} s  peak RSS {int(orss)/1024:.0f} MB")
print(f"transformers: max|diff| vs original {hf['max_abs_diff']:.2e}  wall {float(hw):.2f} s  "
      f"load {hf['load_seconds']:.2f} s  forward {hf['forward_seconds']:.2f} s  peak RSS {int(hrss)/1024:.0f} MB")
print(f"ratios (transformers / ours): wall {float(hw)/float(ow):.1f}x, forward "
      f"{hf['forward_seconds']/ours['forward_seconds']:.2f}x, peak RSS {int(hrss)/int(orss):.1f}x")
PY
