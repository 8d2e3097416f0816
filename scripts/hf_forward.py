#!/usr/bin/env python3
"""transformers' side of the full-size verifier benchmark: load a converted GPT-2 directory in
float32 (eager attention), run the fixture's input_ids once, print wall times as JSON.

  python3 scripts/hf_forward.py MODEL_DIR FIXTURE_DIR [--threads N]
"""
import argparse
import json
import time

import numpy as np
import torch
from transformers import GPT2LMHeadModel

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("fixture")
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
t0 = time.time()
model = GPT2LMHeadModel.from_pretrained(a.model, torch_dtype=torch.float32, attn_implementation="eager").eval()
t1 = time.time()
ids = torch.from_numpy(np.load(f"{a.fixture}/input_ids.npy").astype(np.int64))
with torch.no_grad():
    logits = model(ids).logits
t2 = time.time()
ref = np.load(f"{a.fixture}/logits.npy")
print(json.dumps({"load_seconds": t1 - t0, "forward_seconds": t2 - t1,
                  "max_abs_diff": float(np.abs(logits.numpy() - ref).max()), "threads": a.threads}))
