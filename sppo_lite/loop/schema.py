"""The recipe's keys as typed dataclasses: one field per YAML key, with its default, help and allowed values.

    RunConfig(seed, iterations, policy, prompts, generation, judge, build, train)
    RunConfig.from_dict(d)   the typed form of a merged config dict (unknown keys: "did you mean")
    RunConfig.check()        every field's rule, then the rules that tie fields together; one ValueError
    RunConfig.to_dict()      the plain dict the pipeline, its fingerprints and config.json use

A recipe is read once at the boundary (loop.load_config): merged over the defaults, made a RunConfig,
checked, and handed on as its dict. `train` is open: besides its fields it takes any
transformers.TrainingArguments field (kept in TrainConfig.extra, checked against SPPOConfig).
Written by hand rather than with HfArgumentParser: recipes are nested sections, which it does not read.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Rule", "PolicyConfig", "PromptsConfig", "GenerationConfig", "JudgeConfig", "BuildConfig", "TrainConfig",
           "RunConfig", "SECTIONS", "JUDGE_TYPES", "DTYPES", "did_you_mean", "config_reference"]

JUDGE_TYPES = ("pairrm", "reward_model", "length", "sentiment", "committee", "cyclic_style")
DTYPES = (None, "float32", "float16", "bfloat16")


# ---------------------------------------------------------------- rules

@dataclass(frozen=True)
class Rule:
    """What a key allows: `ok(value)` says whether a value is allowed, `allowed` says it in words."""
    words: str | Callable[[], str]
    ok: Callable[[Any], bool]

    @property
    def allowed(self) -> str:
        return self.words() if callable(self.words) else self.words

    def check(self, key: str, value) -> None:
        if not self.ok(value):
            raise ValueError(f"config key {key} must be {self.allowed}, got {value!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def integer(low=None, optional=False, why: str = "") -> Rule:
    words = ("null or " if optional else "") + "an integer" + (f" >= {low}" if low is not None else "") + why
    return Rule(words, lambda v: (optional and v is None) or (_is_int(v) and (low is None or v >= low)))


def number(low=None, high=None, low_open=False, high_open=False) -> Rule:
    lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high}"

    def ok(v):
        return (_is_number(v) and (low is None or (v > low if low_open else v >= low))
                and (high is None or (v < high if high_open else v <= high)))
    return Rule("a finite number" + (f" {lo}" if lo else "") + (" and" if lo and hi else "") + (f" {hi}" if hi else ""),
                ok)


def choice(*choices) -> Rule:
    return Rule("one of " + ", ".join("null" if c is None else str(c) for c in choices), lambda v: v in choices)


def choice_from(module: str, name: str) -> Rule:
    """One of the tuple `name` of sppo_lite.`module`, imported when first checked (the package's one list)."""
    def choices():
        import importlib

        return getattr(importlib.import_module(f"sppo_lite.{module}"), name)
    return Rule(lambda: choice(*choices()).allowed, lambda v: v in choices())


def text(optional=False) -> Rule:
    return Rule(("null or " if optional else "") + "a non-empty string",
                lambda v: (optional and v is None) or (isinstance(v, str) and bool(v.strip())))


def boolean(*extra) -> Rule:
    return Rule("true or false" + "".join(f" or {e!r}" for e in extra),
                lambda v: isinstance(v, bool) or v in extra)


def markers_rule() -> Rule:
    return Rule("null or a list of at least 2 non-empty strings",
                lambda v: v is None or (isinstance(v, list) and len(v) >= 2 and all(isinstance(m, str) and m for m in v)))


def matrix_rule() -> Rule:
    return Rule("null or a square list of lists of numbers",
                lambda v: v is None or (isinstance(v, list) and all(isinstance(r, list) and len(r) == len(v)
                                                                     and all(_is_number(x) for x in r) for r in v)))


def key(default, help: str, rule: Rule | None = None):
    """A recipe key: its default, one line of help, the rule its value must follow."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata={"help": help, "rule": rule})
    return field(default=default, metadata={"help": help, "rule": rule})


# ---------------------------------------------------------------- sections

@dataclass
class PolicyConfig:
    """policy: the model SPPO starts from (π_1 of the loop) and how it is loaded."""
    model: str = key("mistralai/Mistral-7B-Instruct-v0.2",
                     "a Hub id, a model folder, a named model (smollm2-135m-instruct), or tiny (a random tiny Mistral)",
                     text())
    mode: str = key("full", "full | lora | qlora (training; generation uses the merged π_t)",
                    choice_from("modeling", "LOAD_MODES"))
    dtype: str | None = key(None, "null: bf16 / fp16 / fp32 by device", choice(*DTYPES))
    device: str = key("auto", "auto: cuda when available, else cpu", text())


@dataclass
class PromptsConfig:
    """prompts: where each iteration's prompts come from."""
    source: str = key("data/prompts.jsonl", ".jsonl / .json / .parquet file, or a Hub dataset id (UltraFeedback)", text())
    split: str = key("train", "the dataset split (Hub datasets)", text())
    column: str | None = key(None, "the prompt column; null: prompt, or the first message of a chat", text(optional=True))
    thirds: int | None = key(3, "disjoint parts, one per iteration (paper: 3); null: all prompts every iteration",
                             integer(1, optional=True))
    n_prompts: int | None = key(None, "prompts per iteration; null: the whole part", integer(1, optional=True))


@dataclass
class GenerationConfig:
    """generation: K samples per prompt from π_t."""
    backend: str = key("transformers", "transformers | vllm", choice("transformers", "vllm"))
    k: int = key(5, "samples per prompt", integer(2, why=" (SPPO compares each sample with the others)"))
    temperature: float = key(0.7, "sampling temperature", number(0))
    top_p: float = key(0.9, "nucleus sampling", number(0, 1, low_open=True))
    max_new_tokens: int = key(512, "the token cap of an answer", integer(1))
    batch_size: int = key(8, "prompts per generate() call (does not change the samples)", integer(1))
    max_prompt_tokens: int | None = key(512, "longest prompt in π_t's chat template", integer(1, optional=True))
    long_prompts: str = key("skip", "skip | truncate prompts over max_prompt_tokens", choice_from("generation", "LONG_PROMPT_POLICIES"))
    shard_size: int = key(256, "prompts per resumable shard", integer(1))
    bf16: bool = key(False, "sample π_t (and answer evaluation prompts) under bf16 autocast, weights kept as "
                     "loaded: faster on CPUs with AVX512-BF16", boolean())

    def check_together(self) -> None:
        if self.bf16 and self.backend == "vllm":
            raise ValueError("config key generation.bf16 is for the transformers backend (vLLM samples in "
                             "policy.dtype): set generation.bf16: false, or policy.dtype: bfloat16")


@dataclass
class JudgeConfig:
    """judge: who decides P(y ≻ y') for each pair of a prompt's K samples."""
    type: str = key("pairrm", " | ".join(JUDGE_TYPES), choice(*JUDGE_TYPES))
    model: str = key("llm-blender/PairRM", "the judge's model (pairrm, reward_model, committee); tiny: a tiny "
                     "PairRM-shaped ranker built locally", text())
    mode: str = key("official", "pairrm: official (BT scores, as the paper) | pairwise", choice("official", "pairwise"))
    batch_size: int = key(16, "pairs or responses per forward pass", integer(1))
    dtype: str | None = key(None, "null: by device", choice(*DTYPES))
    device: str = key("auto", "auto: cuda when available, else cpu", text())
    template_prompts: bool = key(True, "show the judge the prompt in π_t's chat template (official rank.py)", boolean())
    markers: list | None = key(None, "cyclic_style: one marker string per style", markers_rule())
    style_matrix: list | None = key(None, "cyclic_style: the styles' preference matrix (null: game.weighted_cycle())",
                                    matrix_rule())
    quality_keyword: str | None = key(None, "cyclic_style: q(y) = occurrences of this word (within-style quality)",
                                      text(optional=True))
    quality_weight: float = key(0.2, "cyclic_style: P = (1 − w)·S + w·σ(q_i − q_j)", number(0, 1))
    length_scale: float = key(20.0, "length judge: P_ij = σ((len_i − len_j)/scale)", number(0, low_open=True))
    words_per_point: float = key(60.0, "sentiment judge: s = VADER compound − words/words_per_point",
                                 number(0, low_open=True))
    sentiment_scale: float = key(0.1, "sentiment judge: P_ij = σ((s_i − s_j)/sentiment_scale)", number(0, low_open=True))
    shard_size: int = key(256, "prompts per resumable shard", integer(1))

    def check_together(self) -> None:
        if self.type == "committee":  # its relevance criterion applies the LM's own chat template to the raw prompt
            if self.template_prompts:
                raise ValueError("config key judge.template_prompts must be false for the committee judge: it reads "
                                 "the raw prompt (set judge.template_prompts: false)")
            if self.model in ("llm-blender/PairRM", "tiny"):
                raise ValueError(f"config key judge.model must be a causal LM for the committee judge (its relevance "
                                 f"criterion), e.g. smollm2-135m-instruct, got {self.model!r}")
        if self.type == "cyclic_style" and not self.markers:
            raise ValueError("judge.type cyclic_style needs judge.markers: one marker string per style")


@dataclass
class BuildConfig:
    """build: the training rows made from the judged samples."""
    pair_mode: str = key("best_worst", "best_worst (official: argmax / argmin of the judge's score) | all (every "
                         "sample, its own target)", choice("best_worst", "all"))
    ref_batch_size: int = key(8, "sequences per reference log-prob pass", integer(1))
    bf16: bool = key(False, "compute the reference log-probs log π_t under bf16 autocast", boolean())


@dataclass
class TrainConfig:
    """train: one iteration's training; also takes any transformers.TrainingArguments field (kept in `extra`)."""
    loss_type: str = key("sppo", "sppo | sppo_single | sppo_hard | dpo | ipo (or a list of one, as TRL)",
                         choice_from("losses", "LOSSES"))
    beta: float = key(0.001, "β: η = 1/β", number(0, low_open=True))
    learning_rate: float = key(5.0e-7, "peak learning rate", number(0, low_open=True))
    optim: str = key("rmsprop", "a TrainingArguments optimizer name", text())
    lr_scheduler_type: str = key("linear", "a TrainingArguments scheduler name", text())
    warmup_steps: float = key(0.1, "warmup steps; below 1: a ratio of the steps", number(0))
    num_train_epochs: float = key(1, "passes over each iteration's data", number(0, low_open=True))
    per_device_train_batch_size: int = key(8, "rows per device per step", integer(1))
    gradient_accumulation_steps: int = key(1, "steps accumulated per optimizer step", integer(1))
    max_length: int = key(1024, "prompt + answer tokens", integer(2))
    max_prompt_length: int = key(512, "prompt tokens (kept from the end)", integer(1))
    activation_checkpointing: bool = key(True, "recompute activations in backward (less memory, ~30 % slower); "
                                         "gradient_checkpointing is read as this name", boolean())
    bf16: Any = key("auto", "true | false | auto (bf16 where supported, fp16 on a T4, fp32 on CPU)", boolean("auto"))
    logging_steps: float = key(10, "steps between logged losses", number(0, low_open=True))
    save_steps: float = key(100, "steps between resumable checkpoints", number(0, low_open=True))
    lora_r: int = key(16, "LoRA rank (lora / qlora)", integer(1))
    lora_alpha: float = key(32, "LoRA alpha", number(0, low_open=True))
    lora_dropout: float = key(0.05, "LoRA dropout", number(0, 1, high_open=True))
    reference: str = key("precomputed", "precomputed (the build stage's log π_t) | on_the_fly",
                         choice_from("trainer", "REFERENCES"))
    extra: dict = field(default_factory=dict, metadata={"help": "other TrainingArguments fields", "rule": None})

    def check_together(self) -> None:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"config key train.max_prompt_length must be < train.max_length ({self.max_length}), "
                             f"got {self.max_prompt_length}")


SECTIONS = {"policy": PolicyConfig, "prompts": PromptsConfig, "generation": GenerationConfig, "judge": JudgeConfig,
            "build": BuildConfig, "train": TrainConfig}


def _keys(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name != "extra"]


def did_you_mean(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _section(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"config key {where!r} must be a mapping of key: value, got {values!r}")
    names = {f.name for f in _keys(cls)}
    extra = {k: v for k, v in values.items() if k not in names}
    if extra and cls is not TrainConfig:
        name = next(iter(extra))
        raise ValueError(f"unknown config key {where + '.' + name!r}{did_you_mean(name, names)}; known here: "
                         f"{', '.join(sorted(names))}")
    known = {k: v for k, v in values.items() if k in names}
    return cls(**known, extra=extra) if cls is TrainConfig else cls(**known)


@dataclass
class RunConfig:
    """A whole recipe: the run's seed and number of iterations, and one section per pipeline part."""
    seed: int = key(0, "seeds sampling, adapters and data order: (seed, prompt id, sample index)", integer(0))
    iterations: int = key(3, "SPPO iterations (each needs its own prompt part unless prompts.thirds is null)",
                          integer(1))
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, config: dict) -> "RunConfig":
        """The typed form of a config dict; unknown keys (outside train's TrainingArguments) are errors."""
        top = {"seed", "iterations", *SECTIONS}
        for name in config:
            if name not in top:
                raise ValueError(f"unknown config key {name!r}{did_you_mean(name, top)}; known here: "
                                 f"{', '.join(sorted(top))}")
        sections = {name: _section(sc, config.get(name, {}), name) for name, sc in SECTIONS.items()}
        scalars = {k: config[k] for k in ("seed", "iterations") if k in config}
        return cls(**scalars, **sections)

    def to_dict(self) -> dict:
        """The plain, JSON-ready dict (train's TrainingArguments extras flat beside its own keys)."""
        out = {"seed": self.seed, "iterations": self.iterations}
        for name in SECTIONS:
            section = getattr(self, name)
            values = {f.name: getattr(section, f.name) for f in _keys(type(section))}
            if name == "train":
                values.update(section.extra)
            out[name] = values
        return out

    def check(self) -> None:
        """Every key's rule (type and range), then the rules between keys; the first failure as one ValueError."""
        for f in _keys(RunConfig):
            if f.metadata.get("rule"):
                f.metadata["rule"].check(f.name, getattr(self, f.name))
        for name in SECTIONS:
            section = getattr(self, name)
            for f in _keys(type(section)):
                rule = f.metadata.get("rule")
                if rule is not None:
                    rule.check(f"{name}.{f.name}", getattr(section, f.name))
            if hasattr(section, "check_together"):
                section.check_together()
        if self.prompts.thirds is not None and self.iterations > self.prompts.thirds:
            raise ValueError(f"iterations ({self.iterations}) exceeds prompts.thirds ({self.prompts.thirds}): "
                             f"each iteration needs its own part of the prompts")


def config_reference() -> str:
    """Every recipe key as markdown: section, key, default, what it allows, what it does (docs/config.md)."""
    lines = ["# Recipe keys", "",
             "Every key a recipe (`configs/*.yaml`) or `--set section.key=value` may set, with its default. Generated",
             "from `sppo_lite/loop/schema.py` (`sppo-lite keys > docs/config.md`); unknown keys are errors, except",
             "in `train`, which also takes any `transformers.TrainingArguments` field.", ""]

    def rows(cls, prefix):
        for f in _keys(cls):
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = "null" if default is None else repr(default) if isinstance(default, str) else str(default).lower() \
                if isinstance(default, bool) else str(default)
            rule = f.metadata.get("rule")
            cells = [f"`{prefix}{f.name}`", f"`{shown}`", rule.allowed if rule else "", f.metadata["help"]]
            yield "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines += ["| key | default | allowed | meaning |", "|---|---|---|---|", *rows(RunConfig, "")]
    for name, cls in SECTIONS.items():
        lines += ["", f"## `{name}`", "", (cls.__doc__ or "").strip(), "",
                  "| key | default | allowed | meaning |", "|---|---|---|---|", *rows(cls, f"{name}.")]
    return "\n".join(lines) + "\n"

