"""SPPOTrainer: the SPPO loss on the Hugging Face Trainer (accelerate, DeepSpeed and FSDP for free).

One step: the B chosen and B rejected chats of a batch go through the policy as one batch of 2B
sequences; Δ = Σ log π_θ(response | prompt) − Σ log π_t(response | prompt), response tokens only;
the loss from sppo_lite.losses is averaged over the B pairs. The official `sppo` loss is

    ½[(Δ_c − (P̂_c − ½)/β)² + (Δ_r − (P̂_r − ½)/β)²],   P̂_c, P̂_r = chosen_probs_win, chosen_probs_lose

Why not TRL's DPOTrainer: its loss functions receive only the four sequence log-probs, so its
`sppo_hard` fixes the targets at ±1/(2β); the official `sppo` needs each response's own estimated
win rate P̂ from the dataset, which DPOTrainer cannot pass to its loss (and TRL is not a dependency).

Rows of per-response data (build_sppo_dataset(pair_mode="all"): response, win_prob) train the
per-response form (Δ − (P̂ − ½)/β)² with loss_type="sppo", one sequence per row.

The reference π_t (the policy that sampled the data) is read from the dataset (reference=
"precomputed": ref_<chat>_logps columns from data.add_reference_logps, no second model in memory)
or computed every step (reference="on_the_fly": the LoRA / QLoRA policy with its adapter disabled,
or ref_model for full fine-tuning).
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState

from sppo_lite.data import (CHAT_COLUMNS, check_training_values, check_unique_rows, encode_chat, pad_chat_batch,
                            read_parquet, sequence_logps, to_full_chats)
from sppo_lite.engines import fsdp_on_cpu
from sppo_lite.modeling import freeze_kbit_base, keep_4bit_trainable
from sppo_lite.losses import (LOSSES, dpo_loss, ipo_loss, sppo_hard_loss, sppo_loss, sppo_pair_loss,
                              sppo_single_loss)

logger = logging.getLogger(__name__)

__all__ = ["REFERENCES", "SPPOConfig", "SPPOCollator", "SPPOTrainer", "required_columns", "train_sppo",
           "train_and_merge", "last_complete_checkpoint", "planned_learning_rates", "check_training_moves", "model_card"]

REFERENCES = ("precomputed", "on_the_fly")
# Win-probability columns each loss reads from pair rows (sppo_hard, dpo, ipo read none).
_PROB_COLUMNS = {"sppo": ("chosen_probs_win", "chosen_probs_lose"), "sppo_single": ("chosen_probs",)}
# Per-row numbers the collator carries into the batch, as float32 tensors.
_FLOAT_COLUMNS = ("chosen_probs", "chosen_probs_win", "chosen_probs_lose", "win_prob",
                  "ref_chosen_logps", "ref_rejected_logps", "ref_response_logps")
_WIN_PROB_STATS = {"chosen_probs_win": "win_prob/chosen", "chosen_probs_lose": "win_prob/rejected",
                   "chosen_probs": "win_prob/pair"}


@dataclass
class SPPOConfig(TrainingArguments):
    """TrainingArguments plus the SPPO settings; β = 1/η (the paper's η = 1000 is β = 0.001).

    As TRL 1.x's DPOConfig: loss_type also as a one-element list (["sppo"]), disable_dropout (default on: every
    dropout of the model, a LoRA adapter's included, is switched off), precompute_ref_log_probs and
    precompute_ref_batch_size, truncation_mode, model_init_kwargs, and DPOConfig's defaults where the meaning
    is the same: learning_rate 1e-6, logging_steps 10, activation (gradient) checkpointing on.
    Where it differs from DPOConfig, on purpose:
      - loss_type: sppo, sppo_single, sppo_hard, dpo, ipo (default sppo); one loss, no loss_weights.
      - truncation_mode: default "keep_end" (the official SPPO code's: the prompt keeps its last
        max_prompt_length tokens); "keep_start" is TRL 1.x's default. max_prompt_length is kept for it.
      - ipo: (Δ_c − Δ_r − 1/(2β))² on the sequences' summed log-ratios, as the IPO paper's Eq. 17 is written;
        TRL's ipo divides each Δ by its completion's token count (tests/test_trl_parity.py measures both).
      - sppo_hard: the mean of its two squared terms (the official code), TRL's their sum (×2).
      - bf16: off unless asked (CPU labs); DPOConfig turns it on unless fp16 is set.
    """

    loss_type: str = field(default="sppo", metadata={"help": f"one of {', '.join(LOSSES)} (or a list of one, as TRL)"})
    beta: float = field(default=0.001, metadata={"help": "β = 1/η > 0; targets are (P̂ − ½)/β"})
    max_length: int = field(default=1024, metadata={"help": "prompt + response tokens per sequence"})
    max_prompt_length: int = field(default=512, metadata={"help": "prompt tokens kept (the last ones)"})
    reference: str = field(default="precomputed", metadata={"help": f"one of {', '.join(REFERENCES)}"})
    precompute_ref_log_probs: bool = field(default=False, metadata={
        "help": "compute missing ref_*_logps columns once before training, as TRL's option of the same name "
                "(reference='precomputed' then reads them)"})
    model_init_kwargs: dict | None = field(default=None, metadata={
        "help": "keyword arguments of AutoModelForCausalLM.from_pretrained when the model is given by id or folder"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "must stay False: the "
                                        "collator reads the chat and probability columns"})
    disable_dropout: bool = field(default=True, metadata={
        "help": "switch off every dropout of the model and ref_model (a LoRA adapter's too), as TRL"})
    truncation_mode: str = field(default="keep_end", metadata={
        "help": "past max_length: keep_end keeps the prompt's last max_prompt_length tokens (the official SPPO "
                "code's), keep_start the sequence's first max_length tokens (TRL 1.x's)"})
    precompute_ref_batch_size: int | None = field(default=None, metadata={
        "help": "batch size of precompute_ref_log_probs (default: the train / eval batch size), as TRL"})
    # DPOConfig's defaults where TrainingArguments' differ
    learning_rate: float = field(default=1e-6, metadata={"help": "the initial learning rate (DPOConfig's default)"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps (DPOConfig's default)"})
    activation_checkpointing: bool | None = field(default=None, metadata={
        "help": "recompute activations in the backward pass to save memory; on unless set (DPOConfig's default), "
                "the deprecated gradient_checkpointing also sets it"})

    def __post_init__(self):
        if isinstance(self.loss_type, (list, tuple)):  # TRL 1.x writes loss_type=["sigmoid"]
            if len(self.loss_type) != 1:
                raise ValueError(f"loss_type {list(self.loss_type)}: SPPOTrainer trains one loss, not TRL's "
                                 f"weighted combinations; give one of {', '.join(LOSSES)}")
            self.loss_type = self.loss_type[0]
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True  # DPOConfig's default; an explicit gradient_checkpointing wins
        from sppo_lite.data import TRUNCATION_MODES

        if self.truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"truncation_mode must be one of {', '.join(TRUNCATION_MODES)}, got {self.truncation_mode!r}")
        if self.loss_type not in LOSSES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSSES)}, got {self.loss_type!r}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0 (beta = 1/eta; the paper uses 0.001), got {self.beta}")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(f"need 0 < max_prompt_length < max_length, got {self.max_prompt_length} "
                             f"and {self.max_length}")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False: the collator reads the chat and "
                             "probability columns that the model's forward does not take")
        if self.precompute_ref_log_probs and self.reference != "precomputed":
            raise ValueError("precompute_ref_log_probs=True computes the ref_*_logps columns once: use it with "
                             "reference='precomputed' (the default), not 'on_the_fly'")
        super().__post_init__()


def required_columns(columns, loss_type: str, reference: str) -> list[str]:
    """The columns SPPOTrainer reads: the chats, the loss's win probabilities, ref_*_logps if precomputed.

    Pair rows (chosen, rejected) serve every loss; per-response rows (response, win_prob) serve sppo.
    """
    if "response" in columns and "chosen" not in columns:
        if loss_type != "sppo":
            raise ValueError(f"per-response rows (response, win_prob) train only loss_type='sppo', got "
                             f"{loss_type!r}: build (chosen, rejected) pairs with pair_mode='best_worst'")
        chats, needed = ("response",), ["response", "win_prob"]
    else:
        chats = ("chosen", "rejected")
        needed = [*chats, *_PROB_COLUMNS.get(loss_type, ())]
    if reference == "precomputed":
        needed += [f"ref_{c}_logps" for c in chats]
    return needed


def _missing_ref(dataset) -> list[str]:
    return [f"ref_{c}_logps" for c in CHAT_COLUMNS if c in dataset.column_names
            and f"ref_{c}_logps" not in dataset.column_names]


def _check_columns(dataset, name: str, loss_type: str, reference: str, precompute: bool = False) -> None:
    columns = getattr(dataset, "column_names", None)
    if columns is None:  # an iterable dataset without features: the collator meets the rows
        return
    missing = [c for c in required_columns(columns, loss_type, reference) if c not in columns
               and not (precompute and c.startswith("ref_"))]
    if missing:
        fix = ("run sppo_lite.data.add_reference_logps on it, or set precompute_ref_log_probs=True, or pass "
               "reference='on_the_fly'"
               if any(c.startswith("ref_") for c in missing) else "build it with sppo_lite.data.build_sppo_dataset")
        if name.endswith(".parquet"):  # a build stage's artifact
            fix = f"rebuild it (sppo-lite build --force), or {fix}"
        raise ValueError(f"{name} lacks column(s) {', '.join(missing)} needed by loss_type={loss_type!r} "
                         f"with reference={reference!r} (found {', '.join(columns)}): {fix}")


@dataclass
class SPPOCollator:
    """Rows → one padded batch: the chosen then the rejected chats (2B sequences), or B responses,
    with response_mask and the rows' win probabilities and ref log-probs as float32 tensors."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int = 1024
    max_prompt_length: int = 512
    truncation_mode: str = "keep_end"

    def __call__(self, rows: list[dict]) -> dict:
        columns = ("chosen", "rejected") if "chosen" in rows[0] else ("response",)
        chats = [(r[c], r.get(f"{c}_finished", True)) for c in columns for r in rows]
        batch = pad_chat_batch([encode_chat(self.tokenizer, chat, self.max_length, self.max_prompt_length,
                                            finished=done, truncation_mode=self.truncation_mode)
                                for chat, done in chats], self.tokenizer)
        batch.update({name: torch.tensor([r[name] for r in rows], dtype=torch.float32)
                      for name in _FLOAT_COLUMNS if name in rows[0]})
        return batch


class LossTally(TrainerCallback, ExportableState):
    """Sum and count of the training loss over every micro-batch since step 0, saved in each checkpoint's
    trainer_state.json, so that train_loss after a resume covers the whole run (Trainer's own covers
    only the steps since the resume)."""

    def __init__(self, total: float = 0.0, count: int = 0):
        self.total, self.count = total, count

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def state(self) -> dict:
        return {"args": {}, "attributes": {"total": self.total, "count": self.count}}

    @classmethod
    def from_checkpoint(cls, checkpoint) -> "LossTally":
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        saved = state.get("stateful_callbacks", {}).get(cls.__name__)
        return cls(**saved["attributes"]) if saved else cls()


def last_complete_checkpoint(folder) -> str | None:
    """The newest checkpoint-N in `folder` that finished saving (its trainer_state.json, written last, is
    readable); None when there is none. A checkpoint cut short by a kill is skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for checkpoint in found:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(checkpoint)
    return None


class SPPOTrainer(Trainer):
    """transformers.Trainer whose loss is sppo / sppo_single / sppo_hard / dpo / ipo on Δ = log π_θ − log π_t.

    Called as TRL's trainers are: SPPOTrainer(model, ref_model=None, args=None, data_collator=None,
    train_dataset=None, eval_dataset=None, processing_class=None, ..., peft_config=None) — `model` may be
    a model, or a Hub id or folder (loaded with args.model_init_kwargs, its tokenizer too); `peft_config`
    wraps it in a fresh adapter (QLoRA when the model is loaded in 4 bit). `SPPOTrainer(model, args)` with
    an SPPOConfig second also works. Rows in sppo-lite's form (whole chats) or TRL's explicit-prompt form
    (`prompt` + assistant-only `chosen` / `rejected`) are accepted.

    The reference log-probs: the dataset's ref_*_logps columns (reference="precomputed", as the pipeline's
    build stage writes them), computed once by the trainer before training when args.precompute_ref_log_probs
    is on (from ref_model, the adapter-disabled PEFT model, or the model itself before its first step), or
    recomputed every step (reference="on_the_fly").

    Logs, averaged over the logging steps, TRL's names where the quantity is TRL's:
    rewards/chosen, rewards/rejected = β·Δ; rewards/margins = β·(Δ_c − Δ_r); rewards/accuracies =
    mean[Δ_c > Δ_r]; logps/chosen, logps/rejected = log π_θ. SPPO's own: logratio/* = Δ in nats (achieved),
    target/* = what the loss drives Δ to ((P̂ − ½)/β for sppo), win_prob/* = P̂, loss_scaled = β²·loss
    (comparable across β).
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a batch mean: Trainer divides by the accumulation steps

    def __init__(self, model, ref_model=None, args: SPPOConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, peft_config=None, **kwargs):
        if isinstance(ref_model, TrainingArguments) and args is None:  # SPPOTrainer(model, args, ...)
            ref_model, args = None, ref_model
        args = SPPOConfig() if args is None else args
        if not isinstance(args, SPPOConfig):
            raise ValueError(f"args must be an SPPOConfig (TrainingArguments plus loss_type, beta, "
                             f"reference, ...), got {type(args).__name__}")
        if isinstance(model, (str, Path)):
            model, processing_class = _load_model(str(model), args, processing_class)
        if processing_class is None:
            raise ValueError("SPPOTrainer needs processing_class=<tokenizer>: its chat template turns "
                             "the chats into tokens")
        if peft_config is not None:
            model = _wrap_peft(model, peft_config, args)
        evals = eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval_dataset", eval_dataset)]
        checked = {}
        for name, dataset in [("train_dataset", train_dataset), *evals]:
            if dataset is not None:
                dataset = to_full_chats(dataset) if hasattr(dataset, "column_names") else dataset
                _check_columns(dataset, name, args.loss_type, args.reference, args.precompute_ref_log_probs)
                check_training_values(dataset, name)
            checked[name] = dataset
        train_dataset = checked["train_dataset"]
        if isinstance(eval_dataset, dict):
            eval_dataset = {name: checked[name] for name in eval_dataset}
        elif eval_dataset is not None:
            eval_dataset = checked["eval_dataset"]
        _check_reference(model, ref_model, args.reference, args.precompute_ref_log_probs)
        keep_4bit_trainable(model)
        if args.disable_dropout:  # as TRL: every nn.Dropout of the model (a LoRA adapter's too) gets p = 0
            _disable_dropout(model)
            if ref_model is not None:
                _disable_dropout(ref_model)
        collator = data_collator or SPPOCollator(processing_class, args.max_length, args.max_prompt_length,
                                                 args.truncation_mode)
        fsdp_on_cpu()  # an FSDP launch without a GPU gets FSDP, not a silent DDP (sppo_lite.engines)
        super().__init__(model=model, args=args, data_collator=collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        if args.precompute_ref_log_probs and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            raise ValueError("precompute_ref_log_probs runs π_t on this process before training, which DeepSpeed / "
                             "FSDP shard: add the ref_*_logps columns first (sppo_lite.data.add_reference_logps, "
                             "as the pipeline's build stage does)")
        if ref_model is not None and args.reference == "on_the_fly":
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                raise ValueError("a separate ref_model is not sharded under DeepSpeed / FSDP: use "
                                 "reference='precomputed' (sppo_lite.data.add_reference_logps) instead")
            ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True).eval()
        self.ref_model = ref_model
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.loss_tally = LossTally()
        self.add_callback(self.loss_tally)

    def _precompute_reference(self) -> None:
        """Add the missing ref_*_logps columns to the train and eval datasets, once, from π_t.

        π_t is ref_model when given, else the PEFT model with its adapter disabled, else the model before
        its first step (the policy that sampled the data).
        """
        from sppo_lite.data import add_reference_logps

        def add(dataset, batch_size):
            if dataset is None or not hasattr(dataset, "column_names") or not _missing_ref(dataset):
                return dataset
            ref = self.ref_model if self.ref_model is not None else self.model
            adapter_off = (self.accelerator.unwrap_model(ref).disable_adapter()
                           if self.ref_model is None and isinstance(self.accelerator.unwrap_model(ref), PeftModel)
                           else contextlib.nullcontext())
            with adapter_off:
                return add_reference_logps(dataset, ref, self.processing_class, batch_size=batch_size,
                                           max_length=self.args.max_length, max_prompt_length=self.args.max_prompt_length,
                                           truncation_mode=self.args.truncation_mode)

        own = self.args.precompute_ref_batch_size  # TRL's: else the train / eval batch size
        self.train_dataset = add(self.train_dataset, own or self.args.per_device_train_batch_size)
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {k: add(v, own or self.args.per_device_eval_batch_size) for k, v in self.eval_dataset.items()}
        else:
            self.eval_dataset = add(self.eval_dataset, own or self.args.per_device_eval_batch_size)

    _tag_names = ["sppo-lite", "sppo"]

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: list[str] | None = None, base_model: str | None = None, **kwargs) -> None:
        """README.md in args.output_dir: a model card with sppo-lite's tags, the loss, β and the base model (a Hub
        id only, never a local path), as TRL's trainers write one; push_to_hub uploads it when asked."""
        card = model_card(self.args, base_model=base_model or _hub_id(self.model), dataset_name=dataset_name,
                          tags=tags, model_name=model_name)
        if self.is_world_process_zero():
            card.save(str(Path(self.args.output_dir) / "README.md"))

    def train(self, resume_from_checkpoint=None, **kwargs):
        """Trainer.train; resume_from_checkpoint=True takes the newest *complete* checkpoint, and train_loss
        (metrics and TrainOutput) is the mean over the whole run, resumed or not."""
        if self.args.precompute_ref_log_probs:  # before any checkpoint is loaded: the weights are still π_t's
            self._precompute_reference()
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
        if resume_from_checkpoint:
            restored = LossTally.from_checkpoint(resume_from_checkpoint)
            self.loss_tally.total, self.loss_tally.count = restored.total, restored.count
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if self.loss_tally.count:
            output.metrics["train_loss"] = self.loss_tally.mean()
            output = output._replace(training_loss=self.loss_tally.mean())
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Batch mean of the configured loss on Δ = sequence_logps(policy) − reference log-probs."""
        sequences = {k: inputs[k] for k in ("input_ids", "attention_mask", "response_mask")}
        ref_logps = self._reference_logps(model, inputs, sequences)
        logps = sequence_logps(model, **sequences)
        losses, stats = self._losses(logps, ref_logps, inputs)
        loss = losses.mean()
        means = self._record({"loss_scaled": self.args.beta ** 2 * losses, **stats})
        if model.training:
            batch_loss = means["loss_scaled"] / self.args.beta ** 2  # this micro-batch, over all processes
            if not batch_loss == batch_loss or abs(batch_loss) == float("inf"):
                raise FloatingPointError(
                    f"training stopped at step {self.state.global_step}: the loss is {batch_loss} (non-finite), so "
                    f"nothing is saved from here; lower learning_rate, use fp32 or bf16 instead of fp16, or check the "
                    f"dataset's log-probabilities")
            self.loss_tally.add(batch_loss)
        return (loss, {"logps": logps.detach(), "ref_logps": ref_logps}) if return_outputs else loss

    def _reference_logps(self, model, inputs, sequences) -> torch.Tensor:
        """log π_t of the batch's sequences: the dataset's ref columns, or a no-grad eval-mode forward."""
        if self.args.reference == "precomputed":
            names = ["ref_response_logps"] if "win_prob" in inputs else ["ref_chosen_logps", "ref_rejected_logps"]
            return torch.cat([inputs[n] for n in names])
        ref = self.ref_model if self.ref_model is not None else model
        adapter_off = (contextlib.nullcontext() if self.ref_model is not None
                       else self.accelerator.unwrap_model(model).disable_adapter())
        was_training = ref.training
        ref.eval()  # no dropout: π_t exactly, as add_reference_logps computes it
        try:
            with torch.no_grad(), adapter_off:
                return sequence_logps(ref, **sequences)
        finally:
            ref.train(was_training)

    def _losses(self, logps, ref_logps, inputs) -> tuple[torch.Tensor, dict]:
        """Per-row losses and per-row statistics (achieved and target log-ratios, win probabilities)."""
        beta, loss_type = self.args.beta, self.args.loss_type
        if "win_prob" in inputs:  # one response per row
            target = (inputs["win_prob"] - 0.5) / beta
            return sppo_loss(logps, ref_logps, inputs["win_prob"], beta), {
                "logratio/response": logps - ref_logps, "target/response": target,
                "win_prob/response": inputs["win_prob"], "logps/response": logps}
        pc, pr = logps.chunk(2)
        rc, rr = ref_logps.chunk(2)
        if loss_type == "sppo":
            losses = sppo_pair_loss(pc, pr, rc, rr, inputs["chosen_probs_win"], inputs["chosen_probs_lose"], beta)
        elif loss_type == "sppo_single":
            losses = sppo_single_loss(pc, pr, rc, rr, inputs["chosen_probs"], beta)
        else:
            losses = {"sppo_hard": sppo_hard_loss, "dpo": dpo_loss, "ipo": ipo_loss}[loss_type](pc, pr, rc, rr, beta)
        dc, dr = pc - rc, pr - rr
        stats = {"rewards/chosen": beta * dc, "rewards/rejected": beta * dr, "rewards/margins": beta * (dc - dr),
                 "rewards/accuracies": (dc > dr).float(), "logps/chosen": pc, "logps/rejected": pr,
                 "logratio/chosen": dc, "logratio/rejected": dr, "logratio/margin": dc - dr,
                 **_targets(loss_type, inputs, beta, dc),
                 **{stat: inputs[c] for c, stat in _WIN_PROB_STATS.items() if c in inputs}}
        return losses, stats

    def _record(self, stats: dict) -> dict:
        """Append the batch means (over all processes) of per-row statistics, for log() to average; return them."""
        rows = torch.stack([v.detach().float() for v in stats.values()], dim=1)  # (B, statistics)
        means = self.accelerator.gather_for_metrics(rows).mean(0).tolist()
        mode = "train" if self.model.training else "eval"
        for name, value in zip(stats, means):
            self._metrics[mode][name].append(value)
        return dict(zip(stats, means))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the recorded statistics, averaged since the last log (eval_ prefixed in evaluation)."""
        mode = "train" if self.model.training else "eval"
        prefix = "" if mode == "train" else "eval_"
        logs.update({prefix + k: sum(v) / len(v) for k, v in self._metrics[mode].items()})
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the loss only; there are no labels or logits to return."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


def _targets(loss_type: str, inputs, beta: float, like: torch.Tensor) -> dict:
    """What the loss drives the log-ratios to: Δ_c, Δ_r for the SPPO losses, Δ_c − Δ_r for IPO; DPO has none."""
    if loss_type == "sppo":
        return {"target/chosen": (inputs["chosen_probs_win"] - 0.5) / beta,
                "target/rejected": (inputs["chosen_probs_lose"] - 0.5) / beta}
    if loss_type == "sppo_single":
        t = (inputs["chosen_probs"] - 0.5) / beta
        return {"target/chosen": t, "target/rejected": -t}
    if loss_type == "sppo_hard":
        return {"target/chosen": torch.full_like(like, 0.5 / beta),
                "target/rejected": torch.full_like(like, -0.5 / beta)}
    if loss_type == "ipo":
        return {"target/margin": torch.full_like(like, 0.5 / beta)}
    return {}


def _check_reference(model, ref_model, reference: str, precompute: bool = False) -> None:
    """One-line errors for a reference that cannot be π_t."""
    if reference == "precomputed":
        if ref_model is not None and not precompute:
            raise ValueError("ref_model is only used with reference='on_the_fly' or precompute_ref_log_probs=True: "
                             "pass one of those, or drop "
                             "ref_model and keep the precomputed ref_*_logps columns")
        return
    if ref_model is not None:
        return
    if not isinstance(model, PeftModel):
        raise ValueError("reference='on_the_fly' needs a LoRA / QLoRA (PEFT) policy, whose disabled "
                         "adapter is the reference, or ref_model=<the policy that sampled the data>")
    if any(p.any() for name, p in model.named_parameters() if "lora_B" in name):
        raise ValueError("reference='on_the_fly' disables the adapter, but this adapter is already "
                         "trained, so the base model is not π_t: merge it (merge_and_unload) and add a "
                         "fresh adapter, or use reference='precomputed'")


def _hub_id(model) -> str | None:
    """The Hub id a model was loaded from, or None when it came from a local folder (no machine paths in cards)."""
    import os

    name = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", None)
    return name if isinstance(name, str) and name.count("/") == 1 and not os.path.exists(name) else None


def model_card(args: SPPOConfig, base_model: str | None = None, dataset_name: str | None = None,
               tags: list[str] | None = None, model_name: str | None = None, iteration: int | None = None):
    """A huggingface_hub ModelCard for a model trained by SPPOTrainer: tags sppo-lite, sppo and the loss."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name="transformers", base_model=base_model, datasets=[dataset_name] if dataset_name else None,
                         tags=sorted({*SPPOTrainer._tag_names, args.loss_type, *(tags or [])}))
    title = model_name or ("SPPO iteration " + str(iteration) if iteration else "A model trained with SPPO")
    body = (f"# {title}\n\nTrained with [sppo-lite](https://arxiv.org/abs/2405.00675)'s SPPOTrainer "
            f"(Self-Play Preference Optimization): loss_type `{args.loss_type}`, β = {args.beta} (η = 1/β = "
            f"{1 / args.beta:g}), learning rate {args.learning_rate:g}, {args.num_train_epochs:g} epoch(s), "
            f"per-device batch {args.per_device_train_batch_size}."
            + (f"\n\nStarted from `{base_model}`." if base_model else "") + "\n")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _quiet_progress(trainer, desc: str) -> None:
    """Unless verbose (sppo_lite.console): one labelled bar for the training steps (none when quiet), and the
    Trainer's per-step log dicts in the run's log instead of on the console."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from sppo_lite.console import verbosity

    level = verbosity()
    if level == "verbose":
        return

    class LogToFile(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if level != "quiet" and state.is_world_process_zero and not args.disable_tqdm:
                from tqdm.auto import tqdm

                self.training_bar = tqdm(total=state.max_steps, desc=desc, unit="step", dynamic_ncols=True)
            self.current_step = 0

        def on_step_end(self, args, state, control, **kwargs):
            if self.training_bar is not None:
                super().on_step_end(args, state, control, **kwargs)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                logger.info("step %d: %s", state.global_step, json.dumps(logs, default=str))

        def on_train_end(self, args, state, control, **kwargs):
            if self.training_bar is not None:
                super().on_train_end(args, state, control, **kwargs)

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LogToFile())


def _disable_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _load_model(name: str, args: SPPOConfig, processing_class):
    """A model id, folder or sppo-lite named model ("smollm2-135m-instruct") → (model, tokenizer), as TRL's
    trainers load a model given by name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sppo_lite.model_source import resolve_model
    from sppo_lite.modeling import require_chat_template

    name = resolve_model(name).path()

    model = AutoModelForCausalLM.from_pretrained(name, **(args.model_init_kwargs or {}))
    if processing_class is None:
        processing_class = AutoTokenizer.from_pretrained(name)
        require_chat_template(processing_class, name)
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
    return model, processing_class


def _wrap_peft(model, peft_config, args: SPPOConfig):
    """A fresh adapter on `model` (QLoRA when it is loaded in 4 bit), as TRL's peft_config= does."""
    from peft import get_peft_model

    if isinstance(model, PeftModel):
        raise ValueError("peft_config was given but the model already has an adapter: pass the base model, "
                         "or drop peft_config")
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = freeze_kbit_base(model)  # Trainer.train turns on activation checkpointing from args
    return get_peft_model(model, peft_config)


def train_sppo(model, tokenizer, dataset, output_dir, ref_model=None, eval_dataset=None, **config) -> dict:
    """Train with SPPOTrainer(SPPOConfig(output_dir, **config)), save model (PEFT: the adapter only),
    tokenizer and trainer_state.json (log history) to output_dir; return the train metrics."""
    trainer = SPPOTrainer(model, args=SPPOConfig(output_dir=str(output_dir), **config), train_dataset=dataset,
                          eval_dataset=eval_dataset, processing_class=tokenizer, ref_model=ref_model)
    metrics = trainer.train().metrics
    trainer.save_model()
    trainer.save_state()
    return metrics


def _mixed_precision(bf16) -> dict:
    """bf16="auto": bf16 on GPUs that have it, fp16 on those that don't (T4), full precision on CPU."""
    if bf16 != "auto":
        return {"bf16": bool(bf16)}
    if not torch.cuda.is_available():
        return {"bf16": False}
    return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}


def planned_learning_rates(args: TrainingArguments, n_rows: int) -> list[float]:
    """The learning rate of every optimizer step a Trainer will take on n_rows rows with `args`
    (steps = epochs × ⌈⌈rows / (batch × processes)⌉ / accumulation⌉, or max_steps), from the same scheduler."""
    import math

    from transformers import get_scheduler

    batches = math.ceil(math.ceil(n_rows / args.world_size) / args.per_device_train_batch_size)
    per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)
    steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(steps),
                              num_training_steps=steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def check_training_moves(args: TrainingArguments, n_rows: int, name: str) -> list[float]:
    """Refuse a training that cannot move the weights (every step at learning rate 0, e.g. 1 step inside the
    warmup); warn when it takes fewer than 2 steps. Returns the planned learning rates."""
    rates = planned_learning_rates(args, n_rows)
    if not any(r > 0 for r in rates):
        raise ValueError(f"{name}: training on {n_rows} rows would take {len(rates)} optimizer step(s), every one at "
                         f"learning rate 0 (warmup_steps = {args.warmup_steps}), so the model would not move: set "
                         f"train.warmup_steps=0, or lower train.per_device_train_batch_size, or raise "
                         f"train.num_train_epochs")
    if len(rates) < 2:
        logger.warning("%s: training takes %d optimizer step(s) only (%d rows): lower per_device_train_batch_size "
                       "or raise num_train_epochs for a model that learns", name, len(rates), n_rows)
    return rates


def train_and_merge(policy_path, dataset_path, output_dir, checkpoint_dir, mode: str = "full", dtype=None,
                    seed: int = 0, lora_r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05,
                    bf16="auto", save_steps: int = 500, **config) -> tuple[dict, list]:
    """One iteration's training as the loop runs it: π_t (a full model directory) → π_{t+1} in output_dir.

    full: the whole model is trained and saved. lora / qlora: a fresh adapter on π_t is trained and
    then merged into π_t's weights (QLoRA: into the base reloaded unquantised in `dtype`), so each
    iteration hands one plain model to the next, which is both its generator and its reference, and
    starts its own fresh adapter. Checkpoints go to checkpoint_dir every save_steps steps; a killed
    run resumes from the newest one. Returns (train metrics, log history).
    """
    from transformers import set_seed

    from sppo_lite.modeling import load_policy
    from sppo_lite.precision import check_weight_precision

    check_weight_precision(mode, dtype, float(config.get("learning_rate", SPPOConfig.learning_rate)), bf16)
    # The loop's train.activation_checkpointing (gradient_checkpointing in older recipes) is set up by load_policy
    # (non-reentrant, adapters included); the Trainer's own switch stays off so it is not done twice.
    checkpointing = config.pop("activation_checkpointing", None)
    old = config.pop("gradient_checkpointing", None)
    checkpointing = bool(old if checkpointing is None else checkpointing)
    on_gpu = torch.cuda.is_available()
    # The arguments come first: under DeepSpeed ZeRO-3 they switch from_pretrained to sharded loading
    # (zero.Init), so no process holds the whole model. use_cpu also makes torchrun on CPU
    # data-parallel (gloo); without it every rank trains alone.
    config.setdefault("report_to", [])  # train.report_to: [wandb], [tensorboard], ...
    config.setdefault("save_total_limit", 1)
    config["activation_checkpointing"] = False
    config.setdefault("disable_dropout", False)  # a recipe's lora_dropout is meant; train.disable_dropout=true: TRL's
    args = SPPOConfig(output_dir=str(checkpoint_dir), seed=seed, save_strategy="steps", save_steps=save_steps,
                      dataloader_pin_memory=on_gpu, use_cpu=not on_gpu, **_mixed_precision(bf16), **config)
    dataset = read_parquet(dataset_path, "rebuild it (sppo-lite build --force)")
    check_training_values(dataset, str(dataset_path))  # before loading anything
    check_unique_rows(dataset, str(dataset_path))       # the build stage's prompt_id keys: no row twice
    _check_columns(dataset, str(dataset_path), args.loss_type, args.reference, args.precompute_ref_log_probs)
    check_training_moves(args, len(dataset), str(dataset_path))
    set_seed(seed)  # the fresh LoRA adapter's initialisation is part of the run: seed it
    model, tokenizer = load_policy(policy_path, mode=mode, dtype=dtype, lora_r=lora_r, lora_alpha=lora_alpha,
                                   lora_dropout=lora_dropout, activation_checkpointing=checkpointing)
    model.train()
    trainer = SPPOTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer)
    _quiet_progress(trainer, f"{Path(dataset_path).parent.parent.name} train")
    last = last_complete_checkpoint(checkpoint_dir)
    if trainer.is_world_process_zero() and Path(checkpoint_dir).is_dir():  # a kill mid-save leaves a partial one
        newest = int(Path(last).name.split("-")[-1]) if last else -1
        for partial in Path(checkpoint_dir).glob("checkpoint-*"):
            step = partial.name.split("-")[-1]
            if partial.is_dir() and step.isdigit() and int(step) > newest:
                shutil.rmtree(partial, ignore_errors=True)
    metrics = trainer.train(resume_from_checkpoint=last).metrics
    metrics["global_step"] = trainer.state.global_step
    history = trainer.state.log_history

    output_dir = Path(output_dir)
    if mode == "full":
        trainer.save_model(str(output_dir))  # collective under DeepSpeed / FSDP; rank 0 writes
    elif trainer.is_world_process_zero():
        _merge_adapter(trainer.accelerator.unwrap_model(trainer.model), policy_path, mode,
                       Path(checkpoint_dir) / "adapter", output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(output_dir))
        model_card(args, base_model=_hub_id(trainer.accelerator.unwrap_model(trainer.model))).save(
            str(output_dir / "README.md"))
    if trainer.is_deepspeed_enabled:
        _leave_zero3()
    return metrics, history


def _leave_zero3() -> None:
    """After a DeepSpeed run, from_pretrained in this process loads whole models again.

    The TrainingArguments of a ZeRO-3 run switch from_pretrained to partitioned loading (zero.Init) for
    as long as their DeepSpeed config lives, and accelerate's state keeps it alive: the next iteration's
    generation, in the same launch, would load π_{t+1} as empty shards.
    """
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def _merge_adapter(model, policy_path, mode: str, adapter_dir: Path, output_dir: Path) -> None:
    """The trained adapter folded into π_t's weights, W + (α/r)·B·A, saved as a plain model in output_dir.

    LoRA: merged in memory (the full-precision model is already loaded). QLoRA: merging into 4-bit
    weights would round them again, so the adapter is merged into π_t's unquantised weights on disk,
    one shard at a time (a Colab runtime cannot hold the whole fp16 model in RAM).
    """
    if mode == "lora":
        model.merge_and_unload().save_pretrained(str(output_dir))
        return
    from sppo_lite.modeling import merge_lora_on_disk

    model.save_pretrained(str(adapter_dir))
    merge_lora_on_disk(policy_path, adapter_dir, output_dir)  # a Hub id is read from its cached snapshot
