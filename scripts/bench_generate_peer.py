#!/usr/bin/env python3
"""The transformers half of scripts/bench-generate.sh, and the synthetic model it runs on.

  bench_generate_peer.py make DIR [--tokenizer MODEL]   write DIR/model (random GPT-2: 2560 wide,
                                4 layers, 32 heads, n_inner 10240, vocab 30000, n_positions 1024,
                                fp16 safetensors) and DIR/prompt.txt + DIR/prompt_ids.json (a text
                                whose original CPM encoding is exactly 64 tokens); skips what exists
  bench_generate_peer.py run DIR --threads T [--new 64] [--repeats 3]
                                transformers greedy decode on DIR/model loaded in float32: one
                                warm-up, then best of N; prints one JSON object
  bench_generate_peer.py bytes DIR   fp16 weight bytes one decode token reads (JSON)

Timing of `run`: generate(ids, do_sample=False, min_new_tokens=N, max_new_tokens=N) with a
streamer that timestamps every new token. prefill_seconds = start -> first new token (the prompt
forward + picking token 1); decode_seconds = first -> last new token;
tokens_per_second = (N - 1) / decode_seconds. The best run is the one with the highest rate.
"""
import argparse
import json
import logging
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TRANSLATOR = str.maketrans(" \n", "\u2582\u2583")
SHAPE = dict(n_embd=2560, n_layer=4, n_head=32, n_inner=10240, vocab_size=30000, n_positions=1024)
PROMPT_TOKENS = 64
EOD = 7
# Long Chinese prose; the prompt is its shortest prefix whose encoding has exactly 64 tokens.
BASE_TEXT = (
    "清华大学计算机系的研究人员发布了一个大规模的中文预训练语言模型，它在海量的中文语料上训练，"
    "可以用于对话生成、文本分类、阅读理解和常识推理等多种自然语言处理任务。研究人员表示，"
    "这个模型的参数规模达到了二十六亿，是目前最大的中文预训练模型之一，希望它能够促进中文自然语言"
    "处理领域的研究和应用。在实验中，模型在多个下游任务上都取得了很好的效果，特别是在少样本学习"
    "的设置下，它的表现明显优于以前的模型。"
)


def encode(tokenizer, text):
    """The original CPM pipeline: jieba (HMM on), space/newline translated, sentencepiece."""
    import jieba
    import sentencepiece as spm

    jieba.setLogLevel(logging.WARNING)
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    return sp.encode(" ".join(x.translate(TRANSLATOR) for x in jieba.cut(text, cut_all=False)))


def make_prompt(tokenizer):
    for end in range(1, len(BASE_TEXT) + 1):
        ids = encode(tokenizer, BASE_TEXT[:end])
        if len(ids) == PROMPT_TOKENS:
            return BASE_TEXT[:end], ids
        if len(ids) > PROMPT_TOKENS:
            break
    sys.exit(f"no prefix of the base text encodes to exactly {PROMPT_TOKENS} tokens")


def make_model(out):
    """Random fp16 weights, seeded, written tensor by tensor (no 1.6 GB fp32 model in between)."""
    from safetensors.torch import save_file
    from transformers import GPT2Config

    h, f, v, p = SHAPE["n_embd"], SHAPE["n_inner"], SHAPE["vocab_size"], SHAPE["n_positions"]
    shapes = {"transformer.wte.weight": (v, h), "transformer.wpe.weight": (p, h)}
    for i in range(SHAPE["n_layer"]):
        pre = f"transformer.h.{i}."
        shapes.update({
            pre + "ln_1.weight": (h,), pre + "ln_1.bias": (h,),
            pre + "attn.c_attn.weight": (h, 3 * h), pre + "attn.c_attn.bias": (3 * h,),
            pre + "attn.c_proj.weight": (h, h), pre + "attn.c_proj.bias": (h,),
            pre + "ln_2.weight": (h,), pre + "ln_2.bias": (h,),
            pre + "mlp.c_fc.weight": (h, f), pre + "mlp.c_fc.bias": (f,),
            pre + "mlp.c_proj.weight": (f, h), pre + "mlp.c_proj.bias": (h,),
        })
    shapes.update({"transformer.ln_f.weight": (h,), "transformer.ln_f.bias": (h,)})
    gen = torch.Generator().manual_seed(2026)
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
            t = torch.ones(shape)
        else:
            t = torch.randn(shape, generator=gen) * 0.02
        tensors[name] = t.to(torch.float16)
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, "model.safetensors.tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    GPT2Config(activation_function="gelu_new", tie_word_embeddings=True, bos_token_id=EOD,
               eos_token_id=EOD, dtype="float16", **SHAPE).save_pretrained(out)
    with open(os.path.join(out, "generation_config.json"), "w") as fh:
        json.dump({"bos_token_id": EOD, "eos_token_id": EOD, "pad_token_id": 5}, fh)
    os.replace(tmp, os.path.join(out, "model.safetensors"))  # last: its presence means complete


def cmd_make(args):
    model_dir = os.path.join(args.dir, "model")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        make_model(model_dir)
    prompt_txt = os.path.join(args.dir, "prompt.txt")
    if not os.path.exists(prompt_txt):
        text, ids = make_prompt(args.tokenizer)
        with open(os.path.join(args.dir, "prompt_ids.json"), "w") as fh:
            json.dump(ids, fh)
        with open(prompt_txt + ".tmp", "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(prompt_txt + ".tmp", prompt_txt)


class Stamps:
    """A generate() streamer: the first put() is the prompt, each later one a new token."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def one_run(model, ids, new):
    stamps = Stamps()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             min_new_tokens=new, max_new_tokens=new, pad_token_id=EOD,
                             streamer=stamps)
    got = out.shape[1] - ids.shape[1]
    token_times = stamps.times[1:]
    if got != new or len(token_times) != new:
        sys.exit(f"generate made {got} tokens ({len(token_times)} stamps), expected {new}")
    decode = token_times[-1] - token_times[0]
    return {"prefill_seconds": token_times[0] - t0, "decode_seconds": decode,
            "tokens_per_second": (new - 1) / decode, "new_tokens": got}


def cmd_run(args):
    from transformers import GPT2LMHeadModel
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    with open(os.path.join(args.dir, "prompt_ids.json")) as fh:
        ids = torch.tensor([json.load(fh)], dtype=torch.long)
    model = GPT2LMHeadModel.from_pretrained(os.path.join(args.dir, "model"), dtype=torch.float32)
    model.eval()
    one_run(model, ids, args.new)  # warm-up
    runs = [one_run(model, ids, args.new) for _ in range(args.repeats)]
    best = max(runs, key=lambda r: r["tokens_per_second"])
    best["best_prefill_seconds"] = min(r["prefill_seconds"] for r in runs)
    best.update(threads=args.threads, prompt_tokens=int(ids.shape[1]), repeats=args.repeats,
                torch=torch.__version__, transformers=transformers.__version__)
    print(json.dumps(best))


def cmd_bytes(args):
    """Bytes streamed per decode token in fp16: every tensor once (wte as the tied head), but
    only one row of wpe. The KV cache (about 4 layers x 2 x 128 x 2560 x 4 B = 10 MB at the
    end of this benchmark, ~1%) and the embedding row are left out."""
    from safetensors import safe_open

    total = wpe = 0
    with safe_open(os.path.join(args.dir, "model", "model.safetensors"), "pt") as fh:
        for name in fh.keys():
            shape = fh.get_slice(name).get_shape()
            n = 2
            for d in shape:
                n *= d
            total += n
            if name.endswith("wpe.weight"):
                wpe = n - 2 * shape[1]
    print(json.dumps({"bytes_per_token": total - wpe, "file_weight_bytes": total}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--tokenizer", default=os.path.join(REPO, "fixtures/tokenizer/chinese_vocab.model"))
    r = sub.add_parser("run")
    r.add_argument("dir")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--new", type=int, default=64)
    r.add_argument("--repeats", type=int, default=3)
    b = sub.add_parser("bytes")
    b.add_argument("dir")
    args = ap.parse_args()
    {"make": cmd_make, "run": cmd_run, "bytes": cmd_bytes}[args.cmd](args)


if __name__ == "__main__":
    main()
