"""sppo_lite.evaluation_run and sppo_lite.reproduce: reading a run back, held-out prompts, per-iteration
evaluation on tiny models with a rule judge (answers computed by hand), best-of-n, launching and resuming."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.special import expit

from sppo_lite import cli, evaluation_run, generation, loop, reproduce
from sppo_lite.data import load_prompts
from sppo_lite.judges import LengthJudge
from sppo_lite.modeling import save_tiny_policy

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
PROMPTS = str(REPO / "data" / "prompts.jsonl")


def config_with(**settings):
    return loop.load_config(None, reproduce.as_overrides({**reproduce.tiny_settings(), "prompts.source": PROMPTS,
                                                          **settings}))


# ---------------------------------------------------------------- config helpers

def test_as_overrides_round_trips_through_load_config():
    settings = {"train.learning_rate": 5e-7, "train.beta": 1e-3, "prompts.n_prompts": None, "train.bf16": False,
                "policy.model": "some org/a model: v2", "generation.k": 7, "train.warmup_steps": 0.1}
    config = loop.load_config(None, reproduce.as_overrides(settings))
    assert config["train"]["learning_rate"] == 5e-7 and isinstance(config["train"]["learning_rate"], float)
    assert config["train"]["beta"] == 1e-3 and config["train"]["warmup_steps"] == 0.1
    assert config["prompts"]["n_prompts"] is None and config["train"]["bf16"] is False
    assert config["policy"]["model"] == "some org/a model: v2" and config["generation"]["k"] == 7
    # YAML 1.1 reads a hand-typed 5e-7 as a string; load_config coerces it for numeric keys.
    assert loop.load_config(None, ["train.learning_rate=5e-7"])["train"]["learning_rate"] == 5e-7  # coerced


def test_tiny_settings_are_a_valid_tiny_qlora_recipe():
    config = loop.load_config(None, reproduce.as_overrides(reproduce.tiny_settings()))
    assert config["policy"]["model"] == config["judge"]["model"] == "tiny"
    assert config["policy"]["mode"] == "qlora" and config["iterations"] == 3
    assert Path(config["prompts"]["source"]).resolve() == Path(PROMPTS)


def test_smoke_config_is_the_cpu_recipe_made_small():
    full, smoke = loop.load_config(reproduce.CPU_RECIPE), reproduce.smoke_config()
    for config in (full, smoke):
        assert config["policy"]["model"] == "smollm2-135m-instruct" and config["judge"]["type"] == "sentiment"
        assert Path(config["prompts"]["source"]).resolve() == Path(PROMPTS)
    assert full["iterations"] == 3 and smoke["iterations"] == 2
    assert smoke["prompts"]["n_prompts"] < full["prompts"]["n_prompts"]
    assert smoke["train"]["beta"] == full["train"]["beta"] and smoke["train"]["learning_rate"] == full["train"]["learning_rate"]
    # every iteration's prompts leave some of data/prompts.jsonl held out for notebook 05
    assert len(evaluation_run.heldout_prompts(full)) >= 64


def test_rows_are_named_after_the_model_that_ran():
    assert evaluation_run.model_label("smollm2-135m-instruct", 0) == "SmolLM2-135M-Instruct (base)"
    assert evaluation_run.model_label("smollm2-135m-instruct", 2) == "SPPO iter 2 (SmolLM2-135M-Instruct)"
    assert evaluation_run.model_label("mistralai/Mistral-7B-Instruct-v0.2", 3, best_of=16) == \
        "SPPO iter 3 (Mistral-7B-Instruct-v0.2), best-of-16"
    paper = evaluation_run.paper_table_text()
    assert "SPPO Iter3 (best-of-16)" in paper and "SmolLM2" not in paper
    ipo_arm = loop.Run(loop.apply_overrides(config_with(), ["train.loss_type=ipo"]), "unused")
    assert evaluation_run.model_label(ipo_arm, 1).startswith("IPO iter 1 (")  # a baseline arm is named as such


# ---------------------------------------------------------------- held-out prompts

def test_heldout_prompts_exclude_every_training_prompt(tmp_path):
    config = config_with(**{"prompts.n_prompts": 4})
    trained = {p for t in (1, 2, 3) for p in loop.iteration_prompts(config, t)[1]}
    assert len(trained) == 12
    everything = load_prompts(PROMPTS)
    held = evaluation_run.heldout_prompts(config)
    assert not set(held) & trained and len(held) == len(everything) - 12
    assert held[:5] == [p for p in everything if p not in trained][:5]
    assert evaluation_run.heldout_prompts(config, n=5) == held[:5]
    # Another file is filtered by text: its copies of training prompts are dropped.
    other = tmp_path / "eval.jsonl"
    some_trained = sorted(trained)[:2]
    other.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [*some_trained, "A prompt nobody trained on."]))
    assert evaluation_run.heldout_prompts(config, other) == ["A prompt nobody trained on."]


def test_no_heldout_prompt_is_a_one_line_error():
    config = config_with(**{"iterations": 1, "prompts.thirds": 1, "prompts.n_prompts": None})
    with pytest.raises(ValueError, match="none is held out"):
        evaluation_run.heldout_prompts(config)


# ---------------------------------------------------------------- reading a run

def fake_run(tmp_path, iterations=1):
    """A run folder by hand: a tiny base policy, and for each iteration a differently seeded tiny model as π_{t+1}."""
    config = config_with(**{"iterations": max(iterations, 1)})
    run = loop.Run(config, tmp_path / "run", log=lambda *_: None)
    run.output_dir.mkdir(parents=True)
    (run.output_dir / "config.json").write_text(json.dumps(config))
    run.base_model("policy")
    for t in range(1, iterations + 1):
        save_tiny_policy(run.stage_dir(t, "train") / "model", seed=t)
        (run.stage_dir(t, "train") / "manifest.json").write_text(json.dumps(
            {"config_hash": f"hash{t}", "elapsed_s": 2.5 * t, "summary": f"trained {t}", "finished": "now",
             "counts": {"metrics": {"train_loss": 1.0 / t}}}))
    return evaluation_run.load_run(run.output_dir, log=lambda *_: None)


def test_stage_table_histories_and_win_prob_stats_read_what_the_stages_wrote(tmp_path):
    run = fake_run(tmp_path, iterations=2)
    assert evaluation_run.finished_iterations(run.output_dir) == [1, 2]
    assert evaluation_run.iteration_models(run) == {0: str(run.output_dir / "base" / "tiny-policy"),
                                                    1: str(run.stage_dir(1, "train") / "model"),
                                                    2: str(run.stage_dir(2, "train") / "model")}
    (run.output_dir / "resources.json").write_text(json.dumps({"iter2": {"train": {"peak_gpu_gib": 7.25}}}))
    rows = evaluation_run.stage_table(run.output_dir)
    assert [(r["iteration"], r["stage"], r["elapsed_s"], r["peak_gpu_gib"]) for r in rows] == [
        (1, "train", 2.5, None), (2, "train", 5.0, 7.25)]
    log = [{"loss": 4.0, "loss_scaled": 0.04, "step": 1}, {"loss": 3.0, "step": 2}, {"train_loss": 3.5, "step": 2}]
    (run.stage_dir(1, "train") / "log_history.json").write_text(json.dumps(log))
    assert evaluation_run.train_histories(run.output_dir) == {1: log[:2]}
    build = run.stage_dir(1, "build")
    build.mkdir(parents=True)
    shutil.copy(REPO / "data" / "fixtures" / "sppo_iteration.parquet", build / "sppo.parquet")
    (build / "manifest.json").write_text("{}")
    stats = evaluation_run.win_prob_stats(run.output_dir)
    assert list(stats) == [1]
    np.testing.assert_allclose(stats[1]["chosen"], [0.8002342208273674, 0.830631475693522, 0.726911079067995])
    assert stats[1]["chosen"].shape == stats[1]["rejected"].shape == stats[1]["pair"].shape == (3,)


def test_load_run_without_a_run_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 04"):
        evaluation_run.load_run(tmp_path)


def test_load_run_finds_a_relative_prompt_file_from_another_working_directory(tmp_path, monkeypatch):
    # a run made from project/ (prompts.source "data/p.jsonl"), read by a notebook whose cwd is project/notebooks
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "notebooks").mkdir()
    (project / "data" / "p.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(9)))
    monkeypatch.chdir(project)
    config = loop.load_config("cpu-tiny", overrides=["prompts.source=data/p.jsonl", "prompts.n_prompts=2"])
    assert config["prompts"]["source"] == "data/p.jsonl"
    (project / "outputs" / "run").mkdir(parents=True)
    (project / "outputs" / "run" / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(project / "notebooks")
    run = evaluation_run.load_run("../outputs/run", log=lambda *_: None)
    assert Path(run.config["prompts"]["source"]) == (project / "data" / "p.jsonl").resolve()
    held = evaluation_run.heldout_prompts(run.config)
    assert len(held) == 9 - 2 * config["iterations"] and set(held) < {f"q{i}" for i in range(9)}  # 2 trained per iteration
    (project / "data" / "p.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="reads its prompts from data/p.jsonl"):
        evaluation_run.load_run("../outputs/run", log=lambda *_: None)


# ---------------------------------------------------------------- evaluation on tiny models

def test_evaluate_iterations_with_a_length_judge(tmp_path, monkeypatch):
    run = fake_run(tmp_path, iterations=2)
    prompts = evaluation_run.heldout_prompts(run.config, n=5)
    judge = LengthJudge(scale=4.0)
    kw = dict(max_new_tokens=6, n_boot=300, log=lambda *_: None)
    result = evaluation_run.evaluate_iterations(run, prompts, judge, tmp_path / "eval", **kw)
    assert result["iterations"] == [0, 1, 2]
    responses = result["responses"]
    assert all(len(responses[t]) == 5 for t in (0, 1, 2))
    assert responses[1] != responses[0]  # another model answers differently
    base = result["vs_base"][0]
    assert base["win_rate"] == 50.0 and base["win_rate_ci"] == (50.0, 50.0) and base["lc_win_rate"] == 50.0
    for t, baseline in ((1, 0), (2, 0)):
        lengths = np.array([len(r) for r in responses[t]]) - np.array([len(r) for r in responses[baseline]])
        r = result["vs_base"][t]
        assert r["win_rate"] == pytest.approx(100 * expit(lengths / 4.0).mean())  # longer wins, σ(Δlen/scale)
        assert r["win_rate_ci"][0] <= r["win_rate"] <= r["win_rate_ci"][1]
        assert r["lc_win_rate_ci"][0] - 1e-9 <= r["lc_win_rate"] <= r["lc_win_rate_ci"][1] + 1e-9
    assert result["vs_previous"][1] is result["vs_base"][1]
    lengths = np.array([len(r) for r in responses[2]]) - np.array([len(r) for r in responses[1]])
    assert result["vs_previous"][2]["win_rate"] == pytest.approx(100 * expit(lengths / 4.0).mean())
    np.testing.assert_allclose(result["length_drift"]["mean"], [np.mean([len(r) for r in responses[t]]) for t in (0, 1, 2)])

    # A rerun reads the cached generations back: no model generates anything.
    def no_generation(*a, **k):
        raise AssertionError("generated again")

    monkeypatch.setattr(generation, "generate_responses", no_generation)
    again = evaluation_run.evaluate_iterations(run, prompts, judge, tmp_path / "eval", **kw)
    assert again["responses"] == responses
    # Other prompts or settings are another cache entry.
    with pytest.raises(AssertionError, match="generated again"):
        evaluation_run.evaluate_iterations(run, prompts[:3], judge, tmp_path / "eval", **kw)
    # bf16 answers are another entry; bf16 off (given, or the run's generation.bf16) reads the fp32 answers back.
    assert evaluation_run.generate_for_models(run, prompts, tmp_path / "eval", max_new_tokens=6, bf16=False,
                                              log=kw["log"])[1] == [[r] for r in responses[1]]
    with pytest.raises(AssertionError, match="generated again"):
        evaluation_run.generate_for_models(run, prompts, tmp_path / "eval", max_new_tokens=6, bf16=True, log=kw["log"])
    run.config = loop.apply_overrides(run.config, ["generation.bf16=true"])
    with pytest.raises(AssertionError, match="generated again"):
        evaluation_run.generate_for_models(run, prompts, tmp_path / "eval", max_new_tokens=6, log=kw["log"])


def test_best_of_n_picks_the_judges_favourite_and_sample_0_is_the_single_answer(tmp_path):
    run = fake_run(tmp_path, iterations=1)
    prompts = evaluation_run.heldout_prompts(run.config, n=4)
    kw = dict(max_new_tokens=6, n_boot=200, log=lambda *_: None)
    single = evaluation_run.evaluate_iterations(run, prompts, LengthJudge(), tmp_path / "eval", **kw)
    bon = evaluation_run.best_of_n_eval(run, prompts, LengthJudge(), tmp_path / "eval", n=3, **kw)
    assert bon["iteration"] == 1 and bon["n"] == 3
    cached = evaluation_run.generate_for_models(run, prompts, tmp_path / "eval", iterations=[1], n=3, max_new_tokens=6,
                                                log=lambda *_: None)[1]
    assert [c[0] for c in cached] == single["responses"][1]  # same seeds: sample 0 is the single answer
    assert bon["responses"] == [max(c, key=len) for c in cached]  # a length judge picks the longest (first on ties)
    assert bon["single"]["win_rate"] == pytest.approx(single["vs_base"][1]["win_rate"])
    assert bon["best"]["win_rate"] >= bon["single"]["win_rate"]
    with pytest.raises(ValueError, match="n >= 2"):
        evaluation_run.best_of_n_eval(run, prompts, LengthJudge(), tmp_path / "eval", n=1)


def test_generating_for_an_unfinished_iteration_is_refused(tmp_path):
    run = fake_run(tmp_path, iterations=1)
    with pytest.raises(ValueError, match="not finished training"):
        evaluation_run.generate_for_models(run, ["hi"], tmp_path / "eval", iterations=[2])


# ---------------------------------------------------------------- running the pipeline

@pytest.mark.slow
def test_run_pipeline_in_process_records_each_stage_once(tmp_path):
    config = config_with(**{"iterations": 1, "prompts.n_prompts": 2, "judge.type": "length", "policy.mode": "full",
                            "train.num_train_epochs": 1})
    lines = []
    resources = reproduce.run_pipeline(config, tmp_path / "run", log=lines.append)
    assert set(resources["iter1"]) == set(loop.STAGES)
    assert all(r["wall_s"] > 0 and r["peak_gpu_gib"] is None for r in resources["iter1"].values())  # CPU: no GPU peak
    assert [line.split(":")[0] for line in lines] == [f"iter1/{s}" for s in loop.STAGES]
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == json.loads(json.dumps(config))
    assert "train_runtime" in (tmp_path / "run" / "pipeline.log").read_text()  # the Trainer's own output went there
    lines.clear()
    assert reproduce.run_pipeline(config, tmp_path / "run", log=lines.append) == resources  # nothing ran again
    assert all("done already" in line for line in lines)
    assert [r["stage"] for r in evaluation_run.stage_table(tmp_path / "run")] == list(loop.STAGES)


def test_accelerate_config_and_command():
    full, qlora = loop.load_config(None), config_with()
    assert reproduce.accelerate_config_for(full).name == "deepspeed_zero3.yaml"
    assert reproduce.accelerate_config_for(qlora).name == "ddp.yaml"
    assert reproduce.accelerate_config_for(full).is_file() and reproduce.accelerate_config_for(qlora).is_file()
    cmd = reproduce.accelerate_command("r.yaml", "out", 8, "configs/accelerate/deepspeed_zero3.yaml")
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "8" and cmd[cmd.index("--config_file") + 1].endswith("zero3.yaml")
    tail = cmd[cmd.index("sppo_lite.cli") + 1:]  # what every rank runs: a valid `sppo-lite iterate`
    args = cli.build_parser().parse_args(tail)
    assert (args.command, args.config, args.output_dir) == ("iterate", "r.yaml", "out")


def test_run_pipeline_on_several_gpus_launches_a_child_and_reports_its_stage_lines(tmp_path, monkeypatch):
    config = config_with()
    launched = []

    def fake_command(recipe, run_dir, gpus, accelerate_config):
        launched.append((recipe, run_dir, gpus, Path(accelerate_config).name))
        return [sys.executable, "-c", "print('iter1/generate: 4 prompts in 1.0 s'); print('a progress bar')"]

    monkeypatch.setattr(reproduce, "accelerate_command", fake_command)
    lines = []
    reproduce.run_pipeline(config, tmp_path / "run", gpus=4, log=lines.append)
    recipe, run_dir, gpus, accel = launched[0]
    assert (gpus, accel, Path(run_dir)) == (4, "ddp.yaml", tmp_path / "run")
    assert loop.load_config(recipe) == config  # the child runs exactly the notebook's config
    assert lines[1:] == ["iter1/generate: 4 prompts in 1.0 s"] and lines[0].startswith("$ accelerate launch")
    assert "a progress bar" in (tmp_path / "run" / "pipeline.log").read_text()
    monkeypatch.setattr(reproduce, "accelerate_command",
                        lambda *a: [sys.executable, "-c", "import sys; print('out of memory'); sys.exit(3)"])
    with pytest.raises(RuntimeError, match=r"(?s)exit 3.*out of memory"):
        reproduce.run_pipeline(config, tmp_path / "run", gpus=2, log=lambda *_: None)


# ---------------------------------------------------------------- reproduce

def test_reproduce_runs_04_then_05_on_one_run_dir(tmp_path, monkeypatch):
    import sppo_lite.notebooks

    calls = []

    def fake_run_notebook(path, output_dir, smoke=True, parameters=None):
        calls.append((Path(path).name, Path(output_dir), smoke, parameters))
        return {"notebook": Path(path).stem}

    monkeypatch.setattr(sppo_lite.notebooks, "run_notebook", fake_run_notebook)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"iterations": 3}))
    out = reproduce.reproduce(tmp_path / "D", gpus=8, config=recipe, log=lambda *_: None)
    assert [c[0] for c in calls] == list(reproduce.NOTEBOOKS)
    (_, d4, smoke4, p4), (_, d5, _, p5) = calls
    assert d4 == d5 == (tmp_path / "D").resolve() and smoke4 is False
    assert p4 == {"RUN_DIR": str(d4 / "run"), "CONFIG": str(recipe.resolve()), "GPUS": 8}
    assert p5 == {"RUN_DIR": str(d4 / "run")}
    assert out == {"04_qlora_sppo_mistral7b": {"notebook": "04_qlora_sppo_mistral7b"},
                   "05_evaluation": {"notebook": "05_evaluation"}}
    written = json.loads((tmp_path / "D" / "reproduce.json").read_text())
    assert written["gpus"] == 8 and set(written["wall_s"]) == set(out)
    with pytest.raises(ValueError, match="missing.yaml does not exist; give a YAML path or a shipped recipe name"):
        reproduce.reproduce(tmp_path / "E", config=tmp_path / "missing.yaml", gpus=1)


def test_cli_reproduce(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_reproduce(output_dir, smoke, gpus, config):
        seen.update(output_dir=output_dir, smoke=smoke, gpus=gpus, config=config)
        return {"05_evaluation": {"vs_base": {"SPPO Iter1": {"win_rate": 61.0, "lc_win_rate": 57.5}}}}

    monkeypatch.setattr(reproduce, "reproduce", fake_reproduce)
    assert cli.main(["reproduce", "--output-dir", str(tmp_path), "--smoke", "--gpus", "2"]) == 0
    assert seen == {"output_dir": str(tmp_path), "smoke": True, "gpus": 2, "config": "configs/full-8gpu-mistral7b.yaml"}
    assert "SPPO Iter1: win rate vs base 61.0, LC 57.5" in capsys.readouterr().out
    monkeypatch.undo()
    assert cli.main(["reproduce", "--output-dir", str(tmp_path), "--config", "missing.yaml", "--gpus", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1


def test_notebook_notation_names_the_base_pi_zero():
    # The loop calls the base π_1 and iteration t's model π_{t+1}; the notebooks call them π₀ and π_t.
    assert evaluation_run.pi_name(0) == "π₀" and evaluation_run.pi_name(3) == "π_3"
    with pytest.raises(ValueError):
        evaluation_run.pi_name(-1)
    line = "iter1/train: π_2 trained (sppo, β=0.025, lora), loss 64.92 in 168.0 s"
    assert evaluation_run.in_notebook_notation(line) == "iter1/train: π_1 trained (sppo, β=0.025, lora), loss 64.92 in 168.0 s"
    assert evaluation_run.in_notebook_notation("no training rows: π_2 = π_1 (every pair tied)") == \
        "no training rows: π_1 = π₀ (every pair tied)"
    assert evaluation_run.in_notebook_notation("iter12/train: π_13 trained") == "iter12/train: π_12 trained"
    assert evaluation_run.in_notebook_notation("32 prompts × 4 responses") == "32 prompts × 4 responses"
