#!/usr/bin/env python3
"""Write a synthetic checkpoint shaped exactly like CPM-LM Large, for benchmarks.

Model-parallel size 2, fp16, zip format, weights under `module` with DeepSpeed training state
beside them, and every rank's parameters as views into one flat fp16 storage (as DeepSpeed
flattens them). Deterministic: the same arguments give the same tensors.

  python3 scripts/make_synthetic_ckpt.py OUT_DIR [--layers 32] [--hidden 2560] [--heads 32]
                                                 [--vocab 30000] [--positions 1024]

OUT_DIR gets latest_checkpointed_iteration.txt and 80000/mp_rank_0{0,1}_model_states.pt.
The full 32-layer model is 5.2 GB; never write it into the repository.
"""
import argparse
import os
import random
import sys

import numpy as np
import torch


def shapes(layers, hidden, vocab, positions, mp):
    """(name, per-rank shape) in the order Megatron's module lists them."""
    h, f = hidden, 4 * hidden
    out = [("word_embeddings.weight", (vocab // mp, h)),
           ("position_embeddings.weight", (positions, h))]
    for i in range(layers):
        p = f"transformer.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (h,)), (p + "input_layernorm.bias", (h,)),
            (p + "attention.query_key_value.weight", (3 * h // mp, h)),
            (p + "attention.query_key_value.bias", (3 * h // mp,)),
            (p + "attention.dense.weight", (h, h // mp)), (p + "attention.dense.bias", (h,)),
            (p + "post_attention_layernorm.weight", (h,)), (p + "post_attention_layernorm.bias", (h,)),
            (p + "mlp.dense_h_to_4h.weight", (f // mp, h)), (p + "mlp.dense_h_to_4h.bias", (f // mp,)),
            (p + "mlp.dense_4h_to_h.weight", (h, f // mp)), (p + "mlp.dense_4h_to_h.bias", (h,)),
        ]
    out += [("transformer.final_layernorm.weight", (h,)), ("transformer.final_layernorm.bias", (h,))]
    return out


REPLICATED = ("position_embeddings", "layernorm", "dense.bias", "dense_4h_to_h.bias")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=2560)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=30000)
    ap.add_argument("--positions", type=int, default=1024)
    ap.add_argument("--mp", type=int, default=2)
    a = ap.parse_args()
    spec = shapes(a.layers, a.hidden, a.vocab, a.positions, a.mp)
    total = sum(int(np.prod(s)) for _, s in spec)
    need = 2 * total * a.mp * 2.2
    free = os.statvfs(os.path.dirname(os.path.abspath(a.out)) or ".")
    if free.f_bavail * free.f_frsize < need:
        sys.exit(f"needs about {need / 1e9:.1f} GB free disk")
    it = os.path.join(a.out, "80000")
    os.makedirs(it, exist_ok=True)
    with open(os.path.join(a.out, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("80000\n")
    for r in range(a.mp):
        g = torch.Generator().manual_seed(1234 + r)
        rep = torch.Generator().manual_seed(99)  # replicated tensors equal on every rank
        flat = torch.empty(total, dtype=torch.float16)
        module, off = {}, 0
        for name, s in spec:
            n = int(np.prod(s))
            view = flat[off:off + n].view(s)
            gen = rep if any(k in name for k in REPLICATED) else g
            # Scales that keep activations alive through 32 layers and attention peaked, so a
            # port mistake moves the logits clearly (the 0.02 initialisation gives near-zero
            # logits that any port would match).
            if "layernorm.weight" in name:
                scale, shift = 0.1, 1.0
            elif name.endswith(".bias"):
                scale, shift = 0.02, 0.0
            elif "embeddings" in name:
                scale, shift = 0.1, 0.0
            else:
                scale, shift = 0.03, 0.0
            # Fill in slabs to keep the float32 temporaries small.
            rows = view.view(-1)
            for i in range(0, n, 1 << 24):
                j = min(n, i + (1 << 24))
                rows[i:j].copy_(torch.randn(j - i, generator=gen) * scale + shift)
            module[name] = view
            off += n
        state = {
            "module": module, "mp_world_size": a.mp, "iteration": 80000, "dp_world_size": 1,
            "global_steps": 80000, "skipped_steps": 0, "optimizer": None,
            "lr_scheduler": {"num_iters": 80000, "start_lr": 1.5e-4},
            "csr_tensor_module_names": set(), "np_rng_state": np.random.RandomState(r).get_state(),
            "random_rng_state": random.Random(r).getstate(), "torch_rng_state": torch.get_rng_state(),
            "cuda_rng_state": torch.get_rng_state()[:64].clone(),
            "rng_tracker_states": {"model-parallel-rng": torch.get_rng_state()[:32].clone()},
            "args": argparse.Namespace(num_layers=a.layers, hidden_size=a.hidden,
                                       num_attention_heads=a.heads, model_parallel_size=a.mp),
        }
        path = os.path.join(it, f"mp_rank_{r:02d}_model_states.pt")
        torch.save(state, path)
        print(f"wrote {path} ({os.path.getsize(path) / 1e9:.2f} GB)")
        del flat, module, state


if __name__ == "__main__":
    main()
