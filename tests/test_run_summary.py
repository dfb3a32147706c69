"""A training stage that cannot move the weights is refused; one that did says how far; a run ends with its table."""
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from sppo_lite import cli, loop
from sppo_lite.modeling import weight_change
from sppo_lite.trainer import SPPOConfig, check_training_moves, planned_learning_rates
from shared import PROMPTS, tiny_config

QUIET = dict(log=lambda *_: None)
TRAIN = ["train.beta=0.1", "train.learning_rate=0.01", "train.optim=adamw_torch", "train.bf16=false",
         "train.gradient_checkpointing=false", "train.per_device_train_batch_size=3"]


def schedule(tmp_path, **kw):
    return SPPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)


def test_planned_learning_rates_follow_the_trainers_schedule(tmp_path):
    # 10 rows, batch 1: 10 steps; warmup 0.1 → 1 step, then linear decay (10 − s)/9.
    rates = planned_learning_rates(schedule(tmp_path, learning_rate=1.0, warmup_steps=0.1, num_train_epochs=1,
                                            per_device_train_batch_size=1), 10)
    assert rates == pytest.approx([0.0, 1.0, 8 / 9, 7 / 9, 6 / 9, 5 / 9, 4 / 9, 3 / 9, 2 / 9, 1 / 9])
    # 7 rows, batch 2, accumulation 2, 3 epochs: ⌈⌈7/2⌉/2⌉ = 2 steps an epoch, 6 in all; constant.
    assert planned_learning_rates(schedule(tmp_path, learning_rate=0.5, per_device_train_batch_size=2,
                                           gradient_accumulation_steps=2, num_train_epochs=3,
                                           lr_scheduler_type="constant"), 7) == [0.5] * 6
    assert len(planned_learning_rates(schedule(tmp_path, max_steps=4), 1000)) == 4


def test_a_training_inside_its_warmup_is_refused_and_one_step_is_warned(tmp_path, caplog):
    one_step_in_warmup = schedule(tmp_path, learning_rate=1e-3, warmup_steps=0.1, per_device_train_batch_size=8,
                                  num_train_epochs=1)
    with pytest.raises(ValueError, match="6 rows would take 1 optimizer step\\(s\\), every one at learning rate 0"):
        check_training_moves(one_step_in_warmup, 6, "d.parquet")
    with caplog.at_level("WARNING"):
        assert check_training_moves(schedule(tmp_path, learning_rate=1e-3, per_device_train_batch_size=8,
                                             num_train_epochs=1), 6, "d.parquet") == [1e-3]
    assert "takes 1 optimizer step(s) only" in caplog.text


def test_the_loop_refuses_a_train_stage_at_learning_rate_0_before_loading_the_model(tmp_path):
    config = tiny_config(tmp_path, **{"train.warmup_steps": 0.1, "train.per_device_train_batch_size": 8,
                                      "train.learning_rate": 0.01, "train.optim": "adamw_torch"})
    run = loop.Run(config, tmp_path / "run", **QUIET)
    (tmp_path / "run").mkdir()
    loop.run_iteration(run, 1, stages=("generate", "judge", "build"))
    with pytest.raises(ValueError, match="every one at learning rate 0 \\(warmup_steps = 0.1\\)"):
        loop.train_stage(run, 1)
    assert loop.read_manifest(run.stage_dir(1, "train")) is None


def test_weight_change_by_hand(tmp_path):
    a = {"w": torch.tensor([[3.0, 0.0], [0.0, 4.0]]), "b": torch.tensor([1.0, 1.0]), "step": torch.tensor([7])}
    b = {"w": torch.tensor([[3.0, 0.0], [0.0, 4.0]]), "b": torch.tensor([1.0, 3.0]), "step": torch.tensor([8])}
    for name, tensors in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
    moved = weight_change(tmp_path / "a", tmp_path / "b")
    # ‖Δ‖ = 2 over ‖θ‖ = √(9 + 16 + 1 + 1) = √27; the integer tensor is not a weight
    assert moved == {"relative_l2": pytest.approx(2 / 27 ** 0.5), "max_abs": 2.0, "changed_tensors": 1, "tensors": 2}


def test_a_trained_model_says_how_far_it_moved_and_an_unmoved_one_is_not_published(tmp_path, monkeypatch):
    config = loop.apply_overrides(tiny_config(tmp_path), TRAIN)
    logged = []
    run = loop.run_all(config, tmp_path / "run", log=logged.append)
    manifest = loop.read_manifest(run.stage_dir(1, "train"))
    moved = manifest["counts"]["weight_change"]
    assert moved["relative_l2"] > 1e-4 and moved["changed_tensors"] == moved["tensors"] > 5
    assert any(f"weights moved ‖Δθ‖/‖θ‖ = {moved['relative_l2']:.2e}" in line for line in logged)

    import sppo_lite.trainer as trainer

    def copies(policy, dataset, output_dir, **kw):  # a training that silently changes nothing
        shutil.copytree(policy, output_dir)
        return {"train_loss": 1.0, "global_step": 2}, []

    monkeypatch.setattr(trainer, "train_and_merge", copies)
    with pytest.raises(ValueError, match="π_2 is bit-identical to π_1 after 2 step\\(s\\), so it is not published"):
        loop.train_stage(loop.Run(config, run.output_dir, **QUIET), 1, force=True)
    assert loop.read_manifest(run.stage_dir(1, "train")) == manifest  # the earlier model is kept


def test_iterate_ends_with_a_table_and_the_final_models_path(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "seed": 1, "iterations": 2, "policy": {"model": "tiny", "device": "cpu"},
        "prompts": {"source": PROMPTS, "n_prompts": 6},
        "generation": {"k": 3, "max_new_tokens": 6, "batch_size": 6, "shard_size": 6},
        "judge": {"type": "length"}, "train": {"beta": 0.1, "learning_rate": 0.01, "optim": "adamw_torch",
                                              "warmup_steps": 0, "per_device_train_batch_size": 3, "bf16": False,
                                              "gradient_checkpointing": False, "max_length": 256,
                                              "max_prompt_length": 200}}))
    out = tmp_path / "run"
    assert cli.main(["iterate", "--config", str(recipe), "--output-dir", str(out)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.lstrip().startswith("iter "))
    assert header.split() == ["iter", "pairs", "steps", "loss", "mean", "P̂", "margin", "‖Δθ‖/‖θ‖", "time"]
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [r[0] for r in rows] == ["1", "2"] and all(int(r[2]) >= 2 for r in rows)
    for t, row in zip((1, 2), rows):
        manifest = loop.read_manifest(out / f"iter{t}" / "train")
        planned = planned_learning_rates(schedule(tmp_path, learning_rate=0.01, warmup_steps=0, num_train_epochs=1,
                                                  per_device_train_batch_size=3), int(row[1]))
        assert int(row[2]) == len(planned) == manifest["counts"]["steps"]  # the plan is the Trainer's count
        assert int(row[1]) == loop.read_manifest(out / f"iter{t}" / "build")["counts"]["rows"]
        assert float(row[6]) == pytest.approx(manifest["counts"]["weight_change"]["relative_l2"], rel=0.01)
    assert f"the final model π_3: {out / 'iter2' / 'train' / 'model'}" in text
    assert Path(out / "iter2" / "train" / "model" / "README.md").read_text().count("sppo-lite") >= 2


def test_output_is_ours_by_default_and_the_libraries_go_to_the_run_log(tmp_path):
    """A fresh process (the routing is process-wide): default shows our lines and bars, -q the table only."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    small = ["--set", "iterations=1", "--set", "prompts.n_prompts=4", "--set", "generation.k=3",
             "--set", "generation.max_new_tokens=6", "--set", "train.warmup_steps=0"]
    runs = {}
    for flag in ("", "-q", "-v"):
        out = tmp_path / f"run{flag}"
        done = subprocess.run([sys.executable, "-m", "sppo_lite.cli", "iterate", "--config", "cpu-tiny",
                               "--output-dir", str(out), *small, *([flag] if flag else [])],
                              capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[flag] = (done.stdout, done.stderr, out / "run.log")
    stdout, stderr, log = runs[""]
    assert "iter1/judge: 4 win matrices" in stdout and "Successfully loaded ranker" not in stdout + stderr
    assert "Writing model shards" not in stderr and "{'loss'" not in stdout + stderr
    assert "iter1 train" in stderr and "No ranker config provided" in log.read_text()
    assert "step 1: {" in log.read_text()  # the Trainer's logs, kept
    quiet_out, quiet_err, _ = runs["-q"]
    assert "iter1/judge" not in quiet_out and "iter  pairs" in quiet_out and "the final model π_2" in quiet_out
    assert "iter1 generate" not in quiet_err
    loud_out, loud_err, loud_log = runs["-v"]
    assert "Successfully loaded ranker" in loud_out and not loud_log.exists()


def test_evaluate_a_finished_run(tmp_path, capsys):
    import json

    config = loop.apply_overrides(tiny_config(tmp_path), TRAIN)
    loop.run_all(config, tmp_path / "run", **QUIET)
    assert cli.main(["evaluate", "--run-dir", str(tmp_path / "run"), "--n-prompts", "8", "--n-boot", "200",
                     "--max-new-tokens", "6"]) == 0
    text = capsys.readouterr().out
    assert "8 held-out prompts, one sample each, judged by the run's judge (length)" in text
    summary = json.loads((tmp_path / "run" / "evaluation" / "evaluation.json").read_text())
    assert summary["prompts"] == 8 and set(summary["vs_base"]) == {"0", "1"}
    assert summary["vs_base"]["0"]["win_rate"] == 50.0  # the base against itself
    row = next(line for line in text.splitlines() if line.startswith("SPPO iter 1") and "[" in line)
    assert f"{summary['vs_base']['1']['win_rate']:.1f}" in row
    trained = set(loop.iteration_prompts(config, 1)[1])
    from sppo_lite.evaluation_run import heldout_prompts

    assert not trained & set(heldout_prompts(config, n=8))
    assert cli.main(["evaluate", "--run-dir", str(tmp_path / "nothing")]) == 2
    # the independent signal: 61 factual questions, the base and iteration 1, accuracy and a paired difference
    assert set(summary["factual"]) == {"0", "1"} and summary["factual"]["0"]["n"] == 61
    assert summary["factual"]["0"]["difference"] == 0.0 and "independent signal: 61 factual questions" in text
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Why?"}\n')
    capsys.readouterr()
    assert cli.main(["evaluate", "--run-dir", str(tmp_path / "run"), "--factual", str(bad)]) == 2
    assert "needs a non-empty \"question\" and a list" in capsys.readouterr().err


def test_routing_is_undone_and_nothing_is_dropped(tmp_path, capsys):
    import logging

    from sppo_lite import console

    def state():
        return {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate, logging.getLogger(n).level)
                for n in ("transformers", "sppo_lite", "")}

    before = state()
    with console.routed("default"):  # no run folder ever known (a run refused before any work)
        logging.getLogger("transformers.modeling_utils").warning("model not found")
    assert "model not found" in capsys.readouterr().err and state() == before
    with console.routed("default"):
        console.attach_log(tmp_path)
        with console.routed("quiet"):   # a command inside a command
            pass
        logging.getLogger("sppo_lite.run").info("after the inner one")
    assert "after the inner one" in (tmp_path / "run.log").read_text() and state() == before
