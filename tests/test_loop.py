"""The resumable pipeline: stages, manifests, skipping, crash recovery, config errors."""
import json

import pytest
import torch

from pathlib import Path

from sppo_lite import generation, loop
from sppo_lite.loop import stages
from shared import PROMPTS, tiny_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def repo_cwd():
    import os
    from pathlib import Path

    old = os.getcwd()
    os.chdir(Path(__file__).resolve().parent.parent)
    yield
    os.chdir(old)


def run_three(config, out):
    run = loop.Run(config, out, log=lambda *_: None)
    return run, loop.run_iteration(run, 1, stages=("generate", "judge", "build"))


def test_stages_write_artifacts_and_manifests(tmp_path, repo_cwd):
    run, manifests = run_three(tiny_config(tmp_path), tmp_path / "run")
    gen = manifests["generate"]
    assert gen["counts"]["generated"] == 6 and gen["counts"]["k"] == 3
    assert {"torch", "transformers", "datasets"} <= set(gen["versions"])
    from datasets import Dataset

    responses = Dataset.from_parquet(str(run.stage_dir(1, "generate") / "responses.parquet"))
    assert len(responses) == 6 and all(len(r) == 3 for r in responses["responses"])
    sppo = Dataset.from_parquet(str(run.stage_dir(1, "build") / "sppo.parquet"))
    assert {"chosen", "rejected", "chosen_probs", "chosen_probs_win", "chosen_probs_lose",
            "ref_chosen_logps", "ref_rejected_logps"} <= set(sppo.column_names)
    # Length judge: the chosen response is the longest of its prompt's samples.
    by_prompt = dict(zip(responses["prompt"], responses["responses"]))
    for row in sppo:
        assert len(row["chosen"][-1]["content"]) == max(len(r) for r in by_prompt[row["prompt"]])
    # No temporary or partial folders are left behind.
    assert sorted(p.name for p in run.stage_dir(1, "generate").parent.iterdir()) == ["build", "generate", "judge"]


def test_rerun_skips_and_changed_config_is_refused(tmp_path, repo_cwd, monkeypatch):
    config = tiny_config(tmp_path)
    run, first = run_three(config, tmp_path / "run")
    calls = []
    monkeypatch.setattr(generation, "generate_responses", lambda *a, **k: calls.append(1))
    _, second = run_three(config, tmp_path / "run")
    assert calls == [] and second == first  # nothing re-run, manifests untouched
    changed = loop.apply_overrides(config, ["generation.temperature=1.0"])
    with pytest.raises(loop.StageChanged, match="--force generate"):
        run_three(changed, tmp_path / "run")


def test_crash_inside_a_stage_resumes_to_the_identical_dataset(tmp_path, repo_cwd, monkeypatch):
    config = tiny_config(tmp_path)
    _, clean = run_three(config, tmp_path / "clean")

    real_save = generation.save_parquet
    saved = []

    def crash_on_second_shard(ds, path):
        if "shard-00001" in str(path):
            raise KeyboardInterrupt("killed")
        saved.append(path)
        return real_save(ds, path)

    monkeypatch.setattr(generation, "save_parquet", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        run_three(config, tmp_path / "crashed")
    assert len(saved) == 1
    monkeypatch.setattr(generation, "save_parquet", real_save)

    real_generate = generation.generate_responses
    prompts_generated = []

    def counting(model, tokenizer, prompts, **kw):
        prompts_generated.extend(prompts)
        return real_generate(model, tokenizer, prompts, **kw)

    monkeypatch.setattr(generation, "generate_responses", counting)
    _, resumed = run_three(config, tmp_path / "crashed")
    assert len(prompts_generated) == 4  # shard 0 (2 prompts) was kept, shards 1-2 were generated
    for stage in ("generate", "judge", "build"):
        assert resumed[stage]["artifact_hash"] == clean[stage]["artifact_hash"], stage


def test_crash_between_stages_resumes(tmp_path, repo_cwd, monkeypatch):
    config = tiny_config(tmp_path)
    _, clean = run_three(config, tmp_path / "clean")

    def broken_judge(*a, **k):
        raise RuntimeError("judge crashed")

    monkeypatch.setattr(stages, "make_judge", broken_judge)
    with pytest.raises(RuntimeError):
        run_three(config, tmp_path / "run")
    run = loop.Run(config, tmp_path / "run")
    assert loop.read_manifest(run.stage_dir(1, "generate")) is not None
    assert loop.read_manifest(run.stage_dir(1, "judge")) is None
    monkeypatch.undo()
    _, resumed = run_three(config, tmp_path / "run")
    assert resumed["build"]["artifact_hash"] == clean["build"]["artifact_hash"]


def test_force_redoes_a_stage_identically(tmp_path, repo_cwd):
    config = tiny_config(tmp_path)
    run, first = run_three(config, tmp_path / "run")
    redone = loop.generate_stage(run, 1, force=True)
    assert redone["artifact_hash"] == first["generate"]["artifact_hash"]
    assert redone["finished"] >= first["generate"]["finished"]


@pytest.mark.parametrize("override, message", [
    (["generation.k=1"], "generation.k must be an integer >= 2"),
    (["generation.kk=3"], "unknown config key 'generation.kk'"),
    (["judge.type=oracle"], "judge.type must be"),
    (["iterations=4"], "exceeds prompts.thirds"),
    (["generation.k"], "must look like section.key=value"),
    (["train.learning_rate=fast"], "'train.learning_rate' must be a number"),
])
def test_config_errors(override, message):
    with pytest.raises(ValueError, match=message):
        loop.load_config(None, override)


def test_missing_prompt_file_and_missing_upstream(tmp_path, repo_cwd):
    with pytest.raises(ValueError, match="nowhere/prompts.jsonl does not exist.*recipe's folder"):
        loop.run_all(tiny_config(tmp_path, **{"prompts.source": "nowhere/prompts.jsonl"}), tmp_path / "r")
    assert not (tmp_path / "r" / "config.json").exists()
    run = loop.Run(tiny_config(tmp_path), tmp_path / "run", log=lambda *_: None)
    with pytest.raises(ValueError, match="iter1/generate has not finished"):
        loop.judge_stage(run, 1)


def test_cli_stage_errors_are_one_line(tmp_path, repo_cwd, capsys):
    from sppo_lite import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text("generation:\n  k: 1\n")
    assert cli.main(["generate", "--config", str(cfg), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "generation.k must be an integer >= 2" in err and len(err.splitlines()) == 1


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")):
        if path.name != "toy.yaml":
            json.dumps(loop.load_config(path))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_two_iterations_hand_off_the_trained_policy(tmp_path, repo_cwd, mode):
    config = tiny_config(tmp_path, **{"iterations": 2, "policy.mode": mode, "train.beta": 0.1,
                                      "train.learning_rate": 0.01, "train.optim": "adamw_torch",
                                      "train.per_device_train_batch_size": 3, "train.bf16": False,
                                      "train.gradient_checkpointing": False, "train.lora_r": 4})
    run = loop.run_all(config, tmp_path / "run", log=lambda *_: None)
    base, pi2, pi3 = (_weights(p) for p in (
        run.output_dir / "base" / "tiny-policy", run.stage_dir(1, "train") / "model", run.stage_dir(2, "train") / "model"))
    assert set(base) == set(pi2) == set(pi3)  # plain models: LoRA adapters merged away
    moved = [k for k in base if not torch.equal(base[k], pi2[k])]
    assert moved, "training changed nothing"
    if mode != "full":  # only the linear layers LoRA adapts can move; embeddings and norms stay put
        assert all("proj" in k for k in moved)
    assert any(not torch.equal(pi2[k], pi3[k]) for k in base)
    # Iteration 2 generated with π_2 and took its reference log-probs from π_2.
    gen2 = loop.read_manifest(run.stage_dir(2, "generate"))
    train1 = loop.read_manifest(run.stage_dir(1, "train"))
    assert gen2["counts"]["policy"] == train1["artifact_hash"] == loop.content_hash(run.stage_dir(1, "train") / "model")
    assert train1["counts"]["steps"] >= 1 and (run.stage_dir(1, "train") / "log_history.json").is_file()


def test_training_killed_mid_stage_resumes_from_its_checkpoint(tmp_path, repo_cwd, monkeypatch):
    from sppo_lite.trainer import SPPOTrainer

    config = tiny_config(tmp_path, **{"train.beta": 0.1, "train.learning_rate": 0.01, "train.optim": "adamw_torch",
                                      "train.per_device_train_batch_size": 2, "train.num_train_epochs": 2,
                                      "train.save_steps": 2, "train.bf16": False,
                                      "train.gradient_checkpointing": False})
    clean = loop.run_all(config, tmp_path / "clean", log=lambda *_: None)

    real_step = SPPOTrainer.training_step
    steps = []

    def dies_at_step_four(self, *a, **k):
        steps.append(1)
        if len(steps) == 4:
            raise KeyboardInterrupt("killed")
        return real_step(self, *a, **k)

    monkeypatch.setattr(SPPOTrainer, "training_step", dies_at_step_four)
    with pytest.raises(KeyboardInterrupt):
        loop.run_all(config, tmp_path / "run", log=lambda *_: None)
    monkeypatch.setattr(SPPOTrainer, "training_step", real_step)
    partial = tmp_path / "run" / "iter1" / "train.partial" / "checkpoints"
    assert [p.name for p in partial.iterdir() if p.name.startswith("checkpoint-")] == ["checkpoint-2"]
    resumed = loop.run_all(config, tmp_path / "run", log=lambda *_: None)
    a = _weights(clean.stage_dir(1, "train") / "model")
    b = _weights(resumed.stage_dir(1, "train") / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_iteration_without_training_signal_keeps_the_policy(tmp_path, repo_cwd):
    # Greedy decoding: the K samples of a prompt are identical, every pair ties, nothing to train on.
    config = tiny_config(tmp_path, **{"generation.temperature": 0})
    run = loop.Run(config, tmp_path / "run", log=lambda *_: None)
    manifests = loop.run_iteration(run, 1)
    assert manifests["build"]["counts"]["rows"] == 0
    assert manifests["train"]["counts"]["steps"] == 0
    a, b = _weights(run.output_dir / "base" / "tiny-policy"), _weights(run.stage_dir(1, "train") / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_exponent_without_dot_reads_as_a_number():
    # YAML 1.1 reads 5e-7 as a string; the config knows learning_rate is a float.
    assert loop.load_config(None, ["train.learning_rate=5e-7"])["train"]["learning_rate"] == 5e-7


def test_lora_training_is_reproducible(tmp_path, repo_cwd):
    config = tiny_config(tmp_path, **{"policy.mode": "lora", "train.beta": 0.1, "train.learning_rate": 0.01,
                                      "train.optim": "adamw_torch", "train.bf16": False, "train.lora_r": 4,
                                      "train.gradient_checkpointing": False})
    a = loop.run_all(config, tmp_path / "a", log=lambda *_: None)
    b = loop.run_all(config, tmp_path / "b", log=lambda *_: None)
    wa, wb = _weights(a.stage_dir(1, "train") / "model"), _weights(b.stage_dir(1, "train") / "model")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_an_arm_reuses_the_stages_another_run_finished_with_its_fingerprint(tmp_path):
    """SPPO and a DPO arm from the same start: iteration 1's samples and judgements are copied, not made again;
    the build and train stages (pairs with the DPO loss) are the arm's own."""
    from shared import tiny_config

    sppo = tiny_config(tmp_path, **{"train.num_train_epochs": 1})
    dpo = loop.apply_overrides(sppo, ["train.loss_type=dpo", "train.beta=0.1"])
    lines = []
    a = loop.run_all(sppo, tmp_path / "sppo", log=lambda *m: None)
    b = loop.run_all(dpo, tmp_path / "dpo", log=lambda *m: lines.append(" ".join(map(str, m))), reuse_from=tmp_path / "sppo")
    reused = [line.split(":")[0] for line in lines if "reused from" in line]
    assert reused == ["iter1/generate", "iter1/judge", "iter1/build"]  # build depends only on samples and judge here
    for stage in ("generate", "judge"):
        mine, theirs = loop.read_manifest(b.stage_dir(1, stage)), loop.read_manifest(a.stage_dir(1, stage))
        assert mine == theirs
    assert loop.read_manifest(b.stage_dir(1, "train"))["config_hash"] != loop.read_manifest(a.stage_dir(1, "train"))["config_hash"]
    # a rerun of the arm is a plain resume: nothing copied again, nothing redone
    again = []
    loop.run_all(dpo, tmp_path / "dpo", log=lambda *m: again.append(" ".join(map(str, m))), reuse_from=tmp_path / "sppo")
    assert all("done already" in line for line in again if line.startswith("iter"))
    # another config reuses nothing
    other = []
    loop.run_all(loop.apply_overrides(dpo, ["seed=4"]), tmp_path / "seed4", log=lambda *m: other.append(" ".join(map(str, m))),
                 reuse_from=tmp_path / "sppo")
    assert not any("reused from" in line for line in other)
    with pytest.raises(ValueError, match="--reuse-from .* is not a folder"):
        loop.run_all(dpo, tmp_path / "x", reuse_from=tmp_path / "missing")
