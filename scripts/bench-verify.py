#!/usr/bin/env python3
"""Forward-pass throughput of cpm-verify against PyTorch (transformers) on the CPU.

Makes a random GPT-2 as wide as CPM-LM (n_embd 2560, 32 heads, vocab 30000) but only 4 layers,
saves it with save_pretrained (fp16 by default, as CPM is stored) into --work, records a
[1, 64] fixture with transformers (eager, f32), then times, for each thread count:
  torch   model(ids) of the f32 model already in memory, torch.set_num_threads(N), no_grad
  ours    cpm-verify --json --threads N, its `forward_seconds` (embedding to logits, including
          widening each layer's weights from the memory-mapped file, excluding file checks)
The two are run alternately, --repeat times each after one warm-up; medians and minima. The
model file is dropped from the page cache first (see evict()), so the warm-up reads it cold.
It also checks that cpm-verify passes the fixture, so the timing is of a correct forward pass.

Usage: cargo build -p cpm-verify --release
       python3 scripts/bench-verify.py [--threads 1 2] [--repeat 5] [--dtype float16|bfloat16|float32]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_model(work, dtype, seq):
    model_dir, fixture_dir = os.path.join(work, f"model-{dtype}"), os.path.join(work, "fixture")
    cfg = GPT2Config(vocab_size=30000, n_positions=1024, n_embd=2560, n_layer=4, n_head=32,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    model = GPT2LMHeadModel._from_config(cfg, attn_implementation="eager")
    # Round to the stored dtype first, so the recording is of the weights in the file.
    model = model.to(getattr(torch, dtype)).float().eval()
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        model.to(getattr(torch, dtype)).save_pretrained(model_dir, safe_serialization=True)
        model.float()
    os.makedirs(fixture_dir, exist_ok=True)
    ids = torch.randint(0, cfg.vocab_size, (1, seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits.float()
    np.save(os.path.join(fixture_dir, "input_ids.npy"), ids.numpy().astype(np.int64))
    np.save(os.path.join(fixture_dir, "logits.npy"), logits.numpy())
    with open(os.path.join(fixture_dir, "fixture.json"), "w") as f:
        json.dump({"atol": 1e-3, "rtol": 1e-3,
                   "description": "random 4-layer GPT-2 2560 wide, transformers eager f32"}, f)
    return model, ids, model_dir, fixture_dir


def torch_once(model, ids):
    with torch.no_grad():
        t = time.perf_counter()
        model(ids)
        return time.perf_counter() - t


def ours_once(binary, model_dir, fixture_dir, threads):
    out = subprocess.run([binary, model_dir, fixture_dir, "--json", "--threads", str(threads)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"cpm-verify did not pass (exit {out.returncode}): {out.stdout}{out.stderr}")
    report = json.loads(out.stdout)
    return report["forward_seconds"], report


def bench(model, ids, binary, model_dir, fixture_dir, threads, repeat):
    """Alternates the two so that a busy machine slows both alike; one warm-up each."""
    torch.set_num_threads(threads)
    torch_once(model, ids)
    ours_once(binary, model_dir, fixture_dir, threads)  # also warms the page cache
    theirs, ours = [], []
    for _ in range(repeat):
        theirs.append(torch_once(model, ids))
        t, report = ours_once(binary, model_dir, fixture_dir, threads)
        ours.append(t)
    return theirs, ours, report


def evict(path):
    """Drops the model file from the page cache, so that the first (warm-up) run of cpm-verify
    reads it the way a first verification after a download or reboot does. How the file entered
    the cache decides its page size there: written by save_pretrained it is in folios of mixed
    size, mapped 4 KiB at a time; read cold through cpm-verify's MADV_HUGEPAGE map it is in 2 MiB
    folios, which every later map takes a 2 MiB entry for. Without this step, our timings depend
    on the history of the file (0.10 s slower for f32 weights when it was just written)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    ap.add_argument("--work", default="/tmp/cpm-verify-bench")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "cpm-verify"))
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: cargo build -p cpm-verify --release")
    model, ids, model_dir, fixture_dir = make_model(args.work, args.dtype, args.seq)
    evict(os.path.join(model_dir, "model.safetensors"))
    print(f"GPT-2 n_embd 2560, 4 layers, vocab 30000, {args.seq} tokens, weights stored {args.dtype}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print("median (min) of each; ratio of medians (ratio of minima)")
    print(f"{'threads':>7} {'torch s':>15} {'ours s':>15} {'ours/torch':>15}  max|diff|")
    for t in args.threads:
        theirs, ours, report = bench(model, ids, args.binary, model_dir, fixture_dir, t, args.repeat)
        mt, mo = statistics.median(theirs), statistics.median(ours)
        print(f"{t:>7} {mt:>7.3f} ({min(theirs):.3f}) {mo:>7.3f} ({min(ours):.3f}) "
              f"{mo / mt:>7.2f} ({min(ours) / min(theirs):.2f})  {report['max_abs_diff']:.2e}")


if __name__ == "__main__":
    sys.exit(main())
