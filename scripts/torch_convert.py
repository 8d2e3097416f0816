#!/usr/bin/env python3
"""The plain PyTorch way to port CPM-LM, for benchmarks only: torch.load every rank whole,
merge with the same rules as mappings/cpm-lm.toml, safetensors.torch.save_file.

  python3 scripts/torch_convert.py CKPT_ITERATION_DIR OUT_FILE
"""
import glob
import os
import sys

import torch
from safetensors.torch import save_file


def main():
    src, out = sys.argv[1], sys.argv[2]
    files = sorted(glob.glob(os.path.join(src, "mp_rank_*_model_states.pt")))
    ranks = [torch.load(f, map_location="cpu", weights_only=False)["module"] for f in files]
    merged = {}
    layers = 1 + max(int(k.split(".")[2]) for k in ranks[0] if k.startswith("transformer.layers."))
    merged["transformer.wte.weight"] = torch.cat([r["word_embeddings.weight"] for r in ranks], 0)
    merged["transformer.wpe.weight"] = ranks[0]["position_embeddings.weight"]
    for i in range(layers):
        s, d = f"transformer.layers.{i}.", f"transformer.h.{i}."
        g = lambda n: [r[s + n] for r in ranks]
        merged[d + "ln_1.weight"] = g("input_layernorm.weight")[0]
        merged[d + "ln_1.bias"] = g("input_layernorm.bias")[0]
        w = [t.chunk(3, 0) for t in g("attention.query_key_value.weight")]
        b = [t.chunk(3, 0) for t in g("attention.query_key_value.bias")]
        merged[d + "attn.c_attn.weight"] = torch.cat([p[j] for j in range(3) for p in w], 0).t().contiguous()
        merged[d + "attn.c_attn.bias"] = torch.cat([p[j] for j in range(3) for p in b], 0)
        merged[d + "attn.c_proj.weight"] = torch.cat(g("attention.dense.weight"), 1).t().contiguous()
        merged[d + "attn.c_proj.bias"] = g("attention.dense.bias")[0]
        merged[d + "ln_2.weight"] = g("post_attention_layernorm.weight")[0]
        merged[d + "ln_2.bias"] = g("post_attention_layernorm.bias")[0]
        merged[d + "mlp.c_fc.weight"] = torch.cat(g("mlp.dense_h_to_4h.weight"), 0).t().contiguous()
        merged[d + "mlp.c_fc.bias"] = torch.cat(g("mlp.dense_h_to_4h.bias"), 0)
        merged[d + "mlp.c_proj.weight"] = torch.cat(g("mlp.dense_4h_to_h.weight"), 1).t().contiguous()
        merged[d + "mlp.c_proj.bias"] = g("mlp.dense_4h_to_h.bias")[0]
    merged["transformer.ln_f.weight"] = ranks[0]["transformer.final_layernorm.weight"]
    merged["transformer.ln_f.bias"] = ranks[0]["transformer.final_layernorm.bias"]
    # Views into DeepSpeed's flat buffers must be copied out before saving.
    save_file({k: v.contiguous().clone() for k, v in merged.items()}, out, metadata={"format": "pt"})


if __name__ == "__main__":
    main()
