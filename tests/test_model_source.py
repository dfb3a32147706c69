"""One model resolver: tiny, named, a folder or a Hub id decided once, bad names refused before any work."""
from __future__ import annotations

import pytest

from sppo_lite import loop, modeling
from sppo_lite.model_source import resolve_model

from shared import tiny_config
from test_pipeline_safety import hub_cache  # noqa: F401  (the fixture: a Hub cache laid out by the test)


def test_kinds(tmp_path, hub_cache):  # noqa: F811
    assert resolve_model("tiny").kind == "tiny"
    named = resolve_model("smollm2-135m-instruct")
    assert (named.kind, named.label) == ("named", "SmolLM2-135M-Instruct")
    folder = tmp_path / "m"
    modeling.save_tiny_policy(folder, seed=1)
    assert resolve_model(str(folder)).kind == "folder" and resolve_model(folder).path() == str(folder)
    hub = resolve_model("sppo-test/tiny-chat")
    assert (hub.kind, hub.label, hub.identity()) == ("hub", "tiny-chat", "hub:sppo-test/tiny-chat")
    assert resolve_model(str(folder)).identity().startswith("content:")
    assert resolve_model("tiny").identity() == "tiny"


def test_bad_names_fail_in_one_line(tmp_path, hub_cache, monkeypatch):  # noqa: F811
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        resolve_model("not-cached/model")
    with pytest.raises(FileNotFoundError, match="neither a model folder"):
        resolve_model(str(tmp_path / "missing" / "deeper" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model"):
        resolve_model(str(tmp_path / "empty"))
    monkeypatch.setitem(modeling.NAMED_MODELS, "fake-model", {"package": "no_such_package_xyz", "install": "pip install fake"})
    with pytest.raises(FileNotFoundError, match="pip install fake"):
        resolve_model("fake-model")
    with pytest.raises(ValueError, match="the tiny model is built by the run"):
        resolve_model("tiny").path()


def test_a_run_resolves_each_model_once_and_refuses_a_bad_one_before_any_folder(tmp_path, monkeypatch):
    import sppo_lite.model_source as ms

    calls = []
    real = ms.resolve_model
    monkeypatch.setattr(ms, "resolve_model", lambda name: calls.append(name) or real(name))
    run = loop.Run(tiny_config(tmp_path), tmp_path / "run", log=lambda *a: None)
    for _ in range(3):
        run.model_source("policy"), run.policy_identity(1)
    assert calls == ["tiny"]
    bad = loop.Run(tiny_config(tmp_path, **{"policy.model": str(tmp_path / "no" / "such" / "model")}),
                   tmp_path / "bad", log=lambda *a: None)
    with pytest.raises(FileNotFoundError, match="policy.model: .*neither a model folder"):
        bad.accept(1)
    assert not (tmp_path / "bad").exists()
