"""Run trainer.train_and_merge in every process of a launch and keep its checkpoints (the loop deletes them
once a stage is done); used by test_engines to read ZeRO-3's fp32 master weights from the checkpoint.

    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml --num_processes 2 \
        tests/launched_train.py POLICY DATASET OUTPUT CHECKPOINTS '{"learning_rate": 5e-7, ...}'
"""
import json
import sys

from sppo_lite.trainer import train_and_merge

if __name__ == "__main__":
    policy, dataset, output, checkpoints, options = sys.argv[1:6]
    train_and_merge(policy, dataset, output, checkpoint_dir=checkpoints, **json.loads(options))
