"""What several test modules share: a small loop config, and a few judged responses to train on."""
import json
from pathlib import Path

import yaml

from sppo_lite import loop

PROMPTS = str(Path(__file__).resolve().parent.parent / "data" / "prompts.jsonl")


def tiny_config(tmp_path, **overrides):
    """load_config of a YAML recipe written to tmp_path, with "a.b" overrides (lists as JSON)."""
    base = {
        "seed": 3, "iterations": 1,
        "policy": {"model": "tiny", "device": "cpu"},
        "prompts": {"source": PROMPTS, "n_prompts": 6},
        "generation": {"k": 3, "max_new_tokens": 6, "batch_size": 4, "shard_size": 2},
        "judge": {"type": "length", "device": "cpu", "shard_size": 2},
        "build": {"ref_batch_size": 4},
        "train": {"max_length": 256, "max_prompt_length": 200, "warmup_steps": 0},  # 1 step in a warmup trains at lr 0
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base))
    return loop.load_config(path, [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in overrides.items()])


# Four prompts with three responses each and judge scores: the pairs the trainer tests train on.
BETA = 0.1
PROMPTS_4 = ["What is 2 + 3?", "Give me three colours.", "How many legs does a spider have?",
             "Translate 'thank you' into French."]
RESPONSES = [["2 + 3 = 5.", "It is six.", "I am sorry, but I cannot help with that request."],
             ["Red, green and blue.", "Blue.", "Numbers: 0 1 2"],
             ["A spider has eight legs.", "Eight.", "The quick brown fox."],
             ["Merci.", "Thank you.", "Sure! Here is a step-by-step explanation."]]
SCORES = [[2.0, 0.0, -2.0], [1.0, 0.5, -1.5], [3.0, -1.0, 0.0], [0.5, 1.0, -2.0]]
