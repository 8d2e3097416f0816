#!/usr/bin/env bash
# Throughput of cpm-tokenize against the original Python pipeline (jieba 0.42.1 + sentencepiece),
# on a corpus of a few MB built from fixtures/tokenizer/corpus.jsonl (repeated in a fixed
# shuffled order), with both outputs checked equal byte for byte.
#
#   scripts/bench-tokenize.sh [WORKDIR] [MB] [long]   (default: /tmp/cpm-bench-tokenize, 4)
#
# With `long`, single long lines are measured too (peak RSS against the line's size): lines of
# 10^5, 10^6 and 10^7 characters built from the corpus by the rule in
# fixtures/make_tokenizer_longlines.py, and 20 MB of "ab! "; each goes through cpm-tokenize
# (--jsonl, one line) and, up to 10^6 characters, through the Python pipeline, whose ids are
# compared (the first differing id is printed when they differ).
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

input="$work/corpus.jsonl"
measure() {  # output file, command...: prints "seconds peak-kB" (stdin: $input)
  local out=$1 f; f=$(mktemp); shift
  /usr/bin/time -f "%e %M" -o "$f" "$@" < "$input" > "$out" 2> "$f.err" || { cat "$f.err" >&2; exit 1; }
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

[ "${3:-}" = long ] || exit 0
python3 - "$here/fixtures" "$work" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[1])
from make_tokenizer_longlines import make_line, SEED
corpus = [json.loads(l) for l in open(sys.argv[1] + "/tokenizer/corpus.jsonl", encoding="utf-8")]
for chars in (10**5, 10**6, 10**7):
    with open(f"{sys.argv[2]}/long-{chars}.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps(make_line(corpus, chars, "prose", SEED), ensure_ascii=False) + "\n")
with open(f"{sys.argv[2]}/long-ab.jsonl", "w") as f:
    f.write(json.dumps("ab! " * 5_000_000) + "\n")
PY
echo
printf "| %-22s | %10s | %8s | %8s | %9s | %8s | %8s | %9s | %s |\n" line bytes "ours s" "peak MB" "peak/line" "Python s" "peak MB" "vs Python" "ids"
for name in long-100000 long-1000000 long-10000000 long-ab; do
  input="$work/$name.jsonl"; b=$(wc -c < "$input")
  read -r o_s o_kb < <(measure "$work/$name.ours" "$exe" "$model" --jsonl --threads 1)
  p_s=-; p_mb=-; vs=-; same=-
  if [ "$name" = long-100000 ] || [ "$name" = long-1000000 ]; then
    read -r p_s p_kb < <(measure "$work/$name.py" python3 "$here/scripts/cpm_tokenize_py.py" "$model")
    p_mb=$(( p_kb / 1024 )); vs=$(awk -v p="$p_s" -v s="$o_s" 'BEGIN{printf "%.1fx", p/s}')
    same=$(python3 -c "import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); d=next((i for i,(x,y) in enumerate(zip(a,b)) if x!=y), None); print('identical' if a==b else f'differ at id {d} of {len(b)}')" "$work/$name.ours" "$work/$name.py")
  fi
  printf "| %-22s | %10d | %8s | %8d | %9.1f | %8s | %8s | %9s | %s |\n" "$name" "$b" "$o_s" $(( o_kb / 1024 )) \
    "$(awk -v k="$o_kb" -v b="$b" 'BEGIN{print k*1024/b}')" "$p_s" "$p_mb" "$vs" "$same"
done
