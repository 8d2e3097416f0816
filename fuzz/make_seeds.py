#!/usr/bin/env python3
"""Small seed inputs for the fuzz targets (fuzz/seeds/<target>/), made by real PyTorch, numpy and
safetensors so the fuzzer starts from well-formed files. Needs: pip install torch numpy safetensors.

    python3 fuzz/make_seeds.py        # rewrites fuzz/seeds/
"""
import argparse
import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import torch
from safetensors.numpy import save as st_save

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")


def put(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def small_state():
    flat = torch.arange(24, dtype=torch.float16)
    sd = OrderedDict()
    sd["w"] = flat[:12].view(3, 4)          # a view at offset 0
    sd["b"] = flat[12:16]                    # a view at offset 12
    sd["t"] = flat[:12].view(3, 4).t()       # non-contiguous
    sd["f"] = torch.ones(2, dtype=torch.float32)
    ns = argparse.Namespace(num_attention_heads=4, lr=0.1)
    return {"module": sd, "args": ns, "mp_world_size": 1, "iteration": 7, "tags": {1, 2},
            "rng": np.random.get_state()[1][:8]}


def torch_bytes(obj, zip_format):
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


def main():
    state = small_state()
    z = torch_bytes(state, True)
    put("torch_zip", "small.pt", z)
    put("torch_zip", "tensor.pt", torch_bytes({"x": torch.zeros(2, 2)}, True))
    put("torch_legacy", "small.pt", torch_bytes(state, False))
    put("torch_legacy", "tensor.pt", torch_bytes({"x": torch.zeros(2, 2)}, False))

    # The pickle inside the zip file, and plain protocol-2 pickles of inert values.
    with zipfile.ZipFile(io.BytesIO(z)) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl")][0]
        put("pickle", "torch-data.pkl", zf.read(pkl))
    put("pickle", "containers.pkl", pickle.dumps(
        {"a": [1, 2.5, None, True], "b": (b"xy", "z" * 3), "c": {3, 4}, "d": frozenset([5]),
         "e": OrderedDict(k=1), "big": 2**70, "neg": -(2**40)}, protocol=2))
    put("pickle", "namespace.pkl", pickle.dumps(argparse.Namespace(a=1, b=[1, 2]), protocol=2))
    put("pickle", "p4.pkl", pickle.dumps({"x": [1, 2, 3] * 3, "s": "é"}, protocol=4))
    put("pickle", "system.pkl", b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00echo\x85R.")

    # .npy: first byte chooses the file under test (even: input_ids.npy, odd: logits.npy).
    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()
    put("npy", "ids-i64", b"\x00" + npy(np.array([[1, 2, 3]], dtype=np.int64)))
    put("npy", "ids-i32", b"\x00" + npy(np.array([[0, 7]], dtype=np.int32)))
    put("npy", "logits-f32", b"\x01" + npy(np.ones((1, 3, 8), dtype=np.float32)))
    put("npy", "logits-f16", b"\x01" + npy(np.ones((1, 3, 8), dtype=np.float16)))

    # safetensors matching the target's fixed config (1 layer, n_embd 4, vocab 8, positions 4).
    h, inner, v, p = 4, 16, 8, 4
    rng = np.random.default_rng(0)
    shapes = {"wte.weight": (v, h), "wpe.weight": (p, h), "ln_f.weight": (h,), "ln_f.bias": (h,),
              "h.0.ln_1.weight": (h,), "h.0.ln_1.bias": (h,), "h.0.attn.c_attn.weight": (h, 3 * h),
              "h.0.attn.c_attn.bias": (3 * h,), "h.0.attn.c_proj.weight": (h, h),
              "h.0.attn.c_proj.bias": (h,), "h.0.ln_2.weight": (h,), "h.0.ln_2.bias": (h,),
              "h.0.mlp.c_fc.weight": (h, inner), "h.0.mlp.c_fc.bias": (inner,),
              "h.0.mlp.c_proj.weight": (inner, h), "h.0.mlp.c_proj.bias": (h,)}
    for dt, name in [(np.float16, "f16"), (np.float32, "f32")]:
        tensors = {"transformer." + k: rng.standard_normal(s).astype(dt) for k, s in shapes.items()}
        put("safetensors", f"model-{name}", st_save(tensors, metadata={"format": "pt"}))

    # DCP .metadata: the ones torch wrote for the training fixtures (FSDP2 through accelerate,
    # megatron-core dist_checkpointing).
    fixtures = os.path.join(HERE, "..", "fixtures", "training")
    for name, folder in [("fsdp2-model", "dcp-fsdp2-accelerate/checkpoint/pytorch_model_fsdp_0"),
                         ("mcore-tp2", "mcore-dist-016-tp2/checkpoint/iter_0000002")]:
        with open(os.path.join(fixtures, folder, ".metadata"), "rb") as f:
            put("dcp_metadata", name, f.read())


if __name__ == "__main__":
    main()
