"""The YAML recipes in configs/: each loads and validates, the paper recipe holds the paper's values, the
Colab recipe holds what docs/recipes.md says, and the accelerate configs load the way `accelerate launch` does."""
import inspect
import re
from pathlib import Path

import pytest
import yaml

from sppo_lite.loop import apply_overrides, load_config
from sppo_lite.trainer import SPPOConfig, train_and_merge

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
# toy.yaml holds `sppo-lite toy` options, not a pipeline recipe.
RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "toy.yaml")
ACCELERATE = sorted((CONFIGS / "accelerate").glob("*.yaml"))
PAPER = CONFIGS / "full-8gpu-mistral7b.yaml"
COLAB = CONFIGS / "colab-qlora-mistral7b.yaml"
# Keys of the train section that train_and_merge consumes itself (its named parameters, plus the one it pops);
# the rest become SPPOConfig fields.
MERGE_KEYS = {*inspect.signature(train_and_merge).parameters, "activation_checkpointing"} - {"config"}


def test_the_recipes_exist():
    assert {p.name for p in RECIPES} >= {"cpu-tiny.yaml", "colab-qlora-mistral7b.yaml", "full-8gpu-mistral7b.yaml"}
    assert {p.name for p in ACCELERATE} >= {"single_gpu.yaml", "ddp.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_its_train_section_is_a_valid_sppo_config(path, tmp_path):
    config = load_config(path)  # unknown keys and inconsistent values raise
    assert config["prompts"]["thirds"] is None or config["iterations"] <= config["prompts"]["thirds"]
    source = config["prompts"]["source"]
    if Path(source).suffix in (".jsonl", ".json", ".parquet"):
        assert (ROOT / source).is_file(), f"{path.name}: prompt file {source} is missing"
    train = {k: v for k, v in config["train"].items() if k not in MERGE_KEYS}
    args = SPPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **train)  # optimizer, schedule, lengths
    assert args.loss_type == config["train"]["loss_type"] and args.beta == config["train"]["beta"]


def _header_command(path: Path) -> str:
    """The comment lines at the top of a recipe, joined (its run command lives there)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip("\\ "))
    return " ".join(lines)


def test_paper_recipe_has_the_paper_values():
    c = load_config(PAPER)
    t, g = c["train"], c["generation"]
    assert c["policy"]["model"] == "mistralai/Mistral-7B-Instruct-v0.2" and c["policy"]["mode"] == "full"
    assert c["iterations"] == 3 and c["prompts"]["thirds"] == 3 and c["prompts"]["n_prompts"] is None
    assert (g["k"], g["temperature"], g["top_p"]) == (5, 0.7, 0.9)
    assert c["judge"]["type"] == "pairrm" and c["judge"]["model"] == "llm-blender/PairRM"
    assert c["judge"]["mode"] == "official" and c["build"]["pair_mode"] == "best_worst"
    assert t["loss_type"] == "sppo" and t["beta"] == pytest.approx(0.001) and t["learning_rate"] == pytest.approx(5e-7)
    assert t["optim"] == "rmsprop" and t["lr_scheduler_type"] == "linear"
    assert t["warmup_steps"] == pytest.approx(0.1)  # a ratio of the steps in transformers 5
    assert (t["max_length"], t["max_prompt_length"]) == (1024, 512) and g["max_prompt_tokens"] == 512
    assert t["activation_checkpointing"] is True and t["bf16"] is True and t["num_train_epochs"] == 1

    # The run command in the header, and the global batch it gives: 8 per device × 8 processes = 64.
    header = _header_command(PAPER)
    launch = re.search(r"accelerate launch --config_file (\S+)", header)
    assert launch and re.search(r"--config (\S+)", header).group(1) == f"configs/{PAPER.name}"
    from accelerate.commands.config.config_args import load_config_from_file

    accelerate = load_config_from_file(str(ROOT / launch.group(1)))
    assert accelerate.deepspeed_config["zero_stage"] == 3 and accelerate.mixed_precision == "bf16"
    assert accelerate.num_processes * t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] == 64


def test_colab_recipe_is_qlora_with_its_own_beta_and_lr():
    c = load_config(COLAB)
    t, g, paper = c["train"], c["generation"], load_config(PAPER)["train"]
    assert c["policy"]["model"] == "mistralai/Mistral-7B-Instruct-v0.2" and c["policy"]["mode"] == "qlora"
    assert c["iterations"] == 3 and c["prompts"]["thirds"] == 3 and c["prompts"]["n_prompts"] > 0
    assert (g["k"], g["temperature"], g["top_p"]) == (5, 0.7, 0.9)
    assert c["judge"]["type"] == "pairrm" and c["judge"]["mode"] == "official"
    # docs/recipes.md: β 0.01 and lr 5e-5 from the tiny-model sweep, both above the full-fine-tuning values.
    assert t["beta"] == pytest.approx(0.01) and t["learning_rate"] == pytest.approx(5e-5)
    assert t["beta"] > paper["beta"] and t["learning_rate"] > paper["learning_rate"]
    assert t["optim"] == paper["optim"] and t["warmup_steps"] == paper["warmup_steps"]
    assert t["activation_checkpointing"] is True and t["bf16"] == "auto"  # fp16 on a T4, bf16 where supported
    assert t["reference"] == "precomputed"  # scored in 4 bit by the build stage, as training starts
    assert g["max_prompt_tokens"] == t["max_prompt_length"] < t["max_length"]


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_loads_as_accelerate_launch_reads_it(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes == yaml.safe_load(path.read_text())["num_processes"] >= 1
    assert config.compute_environment.value == "LOCAL_MACHINE"


def test_the_comparison_recipe_is_the_cpu_recipe_under_the_committee_judge():
    from sppo_lite import compare

    arms, cpu = load_config(CONFIGS / "cpu-smollm2-compare.yaml"), load_config(CONFIGS / "cpu-smollm2.yaml")
    assert compare.COMPARE_RECIPE.resolve() == (CONFIGS / "cpu-smollm2-compare.yaml").resolve()
    bf16 = ["generation.bf16=true", "build.bf16=true", "train.bf16=true"]  # measured in benchmarks/cpu_bf16.py
    cpu = apply_overrides(cpu, bf16)
    assert {k: v for k, v in arms.items() if k != "judge"} == {k: v for k, v in cpu.items() if k != "judge"}
    assert arms["judge"]["dtype"] == "bfloat16" and cpu["judge"]["dtype"] is None
    assert arms["judge"]["type"] == "committee" and arms["judge"]["model"] == "smollm2-135m-instruct"
    assert arms["judge"]["template_prompts"] is False and arms["train"]["loss_type"] == "sppo"


def test_the_comparison_recipes_header_runs_the_tuned_baselines():
    from sppo_lite import compare

    header = _header_command(CONFIGS / "cpu-smollm2-compare.yaml")
    for arm, s in compare.TUNED.items():
        found = re.search(rf"--output-dir runs/compare/{arm} --reuse-from runs/compare/sppo --set train.loss_type={arm} "
                          r"--set train.beta=(\S+) --set train.learning_rate=(\S+)", header)
        assert found and (float(found.group(1)), float(found.group(2))) == (s["beta"], s["learning_rate"]), arm
