#!/usr/bin/env bash
# Throughput of cpm-tokenize against the original Python pipeline (jieba 0.42.1 + sentencepiece),
# on a corpus of a few MB built from fixtures/tokenizer/corpus.jsonl (repeated in a fixed
# shuffled order), with both outputs checked equal byte for byte.
#
#   scripts/bench-tokenize.sh [WORKDIR] [MB]      (default: /tmp/cpm-bench-tokenize, 4)
#
# Needs python3 with jieba==0.42.1 and sentencepiece, and /usr/bin/time. Times are whole
# processes (start-up and dictionary loading included); Python's time after jieba.initialize()
# is printed too.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/cpm-bench-tokenize}
mb=${2:-4}
mkdir -p "$work"
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
model="$here/fixtures/tokenizer/chinese_vocab.model"

(cd "$here" && cargo build --release -q -p cpm-tokenizer)
exe="$here/target/release/cpm-tokenize"

python3 - "$here/fixtures/tokenizer/corpus.jsonl" "$work/corpus.jsonl" "$mb" <<'PY'
import random, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
rng, out, size = random.Random(20201122), [], 0
while size < float(sys.argv[3]) * 1e6:
    batch = lines[:]
    rng.shuffle(batch)
    for l in batch:
        out.append(l)
        size += len(l.encode()) + 1
open(sys.argv[2], "w", encoding="utf-8").write("\n".join(out) + "\n")
PY
lines=$(wc -l < "$work/corpus.jsonl")
bytes=$(wc -c < "$work/corpus.jsonl")

measure() {  # output file, command...: prints "seconds peak-kB"
  local out=$1 f; f=$(mktemp); shift
  /usr/bin/time -f "%e %M" -o "$f" "$@" < "$work/corpus.jsonl" > "$out" 2> "$f.err" || { cat "$f.err" >&2; exit 1; }
  cat "$f"; grep -h "after initialize" "$f.err" >&2 || true; rm -f "$f" "$f.err"
}

read -r py_s py_kb < <(measure "$work/py.jsonl" python3 "$here/scripts/cpm_tokenize_py.py" "$model")
read -r t1_s t1_kb < <(measure "$work/ours1.jsonl" "$exe" "$model" --jsonl --threads 1)
read -r t2_s t2_kb < <(measure "$work/ours2.jsonl" "$exe" "$model" --jsonl --threads 2)
cmp "$work/py.jsonl" "$work/ours1.jsonl"
cmp "$work/py.jsonl" "$work/ours2.jsonl"

echo "corpus: $lines lines, $bytes bytes (JSON lines), outputs identical"
printf "| %-28s | %8s | %9s | %6s | %8s | %10s |\n" run seconds "lines/s" "MB/s" "peak MB" "vs Python"
row() {
  printf "| %-28s | %8s | %9.0f | %6.2f | %8d | %10s |\n" "$1" "$2" "$(awk -v l="$lines" -v s="$2" 'BEGIN{print l/s}')" \
    "$(awk -v b="$bytes" -v s="$2" 'BEGIN{print b/s/1e6}')" $(( $3 / 1024 )) "$(awk -v p="$py_s" -v s="$2" 'BEGIN{printf "%.1fx", p/s}')"
}
row "Python jieba + sentencepiece" "$py_s" "$py_kb"
row "cpm-tokenize --threads 1" "$t1_s" "$t1_kb"
row "cpm-tokenize --threads 2" "$t2_s" "$t2_kb"
