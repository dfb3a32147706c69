"""One SPPO iteration t as resumable stages: generate → judge → build → train.

    iter{t}/generate/responses.parquet   K samples per prompt from π_t            (sharded, resumable)
    iter{t}/judge/judgements.parquet     the judge's K×K win matrix per prompt    (sharded, resumable)
    iter{t}/build/sppo.parquet           pairs, win rates, log π_t of each response
    iter{t}/train/model/                 π_{t+1}: the next iteration's generator and reference

    schema.py      every key as a typed dataclass field: default, help, allowed values (RunConfig)
    config.py      YAML and overrides merged over the defaults, checked once (RunConfig.check) before any work
    artifacts.py   atomic writes, manifests, content hashes, the output folder's lock, process ranks
    run.py         Run: stage bookkeeping (skip / refuse / resume / publish), run_iteration, run_all
    stages.py      each stage's fingerprint and work; one shard mechanism for generation and judging

Every stage writes its artifact into a temporary folder and renames it into place, with a
manifest.json (fingerprint, counts, the artifact's content hash, package versions) written last. A
rerun skips a finished stage whose fingerprint matches, refuses one whose fingerprint changed (use
--force or a new output dir), and resumes a stage that was killed from its last finished shard or
training checkpoint. Before using an upstream artifact a stage checks its content hash against its
manifest. One run per output folder at a time (OUTPUT_DIR/.lock). Seeds depend on (seed, prompt id,
sample index) only, so a resumed run produces the identical dataset.

The same command runs under `torchrun` / `accelerate launch`: generation, judging and the reference
log-probs of the build stage are spread over the processes (one GPU each), and training is
data-parallel through the Trainer (DDP; DeepSpeed / FSDP for full fine-tuning via an accelerate config).
"""
from .artifacts import RunLock, RunLocked, content_hash, model_identity, ranks, read_manifest
from .config import (DEFAULT_CONFIG, JUDGE_TYPES, apply_overrides, check_config, check_iterations, check_prompt_source,
                     load_config, load_run_config, read_yaml_mapping)
from .schema import RunConfig, config_reference
from .run import ARTIFACTS, STAGES, Run, StageChanged, quiet_datasets, run_all, run_iteration, summary_rows, summary_table
from .stages import (STAGE_FUNCTIONS, build_stage, device_for, generate_stage, iteration_prompts, judge_stage,
                     make_judge, run_shards, train_stage)

__all__ = ["STAGES", "ARTIFACTS", "DEFAULT_CONFIG", "JUDGE_TYPES", "STAGE_FUNCTIONS", "load_config", "load_run_config",
           "RunConfig", "config_reference", "apply_overrides",
           "read_yaml_mapping", "check_config", "check_iterations", "check_prompt_source", "Run", "StageChanged", "RunLock", "RunLocked",
           "run_iteration", "run_all", "quiet_datasets", "read_manifest", "content_hash", "model_identity", "ranks",
           "iteration_prompts", "make_judge", "run_shards", "device_for", "generate_stage", "judge_stage",
           "build_stage", "train_stage", "summary_rows", "summary_table"]
