"""Tiny tokenizer/model factory and the real loaders (full / LoRA / QLoRA), all offline."""
import huggingface_hub
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sppo_lite.modeling import (MISTRAL_CHAT_TEMPLATE, build_tiny_model, build_tiny_tokenizer, load_policy,
                                pick_dtype, save_tiny_policy)

USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return save_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy")


def lora_param_count(model, r):
    """r·(in + out) for every nn.Linear except lm_head: what all-linear LoRA adds."""
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"))


def test_tokenizer_round_trip_and_specials(tokenizer):
    for text in ["Hello world!", "  two  spaces and tabs\t", "café, naïve, 東京 ✓ 🙂", "[INST] x [/INST]"]:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id  # prepends <s> like Mistral's tokenizer
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id not in (None, 0, 1, 2)
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert "token_type_ids" not in tokenizer("hi")


def test_extra_texts_are_learned():
    word = "supercalifragilistic"
    plain, taught = build_tiny_tokenizer(), build_tiny_tokenizer(texts=[word] * 20)
    assert len(taught.tokenize(word)) < len(plain.tokenize(word))


def test_chat_template_is_mistral_instruct(tokenizer):
    text = tokenizer.apply_chat_template(USER, add_generation_prompt=True, tokenize=False)
    assert text == "<s>[INST] What is the capital of France? [/INST]"
    turn = USER + [{"role": "assistant", "content": "Paris."}]
    assert tokenizer.apply_chat_template(turn, tokenize=False).endswith("[/INST]Paris.</s>")
    ids = tokenizer.apply_chat_template(USER, add_generation_prompt=True, return_dict=False)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(ids) == text


def test_tiny_model_matches_tokenizer_and_is_seeded(tokenizer):
    state = torch.random.get_rng_state()
    model = build_tiny_model(tokenizer, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    cfg = model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == (len(tokenizer), 64, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, tokenizer.pad_token_id)
    same, other = build_tiny_model(tokenizer, seed=3), build_tiny_model(tokenizer, seed=4)
    weight = "model.embed_tokens.weight"
    assert torch.equal(model.state_dict()[weight], same.state_dict()[weight])
    assert not torch.equal(model.state_dict()[weight], other.state_dict()[weight])


def test_save_and_from_pretrained_round_trip(policy_dir):
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    rebuilt = build_tiny_model(build_tiny_tokenizer())
    assert tokenizer.chat_template == MISTRAL_CHAT_TEMPLATE
    assert tokenizer("Hello there")["input_ids"] == build_tiny_tokenizer()("Hello there")["input_ids"]
    ids = torch.tensor([tokenizer.apply_chat_template(USER, add_generation_prompt=True, return_dict=False)])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, rebuilt(ids).logits)


def test_load_policy_full(policy_dir):
    model, tokenizer = load_policy(policy_dir)
    assert model.dtype == torch.float32 and not model.training
    assert all(p.requires_grad for p in model.parameters())
    assert tokenizer.chat_template == MISTRAL_CHAT_TEMPLATE


def test_load_policy_lora_trains_only_adapters(policy_dir):
    model, _ = load_policy(policy_dir, mode="lora", lora_r=4, gradient_checkpointing=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    base = AutoModelForCausalLM.from_pretrained(policy_dir)
    assert trainable == lora_param_count(base, 4)
    assert 0 < trainable < 0.1 * total
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    base_model = model.base_model.model  # transformers 5 renamed is_gradient_checkpointing (old name warns)
    assert getattr(base_model, "is_activation_checkpointing", None) or base_model.is_gradient_checkpointing


def test_load_policy_sets_missing_pad_to_eos(tmp_path):
    path = save_tiny_policy(tmp_path / "policy")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(path)
    _, loaded = load_policy(path)
    assert loaded.pad_token_id == loaded.eos_token_id


@pytest.fixture(scope="module")
def qlora_policy(policy_dir):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        pytest.skip("bitsandbytes is not installed (pip install 'sppo-lite[dev]')")
    try:
        return load_policy(policy_dir, mode="qlora", lora_r=4, gradient_checkpointing=True)
    except (RuntimeError, NotImplementedError) as err:
        pytest.skip(f"bitsandbytes cannot load 4-bit weights on this CPU: {err}")


def test_qlora_loads_nf4_on_cpu_and_trains_adapters(qlora_policy):
    import bitsandbytes as bnb
    model, tokenizer = qlora_policy
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    assert linear4[0].weight.quant_type == "nf4" and linear4[0].weight.quant_state.nested  # double quant
    assert linear4[0].compute_dtype == torch.float32
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) < 0.1 * sum(p.numel() for p in model.parameters())

    model.train()
    ids = torch.tensor([tokenizer.apply_chat_template(USER, add_generation_prompt=True, return_dict=False)])
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in trainable.values())
    assert all(p.grad.abs().sum() > 0 for n, p in trainable.items() if "lora_B" in n)  # B starts at 0, so A's grad is 0
    model.zero_grad()
    model.eval()


@pytest.mark.parametrize("dtype, norm_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)])
def test_qlora_upcasts_norms_to_fp32_only_for_fp16_compute(policy_dir, dtype, norm_dtype):
    pytest.importorskip("bitsandbytes")
    model, _ = load_policy(policy_dir, mode="qlora", lora_r=4, dtype=dtype)
    norms = {n: p.dtype for n, p in model.named_parameters() if "norm" in n}
    assert norms and set(norms.values()) == {norm_dtype}
    assert model.get_input_embeddings().weight.dtype == norm_dtype
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_missing_local_path_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache.*offline mode is on"):
        load_policy("someone/not-cached-model")
    with pytest.raises(FileNotFoundError, match="neither a model folder .no such folder. nor a Hub model id"):
        load_policy(str(tmp_path / "no-such-model"))  # a path is not taken for a Hub id


def test_tokenizer_without_chat_template_is_rejected(tmp_path):
    path = save_tiny_policy(tmp_path / "policy")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(path)
    (tmp_path / "policy" / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="has no chat template: set tokenizer.chat_template"):
        load_policy(path)


def test_bad_arguments(policy_dir):
    with pytest.raises(ValueError, match="mode must be one of"):
        load_policy(policy_dir, mode="int8")
    with pytest.raises(ValueError, match="dtype must be a torch dtype"):
        load_policy(policy_dir, dtype="float33")


def test_load_policy_accepts_dtype_names(policy_dir):
    model, _ = load_policy(policy_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_pick_dtype(monkeypatch):
    assert pick_dtype("cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick_dtype("cuda") == torch.float16  # a T4
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype(torch.device("cuda", 0)) == torch.bfloat16


def test_merge_lora_on_disk_equals_peft_merge(policy_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sppo_lite.modeling import merge_lora_on_disk

    # A base saved in several shards, and an adapter whose B is not zero (as after training).
    base = AutoModelForCausalLM.from_pretrained(policy_dir)
    base.save_pretrained(tmp_path / "base", max_shard_size="100KB")
    assert len(list((tmp_path / "base").glob("*.safetensors"))) > 1
    model, _ = load_policy(policy_dir, mode="lora", lora_r=4, lora_alpha=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "adapter")
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                         tmp_path / "adapter").merge_and_unload().state_dict()
    merge_lora_on_disk(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()  # a plain, loadable model
    assert merged.keys() == expected.keys()
    moved = 0
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6)
        moved += not torch.equal(tensor, base.state_dict()[name])
    assert moved == 2 * 7  # the 7 adapted linear layers of each of the 2 layers moved, nothing else
    with pytest.raises(ValueError, match="another model"):
        merge_lora_on_disk(_one_layer_base(tmp_path), tmp_path / "adapter", tmp_path / "bad")


def _one_layer_base(tmp_path):
    """A base with only the first decoder layer's weights: half the adapter has nothing to merge into."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "one_layer"
    out.mkdir()
    tensors = {}
    for shard in (tmp_path / "base").glob("*.safetensors"):
        tensors.update({k: v for k, v in load_file(str(shard)).items() if ".layers.1." not in k})
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
