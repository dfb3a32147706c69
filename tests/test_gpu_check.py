"""The GPU check's helpers, on CPU: random 4-bit weights without a checkpoint, and the smoke result's JSON."""
import json
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))


@pytest.mark.slow
def test_random_weights_load_as_4bit_without_a_checkpoint(tmp_path, benchmarks_on_path):
    bnb = pytest.importorskip("bitsandbytes")
    import qlora_step
    from transformers import AutoModelForCausalLM

    from sppo_lite.modeling import load_policy

    qlora_step.build_model_dir(tmp_path, tiny=True, weights="memory")
    assert not list(tmp_path.glob("*.safetensors")) and (tmp_path / qlora_step.RANDOM_WEIGHTS).exists()
    own = AutoModelForCausalLM.__dict__.get("from_pretrained")
    try:
        qlora_step.use_random_weights(tmp_path)
        model, tokenizer = load_policy(tmp_path, mode="qlora", dtype=torch.float32)
    finally:  # the patch is for a benchmark worker's process: undo it for the other tests
        if own is None:
            del AutoModelForCausalLM.from_pretrained
        else:
            AutoModelForCausalLM.from_pretrained = own
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert model.config.name_or_path == str(tmp_path.resolve())
    ids = tokenizer("hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_gpu_smoke_writes_the_failure_and_its_last_line(tmp_path, benchmarks_on_path):
    import gpu_smoke

    rc = gpu_smoke.main(["--device", "cpu", "--name", "cpu test", "--work-dir", str(tmp_path / "run"),
                         "--results-dir", str(tmp_path), "--set", "generation.k=1"])
    result = json.loads((tmp_path / "gpu_smoke-cpu-test.json").read_text())
    assert rc == 1
    assert set(result) == {"ok", "gpu", "stages", "error"}
    assert result["ok"] is False and result["gpu"] == "cpu test" and result["stages"] == {}
    assert result["error"].startswith("ValueError: ") and "generation.k must be an integer >= 2" in result["error"]
