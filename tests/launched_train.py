"""Run trainer.train_and_merge in every process of a launch and keep its checkpoints (the loop deletes them
once a stage is done), and record what each process held right after loading π_t; test_precision reads
ZeRO-3's fp32 master weights from the checkpoint.

    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml --num_processes 2 \
        tests/launched_train.py POLICY DATASET OUTPUT CHECKPOINTS '{"learning_rate": 5e-7, ...}'
"""
import json
import os
import sys
from pathlib import Path

import sppo_lite.modeling
from sppo_lite.trainer import train_and_merge

load_policy = sppo_lite.modeling.load_policy


def recording_load_policy(*args, **kwargs):
    """load_policy, and how many parameter entries this process holds right after loading (loaded.json)."""
    model, tokenizer = load_policy(*args, **kwargs)
    held = sum(p.numel() for p in model.parameters())
    whole = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3 keeps the full size here
    Path(sys.argv[4], f"loaded-rank{os.environ.get('RANK', 0)}.json").write_text(json.dumps({"held": held, "whole": whole}))
    return model, tokenizer


if __name__ == "__main__":
    policy, dataset, output, checkpoints, options = sys.argv[1:6]
    Path(checkpoints).mkdir(parents=True, exist_ok=True)
    sppo_lite.modeling.load_policy = recording_load_policy
    train_and_merge(policy, dataset, output, checkpoint_dir=checkpoints, **json.loads(options))
