"""The pipeline's config: every key with its default, YAML and "a.b=value" overrides, checked before any work.

    DEFAULT_CONFIG     every key a recipe may set, with its default (unknown keys are errors)
    load_config        DEFAULT_CONFIG ← YAML file ← updates (nested dict) ← "a.b=value" overrides, checked
    check_config       type and range of every value, one line naming the key and what is allowed

Relative prompt files: a path written in a YAML recipe is read from the recipe's own folder (so
`configs/x.yaml` says `../data/prompts.jsonl`); a path given as an override or update is read from the
working directory, as a shell would; the default is the project's `data/prompts.jsonl`. After loading,
`prompts.source` is that file's path from the working directory, so every process of a launch reads the
same file whatever folder the command was typed in.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from pathlib import Path

import yaml

from ..resources import PROJECT_ROOT, recipe_path
from .schema import JUDGE_TYPES, RunConfig, _is_int, did_you_mean

__all__ = ["DEFAULT_CONFIG", "JUDGE_TYPES", "RunConfig", "load_config", "load_run_config", "apply_overrides", "read_yaml_mapping", "check_config",
           "check_iterations", "check_prompt_source"]

_PROMPT_SUFFIXES = (".jsonl", ".json", ".parquet")

# Every key a config may set, with its default: the dict form of schema.RunConfig() (each key's default, help and
# allowed values are its dataclass field). Unknown keys are errors, except in `train`, which also takes any
# TrainingArguments field (checked against SPPOConfig).
DEFAULT_CONFIG = RunConfig().to_dict()

# train keys that are ours (not TrainingArguments fields) and TrainingArguments fields the loop sets itself.
_TRAIN_OWN = ("lora_r", "lora_alpha", "lora_dropout", "bf16")
_TRAIN_SET_BY_LOOP = {"output_dir": "the run's folder", "seed": "the top-level `seed`",
                      "use_cpu": "policy.device", "resume_from_checkpoint": "the loop (it resumes by itself)",
                      "save_strategy": "the loop (train.save_steps sets how often)",
                      "remove_unused_columns": "SPPOTrainer (it must stay False)"}

# ---------------------------------------------------------------- reading

_did_you_mean = did_you_mean


def _merge(base: dict, update: dict, where: str = "", open_keys=("train",)) -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if key not in base:
            if where.rstrip(".") in open_keys:  # train: any TrainingArguments field, checked later
                out[key] = value
                continue
            raise ValueError(f"unknown config key {where + key!r}{_did_you_mean(key, base)}; known here: "
                             f"{', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"config key {where + key!r} must be a mapping of key: value, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        elif isinstance(base[key], float) and isinstance(value, str):
            try:  # YAML 1.1 reads 5e-7 (no dot) as text
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"config key {where + key!r} must be a number, got {value!r}") from None
        else:
            out[key] = value
    return out


def _yaml_value(text: str, where: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{where} is not valid YAML{at}: {getattr(err, 'problem', None) or err}") from None


def _overrides_to_dict(overrides) -> dict:
    update: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. generation.k=8")
        dotted, raw = item.split("=", 1)
        node = update
        *parents, last = dotted.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is a value, not a section")
        node[last] = _yaml_value(raw, f"override {item!r}")
    return update


def apply_overrides(config: dict, overrides) -> dict:
    """Apply "a.b=value" strings (value parsed as YAML) on top of config."""
    return _merge(config, _overrides_to_dict(overrides))


def read_yaml_mapping(path) -> dict:
    """A YAML file that must hold a mapping; one-line errors when it is missing, unreadable or not one."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {path} does not exist" + (" (it is a folder)" if p.is_dir() else ""))
    data = _yaml_value(p.read_text(), f"config file {path}")
    if data is None:  # an empty file would silently run every default (Mistral-7B on PairRM)
        raise ValueError(f"config file {path} is empty: a recipe sets at least policy.model and the judge "
                         f"(start from a shipped one, e.g. configs/cpu-tiny.yaml)")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must be a YAML mapping of key: value")
    return data


def _renamed(update: dict, where: str) -> dict:
    """`update` with train.gradient_checkpointing (deprecated in transformers 5.23) as activation_checkpointing.

    Renamed in each layer (recipe, updates, overrides) before they are merged, so a later layer's value wins
    whichever name it uses."""
    train = update.get("train") if isinstance(update, dict) else None
    if not isinstance(train, dict) or "gradient_checkpointing" not in train:
        return update
    update = copy.deepcopy(update)
    old = update["train"].pop("gradient_checkpointing")
    if "activation_checkpointing" in update["train"] and update["train"]["activation_checkpointing"] != old:
        raise ValueError(f"{where} sets train.gradient_checkpointing ({old}) and train.activation_checkpointing "
                         f"({update['train']['activation_checkpointing']}): they are one setting, keep "
                         f"activation_checkpointing")
    update["train"]["activation_checkpointing"] = old
    return update


def _source_from(update: dict, base: Path | None) -> dict:
    """`update` with a relative prompt-file path made relative to the working directory from `base`."""
    source = (update.get("prompts") or {}).get("source") if isinstance(update.get("prompts"), dict) else None
    if not isinstance(source, str) or not source.lower().endswith(_PROMPT_SUFFIXES):
        return update  # a hub dataset id, or not set here
    path = Path(source).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    update = copy.deepcopy(update)
    update["prompts"]["source"] = _display_path(path)
    return update


def _display_path(path: Path) -> str:
    """A path from the working directory when it is below it, else absolute (no machine paths in outputs)."""
    absolute = path.resolve() if path.is_absolute() else (Path.cwd() / path).resolve()
    try:
        return str(absolute.relative_to(Path.cwd().resolve()))
    except ValueError:
        return os.path.relpath(absolute) if absolute.anchor == Path.cwd().anchor else str(absolute)


def load_config(path=None, overrides=None, updates: dict | None = None) -> dict:
    """DEFAULT_CONFIG ← YAML file ← `updates` (a nested dict) ← "a.b=value" overrides; checked (check_config).

    Relative prompt files: from the YAML file's folder for the file's value, from the working
    directory for updates and overrides, from the project root for the default.
    """
    config = _source_from(DEFAULT_CONFIG, PROJECT_ROOT)
    if path is not None:
        path = recipe_path(path)
        config = _merge(config, _source_from(_renamed(read_yaml_mapping(path), f"config file {path}"),
                                             Path(path).resolve().parent))
    config = _merge(config, _source_from(_renamed(updates or {}, "updates"), Path.cwd()))
    config = _merge(config, _source_from(_renamed(_overrides_to_dict(overrides), "--set"), Path.cwd()))
    return load_run_config_dict(config)


def load_run_config(path=None, overrides=None, updates: dict | None = None) -> RunConfig:
    """load_config's result as a typed RunConfig (config.train.beta rather than config["train"]["beta"])."""
    return RunConfig.from_dict(load_config(path, overrides, updates))


def load_run_config_dict(config: dict) -> dict:
    """A merged config dict, normalised (TRL's list loss_type) and checked."""
    train = config["train"]
    loss = train.get("loss_type")
    if isinstance(loss, list) and len(loss) == 1:  # TRL 1.x's form, loss_type: [sppo]
        train["loss_type"] = loss[0]
    check_config(config)
    return config


def check_prompt_source(config: dict) -> None:
    """A prompt file that is not there, said before any work (with where relative paths are read from)."""
    source = config["prompts"]["source"]
    if source.lower().endswith(_PROMPT_SUFFIXES) and not Path(source).is_file():
        raise ValueError(f"prompts.source {source} does not exist: a relative path in a recipe is read from the "
                         f"recipe's folder, one given with --set from the working directory")


# ---------------------------------------------------------------- checking

def check_config(config: dict) -> None:
    """Raise one ValueError naming the first key whose value has the wrong type or range.

    Each key's rule is its schema field's (RunConfig.check); train is then checked against TrainingArguments.
    """
    RunConfig.from_dict(config).check()
    _check_train(config)


def _check_train(config: dict) -> None:
    from ..trainer import SPPOConfig

    tr = config["train"]
    fields = {f.name: f for f in dataclasses.fields(SPPOConfig) if f.init}
    for key in tr:
        if key in _TRAIN_SET_BY_LOOP:
            raise ValueError(f"config key train.{key} is set by {_TRAIN_SET_BY_LOOP[key]}: remove it from train")
        if key not in fields and key not in _TRAIN_OWN:
            raise ValueError(f"unknown config key 'train.{key}'{_did_you_mean(key, [*fields, *_TRAIN_OWN])}: train takes the keys of DEFAULT_CONFIG['train'] and "
                             f"any transformers.TrainingArguments field (e.g. weight_decay, max_grad_norm, report_to)")
    # The TrainingArguments themselves check the rest (optimizer and scheduler names, report_to
    # integrations that are not installed, ...): build them once now, before any work.
    kwargs = {k: v for k, v in tr.items() if k not in _TRAIN_OWN}
    kwargs.setdefault("report_to", [])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            SPPOConfig(output_dir="unused", use_cpu=True, **kwargs)
    except (ValueError, TypeError, ImportError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"config section train is not accepted by TrainingArguments: {first}") from None
    _check_report_to(tr.get("report_to", []))


def _check_report_to(report_to) -> None:
    """Each train.report_to integration is one transformers knows and is installed: the Trainer would
    only find out after generate, judge and build have run."""
    from transformers.integrations.integration_utils import (INTEGRATION_TO_CALLBACK,
                                                             get_available_reporting_integrations)

    if report_to is None or report_to in ("none", "all"):
        return
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    for name in names:
        if name == "none":
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise ValueError(f"config key train.report_to: {name!r} is not an integration transformers knows; "
                             f"use one of {', '.join(sorted(INTEGRATION_TO_CALLBACK))}, or none")
        if name not in get_available_reporting_integrations():
            raise ValueError(f"config key train.report_to asks for {name}, which is not installed: pip install "
                             f"{name}, or drop it from train.report_to")


def check_iterations(config: dict, iterations) -> int:
    """The number of iterations to run now: `iterations` (1..config's) or the config's."""
    if iterations is None:
        return config["iterations"]
    if not _is_int(iterations) or not 1 <= iterations <= config["iterations"]:
        raise ValueError(f"--iterations must be between 1 and the config's iterations ({config['iterations']}), "
                         f"got {iterations}: raise `iterations` in the config to run more")
    return iterations
