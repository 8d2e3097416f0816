#!/usr/bin/env python3
"""The byte ranges a conversion of a training checkpoint reads, for scripts/bench-training.sh's
floor (standard library only; runs before the timing, not in it):

  bench_training_ranges.py INPUT INSPECT_JSON > RANGES

INSPECT_JSON is `cpm-inspect INPUT --mapped --json`. Prints "START LENGTH PATH" lines for
scripts/bench_read_ranges.c, then on stderr the total and the largest output tensor's bytes:
  - ZeRO: each optimizer file's fp32 partition bytes that the `zero` report says are read
    (never the Adam moments or the module copy), and of every torch zip it opens the pickle
    record and the central directory;
  - DCP: every chunk of every tensor the `chunks` report marks as read, and the .metadata file.
"""
import json
import os
import struct
import sys
import zipfile

DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}


def zip_metadata(path):
    """The pickle's record and the central directory: what opening a torch zip reads."""
    z = zipfile.ZipFile(path)
    out = [(z.start_dir, os.path.getsize(path) - z.start_dir)]
    with open(path, "rb") as f:
        for info in z.infolist():
            if info.filename.endswith("/data.pkl"):
                f.seek(info.header_offset)
                head = f.read(30)
                name, extra = struct.unpack("<HH", head[26:30])
                out.append((info.header_offset, 30 + name + extra + info.compress_size))
    return out


def zero(root, report):
    for r in report:
        model = os.path.join(root, r["model_states"])
        yield from ((s, n, model) for s, n in zip_metadata(model))
        for g in r["groups"]:
            for p in g["partitions"]:
                f = os.path.join(root, p["file"])
                if g is r["groups"][0]:
                    yield from ((s, n, f) for s, n in zip_metadata(f))
                yield p["start"], p["read"], f


def dcp(root, inspect):
    meta = os.path.join(root, inspect["files"][0]["name"])
    yield 0, os.path.getsize(meta), meta
    folder = os.path.dirname(meta)
    for t in inspect["chunks"]["tensors"]:
        if t["read"]:
            for c in t["chunks"]:
                yield c["start"], c["end"] - c["start"], os.path.join(folder, c["file"])


def main(root, inspect_json):
    inspect = json.load(open(inspect_json))
    ranges = list(zero(root, inspect["zero"]) if "zero" in inspect else dcp(root, inspect))
    ranges.sort(key=lambda r: (r[2], r[0]))
    for start, n, path in ranges:
        print(start, n, os.path.abspath(path))
    largest = max(DTYPE_BYTES[m["dtype"]] * product(m["shape"]) for m in inspect["mapped"])
    print(sum(n for _, n, _ in ranges), largest, file=sys.stderr)


def product(shape):
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
