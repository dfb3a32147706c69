"""One QLoRA SPPO training step: sppo-lite vs TRL's DPOTrainer(loss_type="sppo_hard") vs a plain HF + PEFT loop.

    python benchmarks/qlora_step.py                  # GPU: Mistral-7B shape; L1024×8, L2048×2, L2048×8 sequences
    python benchmarks/qlora_step.py --tiny           # CPU: tiny Mistral shape, same code paths, a few minutes
    python benchmarks/qlora_step.py --profile        # torch.profiler on one sppo-lite step (add --tiny on CPU)
    python benchmarks/qlora_step.py --shapes 1024x8 --variants sppo_lite,trl    # a subset (add --update to merge)
    python benchmarks/qlora_step.py --shapes 1024x8 --variants sppo_lite,trl --results-dir DIR --profile-if-behind

Measured, per shape (sequence length L × sequences per step; half prompt, half response tokens):
one optimizer step = data loading + forward + backward + optimizer step, timed between consecutive
steps after `--warmup` steps; the median of `--steps` timed steps is reported as tokens/s =
L × sequences / median step time (prompt and response tokens). Peak memory is
torch.cuda.max_memory_allocated over the warm-up and timed steps (reset after loading, so the 4-bit
weights are in it and reference precomputation is not); on CPU it is null and the process peak RSS
is given instead.

    sppo_lite    load_policy(mode="qlora", gradient_checkpointing=True) + SPPOTrainer, reference
                 log-probs precomputed with sppo_lite.data.add_reference_logps
    trl          TRL DPOTrainer(loss_type=["sppo_hard"], precompute_ref_log_probs=True), 4-bit model + peft_config
    trl_default  the same with TRL's default precompute_ref_log_probs=False (a reference forward every step)
    plain        prepare_model_for_kbit_training + get_peft_model, a hand loop: full logits → log_softmax → gather

Same everywhere: random-init MistralConfig-default model (no download; a word-level tokenizer and a
chat template built here), NF4 double quant, bf16 compute (float32 on CPU), LoRA r16 α32 dropout
0.05 on all linear layers (TRL's disable_dropout is turned off so its LoRA dropout stays too),
non-reentrant gradient checkpointing, AdamW, grad-norm clipping 1.0, the sppo_hard loss, the same
token sequences. Each (variant, shape) runs in a fresh subprocess, so allocator state and peak
memory do not leak between them. On CPU the workers use one intra-op thread with subnormal floats
flushed to zero (see BENCHMARKS.md: both otherwise swamp a tiny model's timings). Writes benchmarks/results/qlora_step-<hardware>[-tiny].json:
the first shape's variants at the top level, every shape under "shapes", ratios vs TRL (`--results-dir`
moves it). With --profile-if-behind, a sppo-lite step that misses the targets (1.1× TRL's tokens/s,
0.9× its peak memory) is profiled once more and the profile tables go in the JSON under "profile".

The random-init model is never written to disk by default (--weights memory): the driver saves the
config and tokenizer only, and each worker makes the weights on its device and quantises them inside
from_pretrained (a state dict instead of files), so a 7B worker skips a 15 GB checkpoint write and read.
--weights disk keeps the checkpoint path (saved once in --workdir, loaded by every worker).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from common import hardware, versions

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("sppo_lite", "trl", "trl_default", "plain")
SHAPES = ("1024x8", "2048x2", "2048x8")
TINY_SHAPES = ("128x8", "256x2", "256x8")
BETA = 0.1  # any β: the step's cost does not depend on it

# A word-level tokenizer: every word is one token, so a text of n words is exactly n tokens.
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]"]
# Mistral-Instruct's layout with spaces around the markers (a whitespace pre-tokenizer needs them);
# the generation prompt is the closing [/INST], so the prompt is a prefix of the full chat.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ ' [INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")
PROMPT_EXTRA, RESPONSE_EXTRA = 3, 1  # <s> [INST] ... [/INST]   and   ... </s>


# ---------------------------------------------------------------- model, tokenizer, data

def make_words(n: int = 2000, seed: int = 0) -> list[str]:
    """n distinct made-up lowercase words of two or three syllables."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(rng.choice((2, 3)))))
    return sorted(words)


def build_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + list(words))}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=CHAT_TEMPLATE, unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_input_names=["input_ids", "attention_mask"])


def model_config(tokenizer, tiny: bool):
    from transformers import MistralConfig

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, sliding_window=None)  # v0.2 has no sliding window
    if tiny:  # dimensions multiples of 64: bitsandbytes quantizes in blocks of 64
        return MistralConfig(vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=128, intermediate_size=256,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, **ids)
    return MistralConfig(**ids)  # Mistral-7B: vocab 32000, hidden 4096, MLP 14336, 32 layers, 32 / 8 heads


RANDOM_WEIGHTS = "random_weights.json"  # in a model folder without weight files: build them in memory on loading


def build_model_dir(model_dir: Path, tiny: bool, weights: str = "memory") -> None:
    """Save the tokenizer and the config; with weights="disk" also a random-init model (bf16 on GPU, float32 on CPU).

    weights="memory" writes no weights, only a marker file: every worker builds random weights on the
    target device and quantises them while loading (`use_random_weights`), with no checkpoint
    written or read (Mistral-7B: 15 GB).
    """
    import torch
    from transformers import MistralForCausalLM

    tokenizer = build_tokenizer(make_words())
    config = model_config(tokenizer, tiny)
    if weights == "memory":
        config.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        (model_dir / RANDOM_WEIGHTS).write_text(json.dumps({"init": "normal", "std": config.initializer_range,
                                                            "seed": 0}))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        with torch.device(device):  # initialising 7B parameters on the GPU takes seconds, on a CPU minutes
            model = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)


def random_state_dict(config, dtype, device, seed: int = 0) -> dict:
    """Random weights for every tensor of MistralForCausalLM(config), made on `device` (no CPU copy).

    As the model's own init: linear and embedding weights ~ N(0, initializer_range), the padding row
    zero, RMSNorm weights one.
    """
    import torch
    from transformers import MistralForCausalLM

    with torch.device("meta"):
        shapes = {name: t.shape for name, t in MistralForCausalLM(config).state_dict().items()}
    generator = torch.Generator(device=device).manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            state[name] = torch.ones(shape, dtype=dtype, device=device)
        else:
            state[name] = torch.empty(shape, dtype=dtype, device=device).normal_(
                0.0, config.initializer_range, generator=generator)
    if config.pad_token_id is not None:
        state["model.embed_tokens.weight"][config.pad_token_id] = 0
    return state


def use_random_weights(model_dir) -> None:
    """Make AutoModelForCausalLM.from_pretrained(model_dir, ...) build random weights instead of reading files.

    The weights are made on the device of `device_map` and handed to from_pretrained as a state dict,
    so quantisation (quantization_config), dtype and device placement run exactly as for a checkpoint
    on disk. Every other path loads as usual. Benchmark-only: sppo_lite.modeling.load_policy and the
    TRL / plain loaders below call from_pretrained unchanged.
    """
    import torch
    import transformers
    from transformers import AutoConfig, MistralForCausalLM

    auto = transformers.AutoModelForCausalLM
    original = auto.from_pretrained
    target = Path(model_dir).resolve()

    def from_pretrained(name, *args, **kwargs):
        if args or Path(str(name)).resolve() != target:
            return original(name, *args, **kwargs)
        config = AutoConfig.from_pretrained(target)
        dtype = kwargs.get("dtype") or torch.float32
        place = (kwargs.get("device_map") or {"": "cpu"}).get("", "cpu")
        device = torch.device(f"cuda:{place}" if isinstance(place, int) else place)
        state = random_state_dict(config, dtype, device)
        model = MistralForCausalLM.from_pretrained(None, config=config, state_dict=state, **kwargs)
        del state
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model.config.name_or_path = str(target)
        return model

    auto.from_pretrained = from_pretrained


def parse_shape(shape: str) -> tuple[int, int]:
    length, n_seq = (int(x) for x in shape.lower().split("x"))
    if length % 2 or n_seq % 2 or length < 2 * (PROMPT_EXTRA + 1):
        raise ValueError(f"shape {shape!r}: L and the sequence count must be even (pairs, half prompt / half response)")
    return length, n_seq


def make_rows(n_rows: int, length: int, words, seed: int = 0) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) texts whose chats are exactly `length` tokens, half of them prompt."""
    rng = random.Random(seed)
    half = length // 2

    def text(n):
        return " ".join(rng.choice(words) for _ in range(n))

    return [(text(half - PROMPT_EXTRA), text(half - RESPONSE_EXTRA), text(half - RESPONSE_EXTRA))
            for _ in range(n_rows)]


# ---------------------------------------------------------------- the four variants (run in a worker process)

class Run:
    """What one worker needs: the model directory, the shape, the step counts, the device."""

    def __init__(self, args):
        import torch

        self.model_dir, self.profile = args.model_dir, args.profile
        self.length, self.n_seq = parse_shape(args.shape)
        self.n_pairs = self.n_seq // 2
        self.warmup, self.steps = args.warmup, args.steps
        self.lora_dropout = args.lora_dropout
        self.cuda = torch.cuda.is_available()
        self.dtype = torch.bfloat16 if self.cuda else torch.float32  # bitsandbytes on CPU computes in float32
        self.device_map = {"": 0} if self.cuda else {"": "cpu"}
        self.rows = make_rows(self.n_pairs * (self.warmup + self.steps), self.length, make_words())
        self.tmp = tempfile.mkdtemp(prefix="qlora_step_")
        self.load_s = None  # seconds to load (and quantise) the model, set by each variant
        if (Path(self.model_dir) / RANDOM_WEIGHTS).exists():
            use_random_weights(self.model_dir)

    def sync(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def trainer_args(self) -> dict:
        """TrainingArguments shared by SPPOTrainer and DPOTrainer."""
        return dict(output_dir=self.tmp, per_device_train_batch_size=self.n_pairs,
                    max_steps=self.warmup + self.steps, learning_rate=1e-5, lr_scheduler_type="constant",
                    optim="adamw_torch", max_grad_norm=1.0, bf16=self.cuda, use_cpu=not self.cuda,
                    logging_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True, seed=0,
                    dataloader_pin_memory=self.cuda)

    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(r=16, lora_alpha=32, lora_dropout=self.lora_dropout, target_modules="all-linear",
                          task_type="CAUSAL_LM")

    def load_4bit(self):
        """The base model as TRL's docs and the plain loop load it: NF4 double quant, compute in self.dtype."""
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        from sppo_lite.modeling import keep_4bit_trainable

        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=self.dtype)
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, quantization_config=bnb, dtype=self.dtype,
                                                     device_map=self.device_map)
        self.sync()
        self.load_s = time.perf_counter() - t0
        if not self.cuda:  # CPU only: an eval-mode no-grad forward would repack the weights into a format
            keep_4bit_trainable(model)  # without gradients (TRL's reference precompute does one)
        return model

    def train(self, trainer, timer) -> list[float]:
        self.reset_peak()
        trainer.train()
        return timer.step_seconds(self.warmup)

    def reset_peak(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()


def step_timer(run):
    """A TrainerCallback that clocks every step end (after a device sync); optionally profiles one step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends, self.profiler = [], None

        def on_step_end(self, args, state, control, **kwargs):
            run.sync()
            self.ends.append(time.perf_counter())
            if run.profile and state.global_step == run.warmup:
                self.profiler = start_profiler(run.cuda)
            elif self.profiler is not None and state.global_step == run.warmup + 1:
                self.profiler.stop()
                print_profile(self.profiler, run.cuda)
                self.profiler = None

        def step_seconds(self, warmup: int) -> list[float]:
            """Seconds of each step after the warm-up (end-to-end: next batch, forward, backward, optimizer)."""
            return [b - a for a, b in zip(self.ends[warmup - 1:], self.ends[warmup:])]

    return StepTimer()


def run_sppo_lite(run: Run) -> list[float]:
    from datasets import Dataset

    from sppo_lite.data import add_reference_logps, chat_messages, encode_chat
    from sppo_lite.modeling import load_policy
    from sppo_lite.trainer import SPPOConfig, SPPOTrainer

    t0 = time.perf_counter()
    model, tokenizer = load_policy(run.model_dir, mode="qlora", dtype=run.dtype, gradient_checkpointing=True,
                                   lora_r=16, lora_alpha=32, lora_dropout=run.lora_dropout)
    run.sync()
    run.load_s = time.perf_counter() - t0
    model.train()
    rows = [{"prompt": p, "chosen": chat_messages(p, c), "rejected": chat_messages(p, r)} for p, c, r in run.rows]
    encoded = encode_chat(tokenizer, rows[0]["chosen"], run.length, run.length // 2)
    assert len(encoded["input_ids"]) == run.length and encoded["prompt_length"] == run.length // 2, encoded
    dataset = add_reference_logps(Dataset.from_list(rows), model, tokenizer, batch_size=run.n_pairs,
                                  max_length=run.length, max_prompt_length=run.length // 2)
    timer = step_timer(run)
    config = SPPOConfig(loss_type="sppo_hard", beta=BETA, max_length=run.length, max_prompt_length=run.length // 2,
                        reference="precomputed", **run.trainer_args())
    trainer = SPPOTrainer(model, config, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    return run.train(trainer, timer)


def run_trl(run: Run, precompute: bool) -> list[float]:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}],
                                  "chosen": [{"role": "assistant", "content": c}],
                                  "rejected": [{"role": "assistant", "content": r}]} for p, c, r in run.rows])
    timer = step_timer(run)
    config = DPOConfig(loss_type=["sppo_hard"], beta=BETA, max_length=run.length, precompute_ref_log_probs=precompute,
                       precompute_ref_batch_size=run.n_pairs, gradient_checkpointing=True,
                       gradient_checkpointing_kwargs={"use_reentrant": False}, disable_dropout=False,
                       **run.trainer_args())
    trainer = DPOTrainer(model=run.load_4bit(), args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=run.lora_config(), callbacks=[timer])
    first = trainer.train_dataset[0]
    n_tokens = len(first["prompt_ids"]) + len(first["chosen_ids"])
    assert n_tokens == run.length and len(first["prompt_ids"]) == run.length // 2, n_tokens
    return run.train(trainer, timer)


def run_plain(run: Run) -> list[float]:
    """The loop most QLoRA tutorials write: prepare_model_for_kbit_training, full (B, T, V) logits."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer

    from sppo_lite.data import chat_messages, encode_chat, pad_chat_batch
    from sppo_lite.losses import sppo_hard_loss

    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    model = prepare_model_for_kbit_training(run.load_4bit(), use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, run.lora_config())
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    device = "cuda" if run.cuda else "cpu"
    ref = torch.zeros(run.n_pairs, device=device)  # precomputed reference log-probs: values do not change the cost

    run.reset_peak()
    ends = []
    for step in range(run.warmup + run.steps):
        rows = run.rows[step * run.n_pairs:(step + 1) * run.n_pairs]
        chats = [chat_messages(p, c) for p, c, _ in rows] + [chat_messages(p, r) for p, _, r in rows]
        batch = pad_chat_batch([encode_chat(tokenizer, m, run.length, run.length // 2) for m in chats], tokenizer)
        ids, mask = batch["input_ids"].to(device), batch["response_mask"][:, 1:].to(device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=run.cuda):
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).logits
        token_logps = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        chosen, rejected = (token_logps * mask).sum(-1).chunk(2)
        loss = sppo_hard_loss(chosen, rejected, ref, ref, BETA).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        run.sync()
        ends.append(time.perf_counter())
    return [b - a for a, b in zip(ends[run.warmup - 1:], ends[run.warmup:])]


def start_profiler(cuda: bool):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    profiler = profile(activities=activities, profile_memory=True, record_shapes=True)
    profiler.start()
    return profiler


def print_profile(profiler, cuda: bool, rows: int = 25) -> None:
    """Top ops of the profiled step by device time, CPU time and memory (allocated by the op itself)."""
    averages = profiler.key_averages()
    sorts = ([("self_device_time_total", "device (CUDA) time")] if cuda else []) + [
        ("self_cpu_time_total", "CPU time"),
        ("self_device_memory_usage" if cuda else "self_cpu_memory_usage", "memory allocated")]
    for key, title in sorts:
        print(f"\n==== one sppo-lite step: top {rows} ops by self {title} ====")
        print(averages.table(sort_by=key, row_limit=rows, max_name_column_width=60))


def worker(args) -> None:
    """Run one variant at one shape and print `RESULT {json}` as the last stdout line."""
    import torch

    if not torch.cuda.is_available():
        # On CPU, subnormal floats (tiny gradients of a random-init model, their squares in AdamW) make
        # ops 10-50x slower at random moments; GPUs do not slow down on them. Flush-to-zero keeps the CPU
        # comparison about the code, and it is set per thread: one intra-op thread keeps it on everywhere
        # (and steadies the clock on a shared machine).
        torch.set_num_threads(1)
        torch.set_flush_denormal(True)
    result = {"variant": args.worker, "shape": args.shape, "hardware": hardware()}
    run = None
    try:
        run = Run(args)
        if args.worker == "sppo_lite":
            seconds = run_sppo_lite(run)
        elif args.worker in ("trl", "trl_default"):
            seconds = run_trl(run, precompute=args.worker == "trl")
        else:
            seconds = run_plain(run)
        median = statistics.median(seconds)
        result.update(
            tokens_per_s=run.length * run.n_seq / median, median_step_s=median, step_s=seconds, load_s=run.load_s,
            peak_gb=torch.cuda.max_memory_allocated() / 1e9 if run.cuda else None,
            rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2)  # Linux: KiB
    except Exception as err:  # one variant failing (OOM, an API change) must not sink the whole table
        traceback.print_exc()
        result["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    finally:
        if run is not None:
            shutil.rmtree(run.tmp, ignore_errors=True)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the driver

def spawn(argv: list[str], tiny: bool, timeout: int, echo: bool = False, capture: bool = False) -> dict:
    """Run this script as a worker in a fresh process; its RESULT line, or the error it died with.

    Adds wall_s (the whole process: start, imports, model loading, steps); with capture, the worker's
    other stdout lines as "stdout".
    """
    t0 = time.perf_counter()
    # ROOT first, then whatever the caller had (gpu_check.sh puts its carried wheels' folder there)
    pythonpath = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONPATH=pythonpath)
    if tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""  # --tiny is the CPU run, also on a GPU machine
    try:
        proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "wall_s": time.perf_counter() - t0}
    wall_s = time.perf_counter() - t0
    lines = proc.stdout.splitlines()
    text = "\n".join(line for line in lines if not line.startswith("RESULT "))
    if echo:
        print(text)
    results = [json.loads(line[len("RESULT "):]) for line in lines if line.startswith("RESULT ")]
    if results:
        if "error" in results[-1]:
            print(proc.stderr[-3000:], file=sys.stderr)
        result = results[-1]
    else:
        tail = [line for line in proc.stderr.splitlines() if line.strip()]
        print(proc.stderr[-3000:], file=sys.stderr)
        result = {"error": f"exit {proc.returncode}: {tail[-1][:300] if tail else 'no output'}"}
    result["wall_s"] = wall_s
    if capture:
        result["stdout"] = text
    return result


def ensure_model(workdir: Path, tiny: bool, timeout: int, weights: str = "memory") -> tuple[Path, float | None]:
    """The model folder (built once, kept in workdir) and the seconds its building took now (None: reused)."""
    name = "mistral-tiny-random" if tiny else "mistral-7b-random"
    model_dir = workdir / (name if weights == "disk" else name + "-config")
    if (model_dir / "complete").exists():
        return model_dir, None
    what = "random-init " + ("tiny" if tiny else "Mistral-7B") + (" model" if weights == "disk" else " config")
    print(f"building the {what} (once; kept in --workdir) ...", flush=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    result = spawn(["--worker", "build", "--model-dir", str(model_dir), "--weights", weights]
                   + (["--tiny"] if tiny else []), tiny, timeout)
    if "error" in result:
        sys.exit(f"could not build the model: {result['error']}")
    (model_dir / "complete").write_text("ok")
    return model_dir, result["wall_s"]


def with_ratios(variants: dict) -> dict:
    trl = variants.get("trl", {})
    for result in variants.values():
        for key, ratio in (("tokens_per_s", "speed_vs_trl"), ("peak_gb", "memory_vs_trl")):
            ok = result.get(key) is not None and trl.get(key)
            result[ratio] = result[key] / trl[key] if ok else None
    return variants


def behind_targets(sppo_lite: dict, speed: float, memory: float) -> list[str]:
    """The targets sppo-lite misses against TRL in the same run (none when either did not run; speed only on CPU)."""
    if sppo_lite.get("speed_vs_trl") is None:
        return []
    missed = ["speed"] if sppo_lite["speed_vs_trl"] < speed else []
    if sppo_lite.get("memory_vs_trl") is not None and sppo_lite["memory_vs_trl"] > memory:
        missed.append("memory")
    return missed


def print_table(shape: str, variants: dict) -> None:
    def fmt(x, spec, unit=""):
        return format("—", f">{len(format(0.0, spec)) + len(unit)}") if x is None else format(x, spec) + unit

    print(f"\nL × sequences = {shape}")
    print(f"  {'variant':<12} {'peak GB':>8} {'RSS GB':>7} {'tokens/s':>10} {'speed/TRL':>10} {'mem/TRL':>8}")
    for name, r in variants.items():
        if "error" in r:
            print(f"  {name:<12} error: {r['error']}")
            continue
        print(f"  {name:<12} {fmt(r['peak_gb'], '8.2f')} {fmt(r['rss_gb'], '7.2f')} {fmt(r['tokens_per_s'], '10.0f')} "
              f"{fmt(r['speed_vs_trl'], '9.2f', '×')} {fmt(r['memory_vs_trl'], '7.2f', '×')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny Mistral shape on CPU (exercises every path)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler on one sppo-lite step, first shape")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--shapes", default=None, help=f"L x sequences, comma-separated (default {','.join(SHAPES)}; "
                                                     f"--tiny: {','.join(TINY_SHAPES)})")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps; the median is reported")
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "sppo-lite-bench"),
                    help="where the random-init model is saved once and reused (Mistral-7B: ~15 GB)")
    ap.add_argument("--weights", choices=("memory", "disk"), default="memory",
                    help="memory (default): every worker builds random weights on the device and quantises them "
                         "while loading, no checkpoint; disk: save a random-init checkpoint once and load it")
    ap.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"), help="where the JSON goes")
    ap.add_argument("--profile-if-behind", action="store_true",
                    help="after the run, profile one sppo-lite step at the first shape when sppo-lite misses "
                         "--target-speed or --target-memory, and put the profile in the JSON")
    ap.add_argument("--target-speed", type=float, default=1.1, help="sppo-lite tokens/s over TRL's (reported only)")
    ap.add_argument("--target-memory", type=float, default=0.9, help="sppo-lite peak memory over TRL's (reported only)")
    ap.add_argument("--update", action="store_true", help="keep results already in the JSON for (variant, shape) "
                                                          "pairs not run now")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per worker process")
    ap.add_argument("--worker", choices=(*VARIANTS, "build"), help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be at least 1")

    if args.worker == "build":
        build_model_dir(Path(args.model_dir), tiny=args.tiny, weights=args.weights)
        print("RESULT " + json.dumps({"built": args.model_dir}))
        return
    if args.worker:
        return worker(args)

    shapes = args.shapes.split(",") if args.shapes else list(TINY_SHAPES if args.tiny else SHAPES)
    variants = args.variants.split(",")
    for shape in shapes:
        parse_shape(shape)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    model_dir, build_s = ensure_model(Path(args.workdir), args.tiny, args.timeout, args.weights)
    common = ["--model-dir", str(model_dir), "--warmup", str(args.warmup), "--steps", str(args.steps),
              "--lora-dropout", str(args.lora_dropout)] + (["--tiny"] if args.tiny else [])

    if args.profile:
        result = spawn(["--worker", "sppo_lite", "--shape", shapes[0], "--profile", *common], args.tiny,
                       args.timeout, echo=True)
        print(json.dumps(result, indent=2))
        return

    results: dict[str, dict] = {}
    for shape in shapes:
        results[shape] = {}
        for variant in variants:
            print(f"{shape} {variant} ...", flush=True)
            results[shape][variant] = spawn(["--worker", variant, "--shape", shape, *common], args.tiny, args.timeout)

    hw = next((r["hardware"] for s in results.values() for r in s.values() if "hardware" in r), "unknown")
    out = Path(args.results_dir) / f"qlora_step-{hw}{'-tiny' if args.tiny else ''}.json"
    previous = json.loads(out.read_text()).get("shapes", {}) if args.update and out.exists() else {}
    merged = {s: dict(previous.get(s, {})) for s in previous}
    for shape, by_variant in results.items():
        merged.setdefault(shape, {}).update(by_variant)
    merged = {s: with_ratios({v: merged[s][v] for v in VARIANTS if v in merged[s]}) for s in merged}
    first = next(s for s in (*(TINY_SHAPES if args.tiny else SHAPES), *merged) if s in merged)
    report = {
        "benchmark": "one QLoRA SPPO training step (forward + backward + optimizer), median of timed steps",
        "hardware": hw, "model": "tiny Mistral (random init)" if args.tiny else "Mistral-7B shape (random init)",
        "tiny": args.tiny, "shape": first, "warmup_steps": args.warmup, "timed_steps": args.steps,
        "settings": {"quantization": "NF4, double quant", "compute_dtype": "float32" if hw.startswith("cpu")
                     else "bfloat16", "lora": {"r": 16, "alpha": 32, "dropout": args.lora_dropout,
                                               "target_modules": "all-linear"},
                     "gradient_checkpointing": "non-reentrant", "loss": "sppo_hard", "optimizer": "AdamW"},
        "versions": versions(),
        "setup": {"weights": args.weights, "build_s": build_s,
                  "note": "wall_s of each variant is its whole worker process: start, imports, building / loading "
                          "and quantising the model (load_s), reference log-probs, warm-up and timed steps"},
        **merged[first],
        "shapes": merged,
    }
    behind = behind_targets(merged[first].get("sppo_lite", {}), args.target_speed, args.target_memory)
    report["targets"] = {"speed_vs_trl": args.target_speed, "memory_vs_trl": args.target_memory,
                         "shape": first, "missed": behind}
    if args.profile_if_behind and behind:
        print(f"\nsppo-lite misses {', '.join(behind)} at {first}: profiling one step ...", flush=True)
        profiled = spawn(["--worker", "sppo_lite", "--shape", first, "--profile", *common], args.tiny,
                         args.timeout, capture=True)
        report["profile"] = {"shape": first, "reason": behind, "output": profiled.pop("stdout", "")[-30000:],
                             "error": profiled.get("error")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{hw} ({report['model']}), median of {args.steps} steps after {args.warmup} warm-up; "
          f"ratios vs TRL precompute_ref_log_probs=True, same run")
    for shape, by_variant in merged.items():
        print_table(shape, by_variant)
    print(f"\nwritten {out}")
    failed = [f"{shape} {variant}" for shape, by_variant in results.items()
              for variant, r in by_variant.items() if "error" in r]
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (each one's error is in the table above and in the JSON)")


if __name__ == "__main__":
    main()
