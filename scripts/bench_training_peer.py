#!/usr/bin/env python3
"""The PyTorch peer of a training-checkpoint conversion, for scripts/bench-training.sh:

  bench_training_peer.py dcp DCP_DIR CONFIG_JSON OUT_DIR
      torch.distributed.checkpoint.format_utils.dcp_to_torch_save (the DCP folder to one
      torch.save file), then transformers GPT2LMHeadModel.from_config + load_state_dict +
      save_pretrained (safetensors): what a user does today to get a Hugging Face model from an
      accelerate FSDP SHARDED_STATE_DICT checkpoint.

(The ZeRO peer is DeepSpeed's own zero_to_fp32.py, run directly by the bench script.)
"""
import os
import sys
import tempfile

import torch


def dcp(src, config, out):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import GPT2Config, GPT2LMHeadModel
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out))) as tmp:
        path = os.path.join(tmp, "full.pt")
        dcp_to_torch_save(src, path)
        sd = torch.load(path, weights_only=True, mmap=True)["model"]
        model = GPT2LMHeadModel(GPT2Config.from_json_file(config))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        model.save_pretrained(out)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "dcp":
        sys.exit(__doc__)
    dcp(*sys.argv[2:])
