"""A pipeline you can leave running for a day: Hub-id hand-off, value checks, hashes, the lock, fingerprints,
complete checkpoints, config checks, one-line errors."""
import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sppo_lite import cli, generation, loop
from sppo_lite.loop import stages
from shared import PROMPTS, tiny_config

ROOT = Path(__file__).resolve().parent.parent
QUIET = dict(log=lambda *_: None)
TRAIN = {"train.beta": 0.1, "train.learning_rate": 0.01, "train.optim": "adamw_torch", "train.bf16": False,
         "train.gradient_checkpointing": False, "train.lora_r": 4, "train.per_device_train_batch_size": 3}


def three(config, out):
    run = loop.Run(config, out, **QUIET)
    return run, loop.run_iteration(run, 1, stages=("generate", "judge", "build"))


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


# ---------------------------------------------------------------- 1. the hand-off from a Hub id

def lay_out_hub_cache(cache: Path, repo_id: str, files: Path) -> str:
    """A Hugging Face Hub cache as huggingface_hub writes it: blobs by hash, a snapshot of symlinks, refs/main."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in files.iterdir():
        if f.is_file() and not f.name.startswith("."):
            blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            shutil.copy2(f, blob)
            (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return str(snapshot)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub

    from sppo_lite.modeling import save_tiny_policy

    src = tmp_path / "src"
    save_tiny_policy(src, seed=5)
    cache = tmp_path / "hub"
    snapshot = lay_out_hub_cache(cache, "sppo-test/tiny-chat", src)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


@pytest.mark.parametrize("mode, temperature", [("full", 0.7), ("lora", 0.7), ("qlora", 0.7), ("full", 0)])
def test_hand_off_from_a_hub_id_in_the_local_cache(tmp_path, hub_cache, mode, temperature):
    config = tiny_config(tmp_path, **{**TRAIN, "policy.model": "sppo-test/tiny-chat", "policy.mode": mode,
                                      "generation.temperature": temperature})
    run = loop.run_all(config, tmp_path / "run", **QUIET)
    base, nxt = weights(hub_cache), weights(run.stage_dir(1, "train") / "model")
    assert set(base) == set(nxt)  # one plain model: adapters merged away
    moved = [k for k in base if not torch.equal(base[k], nxt[k])]
    if temperature == 0:  # greedy: every pair tied, π_2 = π_1 copied from the cached snapshot
        assert loop.read_manifest(run.stage_dir(1, "build"))["counts"]["rows"] == 0 and not moved
    else:
        assert moved
    # tokenizer and config came along from the snapshot: π_2 loads and generates
    from sppo_lite.modeling import load_policy

    model, tok = load_policy(run.stage_dir(1, "train") / "model", dtype="float32")
    assert tok.chat_template and model.config.hidden_size == 64
    # The Hub id, not a path, identifies π_1 in the fingerprints.
    assert loop.read_manifest(run.stage_dir(1, "generate"))["inputs"]["policy"] == "hub:sppo-test/tiny-chat"


def test_resolve_model_dir_names_what_is_missing(hub_cache):
    from sppo_lite.modeling import resolve_model_dir

    assert resolve_model_dir("sppo-test/tiny-chat") == hub_cache
    with pytest.raises(FileNotFoundError, match="not-cached/model.*local Hugging Face cache"):
        resolve_model_dir("not-cached/model")


# ---------------------------------------------------------------- 2. nothing non-finite or out of range

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("built")
    old = os.getcwd()
    config = tiny_config(tmp)
    run, manifests = three(config, tmp / "run")
    os.chdir(old)
    return config, run


def corrupt(src: Path, dst: Path, column: str, row: int, value) -> Path:
    from datasets import Dataset

    ds = Dataset.from_parquet(str(src))
    values = list(ds[column])
    values[row] = value
    ds = ds.remove_columns(column).add_column(column, values)
    ds.to_parquet(str(dst))
    return dst


@pytest.mark.parametrize("column, value, allowed", [
    ("chosen_probs_win", float("nan"), "finite probabilities in \\[0, 1\\]"),
    ("chosen_probs_lose", 1.7, "finite probabilities in \\[0, 1\\]"),
    ("ref_chosen_logps", float("inf"), "finite log-probabilities"),
    ("ref_rejected_logps", float("nan"), "finite log-probabilities"),
])
def test_bad_values_are_refused_before_training(built, tmp_path, column, value, allowed):
    from sppo_lite.trainer import train_and_merge

    config, run = built
    bad = corrupt(run.stage_dir(1, "build") / "sppo.parquet", tmp_path / "bad.parquet", column, 1, value)
    with pytest.raises(ValueError, match=f"bad.parquet: column {column} must hold {allowed}.*1 row\\(s\\).*: 1 "):
        train_and_merge("model-never-loaded", bad, tmp_path / "out", tmp_path / "ckpt")
    assert not (tmp_path / "out").exists()


def test_a_changed_upstream_artifact_is_refused(built, tmp_path):
    config, run = built
    copy = tmp_path / "run"
    shutil.copytree(run.output_dir, copy)
    sppo = copy / "iter1" / "build" / "sppo.parquet"
    corrupt(sppo, sppo, "chosen_probs_win", 0, float("nan"))
    with pytest.raises(ValueError, match="iter1/build/sppo.parquet does not match its manifest.*--force build"):
        loop.run_iteration(loop.Run(config, copy, **QUIET), 1, stages=("train",))
    responses = copy / "iter1" / "generate" / "responses.parquet"
    responses.write_bytes(responses.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="iter1/generate/responses.parquet does not match its manifest"):
        loop.judge_stage(loop.Run(config, copy, **QUIET), 1, force=True)
    assert loop.read_manifest(copy / "iter1" / "train") is None


def test_a_non_finite_loss_stops_training(built, tmp_path, tokenizer):
    from datasets import Dataset

    from sppo_lite.modeling import build_tiny_model
    from sppo_lite.trainer import SPPOConfig, SPPOTrainer

    config, run = built
    data = Dataset.from_parquet(str(run.stage_dir(1, "build") / "sppo.parquet"))
    policy = loop.Run(config, run.output_dir).policy_path(1)
    from sppo_lite.modeling import load_policy

    model, tok = load_policy(policy, dtype="float32")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    model.train()
    args = SPPOConfig(output_dir=str(tmp_path / "o"), report_to=[], use_cpu=True, max_steps=3, beta=0.1,
                      max_length=256, max_prompt_length=200, per_device_train_batch_size=2, save_strategy="no")
    trainer = SPPOTrainer(model, args, train_dataset=data, processing_class=tok)
    with pytest.raises(FloatingPointError, match="training stopped at step 0: the loss is nan"):
        trainer.train()


def test_a_model_with_non_finite_weights_is_never_published(built, tmp_path, monkeypatch):
    config, run = built
    copy = tmp_path / "run"
    shutil.copytree(run.output_dir, copy)

    def nan_training(policy, dataset, output_dir, **kw):
        from sppo_lite.modeling import load_policy

        model, tok = load_policy(policy, dtype="float32")
        with torch.no_grad():
            model.lm_head.weight[3, 1] = float("inf")
        model.save_pretrained(output_dir)
        tok.save_pretrained(output_dir)
        return {"train_loss": 0.5}, []

    import sppo_lite.trainer

    monkeypatch.setattr(sppo_lite.trainer, "train_and_merge", nan_training)
    with pytest.raises(ValueError, match="1 non-finite value\\(s\\) in lm_head.weight.*not published"):
        loop.train_stage(loop.Run(config, copy, **QUIET), 1)
    assert loop.read_manifest(copy / "iter1" / "train") is None and not (copy / "iter1" / "train").exists()


# ---------------------------------------------------------------- 3. one run per output folder

def test_a_second_run_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    config = tiny_config(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                               "started": "2026-12-01 09:00:00 UTC"}))
        with pytest.raises(loop.RunLocked, match=f"in use by process {holder.pid} on {socket.gethostname()} "
                                                 f"\\(started 2026-12-01 09:00:00 UTC\\)"):
            loop.run_all(config, out, **QUIET)
        assert not (out / "config.json").exists() and not (out / "iter1").exists()
        cfg = tmp_path / "config.yaml"
        assert cli.main(["iterate", "--config", str(cfg), "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"process {holder.pid}" in err and len(err.splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is taken over, the run goes through and leaves no lock behind.
    run, manifests = three(config, out)
    assert manifests["build"]["counts"]["rows"] > 0 and not (out / ".lock").exists()


def test_a_lock_from_another_host_is_taken_over_once_its_heartbeat_is_stale(tmp_path):
    lock_file = tmp_path / ".lock"
    lock_file.write_text(json.dumps({"pid": 12345, "host": "recycled-colab-vm", "started": "yesterday"}))
    with pytest.raises(loop.RunLocked, match="process 12345 on recycled-colab-vm"):
        loop.RunLock(tmp_path).acquire()  # heartbeat fresh: it may still be running there
    stale = lock_file.stat().st_mtime - loop.RunLock.STALE_S - 1
    os.utime(lock_file, (stale, stale))
    with loop.RunLock(tmp_path):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()


def test_the_holder_keeps_its_heartbeat(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(loop.RunLock, "HEARTBEAT_S", 0.05)
    with loop.RunLock(tmp_path):
        old = tmp_path.joinpath(".lock").stat().st_mtime - 100
        os.utime(tmp_path / ".lock", (old, old))
        time.sleep(0.3)
        assert time.time() - (tmp_path / ".lock").stat().st_mtime < 5


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    lock = loop.RunLock(tmp_path)
    with lock:
        with loop.RunLock(tmp_path):
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        assert (tmp_path / ".lock").exists()
    assert not (tmp_path / ".lock").exists()


# ---------------------------------------------------------------- 4. fingerprints

@pytest.mark.parametrize("change, refused", [
    ({"policy.dtype": "bfloat16"}, "dtype"),
    ({"policy.mode": "qlora"}, "quantized"),
    ({"generation.k": 4}, "generation"),
])
def test_what_changes_the_samples_is_refused(built, tmp_path, change, refused):
    config, run = built
    changed = loop.apply_overrides(config, [f"{k}={v}" for k, v in change.items()])
    with pytest.raises(loop.StageChanged, match=f"iter1/generate .*changed: .*{refused}.*--force generate"):
        loop.generate_stage(loop.Run(changed, run.output_dir, **QUIET), 1)


def test_bf16_switches_off_keep_a_runs_fingerprints_and_on_are_refused(built):
    """generation.bf16 / build.bf16 false leave the fingerprints as a run made before they existed wrote them;
    true changes the samples or log π_t, so a finished stage is refused, not silently mixed."""
    config, run = built
    from sppo_lite.loop.stages import fingerprint_generate

    gen = loop.read_manifest(run.stage_dir(1, "generate"))["inputs"]
    assert "bf16" not in gen["generation"] and "bf16" not in loop.read_manifest(run.stage_dir(1, "build"))["inputs"]["build"]
    assert config["generation"]["bf16"] is False and fingerprint_generate(run, 1) == gen
    on = loop.Run(loop.apply_overrides(config, ["generation.bf16=true"]), run.output_dir, **QUIET)
    assert fingerprint_generate(on, 1)["generation"]["bf16"] is True
    with pytest.raises(loop.StageChanged, match="iter1/generate .*changed: .*generation"):
        loop.generate_stage(on, 1)
    on = loop.Run(loop.apply_overrides(config, ["build.bf16=true"]), run.output_dir, **QUIET)
    with pytest.raises(loop.StageChanged, match="iter1/build .*changed: .*build"):
        loop.build_stage(on, 1)


def test_edited_prompt_texts_are_noticed(built, tmp_path):
    config, run = built
    lines = Path(PROMPTS).read_text().splitlines()
    edited = tmp_path / "edited.jsonl"
    ids, texts = loop.iteration_prompts(config, 1)
    row = json.loads(lines[ids[0]])
    row["prompt"] = row["prompt"] + " Answer briefly."
    lines[ids[0]] = json.dumps(row)
    edited.write_text("\n".join(lines) + "\n")
    changed = loop.apply_overrides(config, [f"prompts.source={edited}"])
    assert loop.iteration_prompts(changed, 1)[0] == ids  # same ids, one text differs
    with pytest.raises(loop.StageChanged, match="changed: prompts"):
        loop.generate_stage(loop.Run(changed, run.output_dir, **QUIET), 1)


def test_batch_sizes_devices_and_a_moved_run_reuse_finished_work(built, tmp_path, monkeypatch):
    config, run = built
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run.output_dir, moved)
    bigger = loop.apply_overrides(config, ["generation.batch_size=64", "judge.batch_size=64", "build.ref_batch_size=64",
                                           "generation.shard_size=100", "judge.shard_size=100", "policy.device=cpu:0",
                                           "judge.device=cpu:0", "train.logging_steps=50"])
    monkeypatch.setattr(generation, "generate_responses", lambda *a, **k: pytest.fail("regenerated"))
    before = {s: loop.read_manifest(run.stage_dir(1, s)) for s in ("generate", "judge", "build")}
    _, after = three(bigger, moved)
    assert after == before


def test_a_changed_shard_size_keeps_finished_shards(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    _, clean = three(config, tmp_path / "clean")
    real_save = generation.save_parquet

    def crash_on_second_shard(ds, path):
        if "shard-00001" in str(path):
            raise KeyboardInterrupt("killed")
        return real_save(ds, path)

    monkeypatch.setattr(generation, "save_parquet", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        three(config, tmp_path / "run")
    monkeypatch.setattr(generation, "save_parquet", real_save)
    generated = []
    real_generate = generation.generate_responses
    monkeypatch.setattr(generation, "generate_responses",
                        lambda m, t, prompts, **k: generated.extend(prompts) or real_generate(m, t, prompts, **k))
    bigger = loop.apply_overrides(config, ["generation.shard_size=5", "generation.batch_size=8"])
    _, resumed = three(bigger, tmp_path / "run")
    assert len(generated) == 4  # the finished shard (2 prompts) was kept: shards of 2 go on
    assert resumed["generate"]["artifact_hash"] == clean["generate"]["artifact_hash"]


def test_config_json_is_written_only_once_accepted(built, tmp_path):
    config, run = built
    copy = tmp_path / "run"
    shutil.copytree(run.output_dir, copy)
    (copy / "config.json").write_text(json.dumps(config))
    changed = loop.apply_overrides(config, ["generation.temperature=1.0"])
    with pytest.raises(loop.StageChanged, match="iter1/generate"):
        loop.run_all(changed, copy, **QUIET)
    assert json.loads((copy / "config.json").read_text())["generation"]["temperature"] == 0.7


# ---------------------------------------------------------------- 5. resume from complete checkpoints

def test_a_kill_mid_checkpoint_resumes_from_the_last_complete_one_with_the_whole_loss(tmp_path, monkeypatch):
    from sppo_lite.trainer import SPPOTrainer, last_complete_checkpoint

    config = tiny_config(tmp_path, **{**TRAIN, "train.per_device_train_batch_size": 2, "train.num_train_epochs": 2,
                                      "train.save_steps": 2})
    clean = loop.run_all(config, tmp_path / "clean", **QUIET)
    real_step = SPPOTrainer.training_step
    steps = []

    def dies_at_step_five(self, *a, **k):
        steps.append(1)
        if len(steps) == 5:
            raise KeyboardInterrupt("killed")
        return real_step(self, *a, **k)

    monkeypatch.setattr(SPPOTrainer, "training_step", dies_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        loop.run_all(config, tmp_path / "run", **QUIET)
    monkeypatch.setattr(SPPOTrainer, "training_step", real_step)
    checkpoints = tmp_path / "run" / "iter1" / "train.partial" / "checkpoints"
    assert last_complete_checkpoint(checkpoints).endswith("checkpoint-4")
    # A kill while checkpoint-6 was being written: weights there, trainer_state.json (written last) not.
    shutil.copytree(checkpoints / "checkpoint-4", checkpoints / "checkpoint-6")
    (checkpoints / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": 6, "log_hi')
    assert last_complete_checkpoint(checkpoints).endswith("checkpoint-4")
    resumed = loop.run_all(config, tmp_path / "run", **QUIET)
    a, b = weights(clean.stage_dir(1, "train") / "model"), weights(resumed.stage_dir(1, "train") / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    loss = [loop.read_manifest(r.stage_dir(1, "train"))["counts"]["metrics"]["train_loss"] for r in (clean, resumed)]
    assert loss[0] == pytest.approx(loss[1], rel=1e-5)


# ---------------------------------------------------------------- 6. every input checked before any work

@pytest.mark.parametrize("override, message", [
    (["seed=abc"], "seed must be an integer >= 0, got 'abc'"),
    (["prompts.n_prompts=-3"], "prompts.n_prompts must be null or an integer >= 1, got -3"),
    (["train.num_train_epochs=-1"], "train.num_train_epochs must be a finite number > 0, got -1"),
    (["generation.batch_size=0"], "generation.batch_size must be an integer >= 1, got 0"),
    (["judge.batch_size=0"], "judge.batch_size must be an integer >= 1"),
    (["generation.shard_size=x"], "generation.shard_size must be an integer >= 1, got 'x'"),
    (["generation.temperature=-0.5"], "generation.temperature must be a finite number >= 0"),
    (["generation.top_p=0"], "generation.top_p must be a finite number > 0 and <= 1"),
    (["generation.top_p=1.5"], "generation.top_p must be a finite number > 0 and <= 1"),
    (["train.learning_rate=0"], "train.learning_rate must be a finite number > 0"),
    (["train.beta=-1"], "train.beta must be a finite number > 0"),
    (["policy.mode=int8"], "policy.mode must be one of full, lora, qlora"),
    (["policy.dtype=half"], "policy.dtype must be one of null, float32, float16, bfloat16"),
    (["train.loss_type=kto"], "train.loss_type must be one of sppo, sppo_single, sppo_hard, dpo, ipo"),
    (["train.bogus=1"], "unknown config key 'train.bogus'"),
    (["train.output_dir=x"], "train.output_dir is set by the run's folder"),
    (["train.lr_scheduler_type=zigzag"], "section train is not accepted by TrainingArguments"),
    (["train.max_prompt_length=2000"], "train.max_prompt_length must be < train.max_length"),
    (["generation.k=[3"], "override 'generation.k=\\[3' is not valid YAML"),
])
def test_config_values_are_checked(override, message):
    with pytest.raises(ValueError, match=message):
        loop.load_config(None, override)


def test_training_arguments_fields_are_accepted(tmp_path):
    config = loop.load_config(None, ["train.weight_decay=0.1", "train.max_grad_norm=0.5", "train.report_to=[]"])
    assert config["train"]["weight_decay"] == 0.1 and config["train"]["report_to"] == []


def test_relative_prompt_paths_resolve_from_the_recipe_folder(tmp_path, monkeypatch):
    recipe = tmp_path / "recipes" / "mine.yaml"
    recipe.parent.mkdir()
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "p.jsonl").write_text('{"prompt": "Hi?"}\n{"prompt": "Why?"}\n{"prompt": "Who?"}\n')
    recipe.write_text("prompts:\n  source: ../prompts/p.jsonl\n  thirds: null\n")
    seen = []
    for cwd in (tmp_path, recipe.parent, ROOT):
        monkeypatch.chdir(cwd)
        seen.append(loop.iteration_prompts(loop.load_config(recipe, updates={"iterations": 1}), 1)[1])
    assert seen[0] == seen[1] == seen[2] == ["Hi?", "Why?", "Who?"]
    monkeypatch.chdir(tmp_path)  # on the command line: from the working directory
    assert loop.load_config(None, ["prompts.source=prompts/p.jsonl"])["prompts"]["source"] == "prompts/p.jsonl"


def test_mixed_prompt_keys_are_an_error_not_dropped_rows(tmp_path):
    from sppo_lite.data import load_prompts

    f = tmp_path / "mixed.jsonl"
    f.write_text('{"prompt": "a?"}\n{"question": "b?"}\n{"prompt": "c?"}\n{"question": "d?"}\n')
    with pytest.raises(ValueError, match="2 row\\(s\\) have no 'prompt' value \\(they have 'question' instead\\).*1, 3"):
        load_prompts(f)


def cli_err(capsys, *argv) -> str:
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"iterations": 1, "prompts": {"source": PROMPTS}}))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("generation:\n  k: [5\n")
    out = str(tmp_path / "out")
    assert "bad.yaml is not valid YAML at line 3" in cli_err(capsys, "iterate", "--config", str(bad_yaml),
                                                               "--output-dir", out)
    assert "--iterations must be between 1 and the config's iterations (1), got 99" in cli_err(
        capsys, "iterate", "--config", str(good), "--output-dir", out, "--iterations", "99")
    assert "--force needs the stages to redo" in cli_err(capsys, "iterate", "--config", str(good),
                                                          "--output-dir", out, "--force")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert "is a file: give a folder" in cli_err(capsys, "iterate", "--config", str(good), "--output-dir", str(a_file))

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "iter1"))

    monkeypatch.setattr(loop, "run_all", full_disk)
    assert "No space left on device" in cli_err(capsys, "iterate", "--config", str(good), "--output-dir", out)

    def read_only(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out"))

    monkeypatch.setattr(loop, "run_all", read_only)
    assert "not writable" in cli_err(capsys, "iterate", "--config", str(good), "--output-dir", out)


# ---------------------------------------------------------------- 7. shape

def test_the_vllm_engine_is_built_once_per_stage(tmp_path, monkeypatch):
    from datasets import Dataset

    built_engines = []

    class FakeEngine:
        def __init__(self, policy, seed=0):
            built_engines.append(policy)

    def fake_generate(engine, prompts, prompt_ids=None, k=3, **kw):
        assert isinstance(engine, FakeEngine)
        return (Dataset.from_dict({"prompt_id": prompt_ids, "prompt": prompts, "responses": [["a"] * k] * len(prompts),
                                   "finished": [[True] * k] * len(prompts)}),
                {"prompts": len(prompts), "generated": len(prompts), "skipped": 0, "truncated": 0})

    monkeypatch.setattr(generation, "VLLMEngine", FakeEngine)
    monkeypatch.setattr(generation, "generate_responses_vllm", fake_generate)
    config = tiny_config(tmp_path, **{"generation.backend": "vllm"})
    manifest = loop.generate_stage(loop.Run(config, tmp_path / "run", **QUIET), 1)
    assert manifest["counts"]["generated"] == 6 and len(built_engines) == 1  # 3 shards, one engine


def test_pairrm_needs_torch_2_6():
    from sppo_lite.pairrm import require_torch_for_ranker

    require_torch_for_ranker("2.6.0+cu124")
    require_torch_for_ranker("2.13.0")
    with pytest.raises(ImportError, match="torch >= 2.6.*found 2.5.1"):
        require_torch_for_ranker("2.5.1")
