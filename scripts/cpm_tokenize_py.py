#!/usr/bin/env python3
"""The original CPM-LM encode pipeline in Python, as `cpm-tokenize --jsonl`'s peer for
scripts/bench-tokenize.sh: each stdin line a JSON string, each stdout line the JSON array of ids
(no spaces, like cpm-tokenize). CPM-Generate data_utils/tokenization_gpt2.py: jieba.cut (HMM on),
" " -> U+2582 and "\\n" -> U+2583 per segment, joined with " ", sp.encode.

    python3 scripts/cpm_tokenize_py.py MODEL.model < texts.jsonl > ids.jsonl

Prints to stderr the seconds spent after jieba.initialize() and the model load.
"""
import json
import logging
import sys
import time

import jieba
import sentencepiece as spm


def main():
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
    translator = str.maketrans(" \n", "\u2582\u2583")
    start = time.perf_counter()
    out = sys.stdout
    for line in sys.stdin:
        text = json.loads(line)
        segs = [x.translate(translator) for x in jieba.cut(text, cut_all=False)]
        out.write(json.dumps(sp.encode(" ".join(segs)), separators=(",", ":")) + "\n")
    out.flush()
    print(f"python pipeline seconds (after initialize): {time.perf_counter() - start:.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
