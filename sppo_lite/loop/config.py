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

__all__ = ["DEFAULT_CONFIG", "JUDGE_TYPES", "load_config", "apply_overrides", "read_yaml_mapping", "check_config",
           "check_iterations", "check_prompt_source"]

JUDGE_TYPES = ("pairrm", "reward_model", "length", "sentiment", "committee", "cyclic_style")
_PROMPT_SUFFIXES = (".jsonl", ".json", ".parquet")

# Every key a config may set, with its default. Configs override these; unknown keys are errors,
# except in `train`, which also takes any TrainingArguments field (checked against SPPOConfig).
DEFAULT_CONFIG = {
    "seed": 0,
    "iterations": 3,
    "policy": {
        "model": "mistralai/Mistral-7B-Instruct-v0.2",  # "tiny": a random tiny Mistral built locally
        "mode": "full",                    # full | lora | qlora (training; generation uses the merged π_t)
        "dtype": None,                     # None: bf16 / fp16 / fp32 by device
        "device": "auto",                  # auto: cuda when available, else cpu
    },
    "prompts": {
        "source": "data/prompts.jsonl",    # .jsonl / .parquet / hub dataset id (UltraFeedback)
        "split": "train",
        "column": None,
        "thirds": 3,                       # disjoint parts, one per iteration (paper: 3); null: all prompts every iteration
        "n_prompts": None,                 # per iteration; None = the whole part
    },
    "generation": {
        "backend": "transformers",         # transformers | vllm
        "k": 5, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 512,
        "batch_size": 8, "max_prompt_tokens": 512, "long_prompts": "skip",
        "shard_size": 256,                 # prompts per resumable shard
    },
    "judge": {
        "type": "pairrm",                  # pairrm | reward_model | length | sentiment | committee | cyclic_style
        "model": "llm-blender/PairRM",     # "tiny": a tiny PairRM-shaped ranker built locally
        "mode": "official",                # pairrm: official (BT scores, as the paper) | pairwise
        "batch_size": 16, "dtype": None, "device": "auto",
        "template_prompts": True,          # show the judge the prompt in π_t's chat template (official rank.py)
        "markers": None,                   # cyclic_style: one marker string per style
        "style_matrix": None,              # cyclic_style: the styles' preference matrix (default game.weighted_cycle())
        "quality_keyword": None,           # cyclic_style: q(y) = occurrences of this word (within-style quality)
        "quality_weight": 0.2,             # cyclic_style: P = (1 − w)·S + w·σ(q_i − q_j)
        "length_scale": 20.0,              # length judge: P_ij = σ((len_i − len_j)/scale)
        "words_per_point": 60.0,           # sentiment judge: s = VADER compound − words/words_per_point
        "sentiment_scale": 0.1,            # sentiment judge: P_ij = σ((s_i − s_j)/sentiment_scale)
        "shard_size": 256,
    },
    "build": {
        "pair_mode": "best_worst",         # official: argmax / argmin judge score; or all
        "ref_batch_size": 8,
    },
    "train": {
        "loss_type": "sppo", "beta": 0.001, "learning_rate": 5.0e-7, "optim": "rmsprop",
        "lr_scheduler_type": "linear", "warmup_steps": 0.1, "num_train_epochs": 1,  # warmup < 1: a ratio
        "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
        "max_length": 1024, "max_prompt_length": 512, "gradient_checkpointing": True,
        "bf16": "auto", "logging_steps": 10, "save_steps": 100, "lora_r": 16, "lora_alpha": 32,
        "lora_dropout": 0.05, "reference": "precomputed",
        # Any other TrainingArguments field may be added here (weight_decay, report_to, max_grad_norm, ...).
    },
}

# train keys that are ours (not TrainingArguments fields) and TrainingArguments fields the loop sets itself.
_TRAIN_OWN = ("lora_r", "lora_alpha", "lora_dropout", "bf16")
_TRAIN_SET_BY_LOOP = {"output_dir": "the run's folder", "seed": "the top-level `seed`",
                      "use_cpu": "policy.device", "resume_from_checkpoint": "the loop (it resumes by itself)",
                      "save_strategy": "the loop (train.save_steps sets how often)",
                      "remove_unused_columns": "SPPOTrainer (it must stay False)"}

_DTYPES = (None, "float32", "float16", "bfloat16")


# ---------------------------------------------------------------- reading

def _did_you_mean(key: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
        config = _merge(config, _source_from(read_yaml_mapping(path), Path(path).resolve().parent))
    config = _merge(config, _source_from(updates or {}, Path.cwd()))
    config = _merge(config, _source_from(_overrides_to_dict(overrides), Path.cwd()))
    loss = config["train"].get("loss_type")
    if isinstance(loss, list) and len(loss) == 1:  # TRL 1.x's form, loss_type: [sppo]
        config["train"]["loss_type"] = loss[0]
    check_config(config)
    return config


def check_prompt_source(config: dict) -> None:
    """A prompt file that is not there, said before any work (with where relative paths are read from)."""
    source = config["prompts"]["source"]
    if source.lower().endswith(_PROMPT_SUFFIXES) and not Path(source).is_file():
        raise ValueError(f"prompts.source {source} does not exist: a relative path in a recipe is read from the "
                         f"recipe's folder, one given with --set from the working directory")


# ---------------------------------------------------------------- checking

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _fail(key: str, allowed: str, value) -> None:
    raise ValueError(f"config key {key} must be {allowed}, got {value!r}")


def _int(config, key, low=None, optional=False):
    value = _get(config, key)
    if optional and value is None:
        return
    if not _is_int(value) or (low is not None and value < low):
        _fail(key, ("null or " if optional else "") + "an integer" + (f" >= {low}" if low is not None else ""), value)


def _number(config, key, low=None, high=None, low_open=False, high_open=False):
    value = _get(config, key)
    ok = _is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        _fail(key, "a finite number" + (f" {lo}" if lo else "") + (" and" if lo and hi else "") + (f" {hi}" if hi else ""),
              value)


def _choice(config, key, choices):
    value = _get(config, key)
    if value not in choices:
        _fail(key, "one of " + ", ".join("null" if c is None else str(c) for c in choices), value)


def _text(config, key, optional=False):
    value = _get(config, key)
    if optional and value is None:
        return
    if not isinstance(value, str) or not value.strip():
        _fail(key, ("null or " if optional else "") + "a non-empty string", value)


def _bool(config, key, extra=()):
    value = _get(config, key)
    if not isinstance(value, bool) and value not in extra:
        _fail(key, "true or false" + "".join(f" or {e!r}" for e in extra), value)


def _get(config, key):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def check_config(config: dict) -> None:
    """Raise one ValueError naming the first key whose value has the wrong type or range."""
    from ..generation import LONG_PROMPT_POLICIES
    from ..losses import LOSSES
    from ..modeling import LOAD_MODES

    _int(config, "seed", 0)
    _int(config, "iterations", 1)
    _text(config, "policy.model")
    _choice(config, "policy.mode", LOAD_MODES)
    _choice(config, "policy.dtype", _DTYPES)
    _text(config, "policy.device")
    _text(config, "prompts.source")
    _text(config, "prompts.split")
    _text(config, "prompts.column", optional=True)
    _int(config, "prompts.thirds", 1, optional=True)
    _int(config, "prompts.n_prompts", 1, optional=True)
    _choice(config, "generation.backend", ("transformers", "vllm"))
    g = config["generation"]
    if not _is_int(g["k"]) or g["k"] < 2:
        _fail("generation.k", "an integer >= 2 (SPPO compares each sample with the others)", g["k"])
    _number(config, "generation.temperature", 0)
    _number(config, "generation.top_p", 0, 1, low_open=True)
    _int(config, "generation.max_new_tokens", 1)
    _int(config, "generation.batch_size", 1)
    _int(config, "generation.max_prompt_tokens", 1, optional=True)
    _choice(config, "generation.long_prompts", LONG_PROMPT_POLICIES)
    _int(config, "generation.shard_size", 1)
    _choice(config, "judge.type", JUDGE_TYPES)
    _text(config, "judge.model")
    _choice(config, "judge.mode", ("official", "pairwise"))
    _int(config, "judge.batch_size", 1)
    _choice(config, "judge.dtype", _DTYPES)
    _text(config, "judge.device")
    _bool(config, "judge.template_prompts")
    j = config["judge"]
    if j["type"] == "committee":  # its relevance criterion applies the LM's own chat template to the raw prompt
        if j["template_prompts"]:
            raise ValueError("config key judge.template_prompts must be false for the committee judge: it reads the "
                             "raw prompt (set judge.template_prompts: false)")
        if j["model"] in ("llm-blender/PairRM", "tiny"):
            raise ValueError(f"config key judge.model must be a causal LM for the committee judge (its relevance "
                             f"criterion), e.g. smollm2-135m-instruct, got {j['model']!r}")
    j = config["judge"]
    if j["markers"] is not None and (not isinstance(j["markers"], list) or len(j["markers"]) < 2
                                     or not all(isinstance(m, str) and m for m in j["markers"])):
        _fail("judge.markers", "null or a list of at least 2 non-empty strings", j["markers"])
    if j["type"] == "cyclic_style" and not j["markers"]:
        raise ValueError("judge.type cyclic_style needs judge.markers: one marker string per style")
    _text(config, "judge.quality_keyword", optional=True)
    _number(config, "judge.quality_weight", 0, 1)
    _number(config, "judge.length_scale", 0, low_open=True)
    _number(config, "judge.words_per_point", 0, low_open=True)
    _number(config, "judge.sentiment_scale", 0, low_open=True)
    _int(config, "judge.shard_size", 1)
    _choice(config, "build.pair_mode", ("best_worst", "all"))
    _int(config, "build.ref_batch_size", 1)
    _check_train(config)
    p = config["prompts"]
    if p["thirds"] is not None and config["iterations"] > p["thirds"]:
        raise ValueError(f"iterations ({config['iterations']}) exceeds prompts.thirds ({p['thirds']}): "
                         f"each iteration needs its own part of the prompts")


def _check_train(config: dict) -> None:
    from ..losses import LOSSES
    from ..trainer import REFERENCES, SPPOConfig

    _choice(config, "train.loss_type", LOSSES)
    _number(config, "train.beta", 0, low_open=True)
    _number(config, "train.learning_rate", 0, low_open=True)
    _number(config, "train.warmup_steps", 0)
    _number(config, "train.num_train_epochs", 0, low_open=True)
    _int(config, "train.per_device_train_batch_size", 1)
    _int(config, "train.gradient_accumulation_steps", 1)
    _int(config, "train.max_length", 2)
    _int(config, "train.max_prompt_length", 1)
    tr = config["train"]
    if tr["max_prompt_length"] >= tr["max_length"]:
        raise ValueError(f"config key train.max_prompt_length must be < train.max_length ({tr['max_length']}), "
                         f"got {tr['max_prompt_length']}")
    _bool(config, "train.gradient_checkpointing")
    _bool(config, "train.bf16", extra=("auto",))
    _number(config, "train.logging_steps", 0, low_open=True)
    _number(config, "train.save_steps", 0, low_open=True)
    _int(config, "train.lora_r", 1)
    _number(config, "train.lora_alpha", 0, low_open=True)
    _number(config, "train.lora_dropout", 0, 1, high_open=True)
    _choice(config, "train.reference", REFERENCES)
    _text(config, "train.optim")
    _text(config, "train.lr_scheduler_type")
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
