"""The typed recipe: every key a dataclass field with a default, help and a rule; checked once; docs generated."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from sppo_lite import loop
from sppo_lite.loop import schema
from sppo_lite.resources import recipe_names, recipe_path

ROOT = Path(__file__).resolve().parents[1]


def fields_with_rules():
    for f in dataclasses.fields(schema.RunConfig):
        if f.name in schema.SECTIONS:
            continue
        yield f.name, f
    for name, cls in schema.SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.name != "extra":
                yield f"{name}.{f.name}", f


def test_default_config_is_the_dataclasses_defaults():
    assert loop.DEFAULT_CONFIG == schema.RunConfig().to_dict()
    schema.RunConfig().check()  # the defaults are allowed values
    for key, f in fields_with_rules():
        assert f.metadata["help"], key
        assert f.metadata["rule"] is not None, key


@pytest.mark.parametrize("key", [k for k, _ in fields_with_rules()])
def test_every_key_refuses_a_value_of_the_wrong_kind(key):
    with pytest.raises(ValueError, match=f"config key {key.replace('.', '[.]')} must be"):
        loop.load_config(None, [f"{key}={{a: 1}}"])  # a mapping is no key's allowed value


@pytest.mark.parametrize("name", [n for n in recipe_names() if n != "toy"])  # toy.yaml: the toy command's flags
def test_each_shipped_recipe_reads_into_typed_fields(name):
    config = loop.load_config(name)
    typed = loop.load_run_config(name)
    assert isinstance(typed.generation, schema.GenerationConfig) and isinstance(typed.train, schema.TrainConfig)
    assert typed.to_dict() == config  # the typed form and the dict form are one config
    raw = yaml.safe_load(recipe_path(name).read_text())
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if key == "gradient_checkpointing":
                    key = "activation_checkpointing"
                got = getattr(getattr(typed, section), key, None)
                if got is None and section == "train":
                    got = typed.train.extra.get(key)
                if key != "source" and not isinstance(value, str):  # paths are re-rooted; numbers may be coerced
                    assert got == value, f"{section}.{key}"
    assert not any("gradient_checkpointing" in line for line in recipe_path(name).read_text().splitlines()
                   if not line.lstrip().startswith("#")), "recipes use transformers 5's activation_checkpointing"


def test_the_old_checkpointing_name_is_read_in_each_layer_and_a_later_layer_wins(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("policy: {model: tiny}\ntrain: {gradient_checkpointing: false}\n")
    assert loop.load_config(recipe)["train"]["activation_checkpointing"] is False
    assert "gradient_checkpointing" not in loop.load_config(recipe)["train"]
    assert loop.load_config(recipe, ["train.activation_checkpointing=true"])["train"]["activation_checkpointing"] is True
    assert loop.load_config(None, ["train.gradient_checkpointing=false"])["train"]["activation_checkpointing"] is False
    recipe.write_text("train: {gradient_checkpointing: false, activation_checkpointing: true}\n")
    with pytest.raises(ValueError, match="one setting, keep activation_checkpointing"):
        loop.load_config(recipe)


def test_unknown_keys_say_what_they_meant():
    with pytest.raises(ValueError, match="did you mean 'temperature'"):
        loop.load_config(None, ["generation.temperture=0.5"])
    with pytest.raises(ValueError, match="unknown config key 'judge.xyz'"):
        schema.RunConfig.from_dict({"judge": {"xyz": 1}})
    with pytest.raises(ValueError, match="did you mean 'iterations'"):
        schema.RunConfig.from_dict({"iteration": 2})


def test_rules_that_tie_keys_together():
    with pytest.raises(ValueError, match="max_prompt_length must be < train.max_length"):
        loop.load_config(None, ["train.max_length=64", "train.max_prompt_length=64"])
    with pytest.raises(ValueError, match="cyclic_style needs judge.markers"):
        loop.load_config(None, ["judge.type=cyclic_style"])
    with pytest.raises(ValueError, match="must be one of sppo, sppo_single, sppo_hard, dpo, ipo"):
        loop.load_config(None, ["train.loss_type=kto"])  # the losses module's own list
    with pytest.raises(ValueError, match="generation.bf16 is for the transformers backend"):
        loop.load_config(None, ["generation.backend=vllm", "generation.bf16=true"])
    assert loop.load_config(None, ["generation.bf16=true"])["generation"]["bf16"] is True


def test_docs_config_md_is_the_generated_reference():
    assert (ROOT / "docs" / "config.md").read_text() == loop.config_reference(), "regenerate: sppo-lite keys > docs/config.md"
    reference = loop.config_reference()
    for key, _ in fields_with_rules():
        assert f"`{key}`" in reference
