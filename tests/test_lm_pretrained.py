"""A pretrained Hugging Face causal LM fine-tuned through the language-modelling family, offline: a tiny GPT-2
built from a config (and a BPE tokenizer trained here) is saved to a folder and used as `model.name`."""

from __future__ import annotations

import pytest
import torch
from tests.test_language_modeling import corpus, family, lm_recipe

from nnrecipe.data.lm import BlockLoader, HFTokenizer, encode_stream
from nnrecipe.engine.checkpoint import load_weights
from nnrecipe.errors import UserError
from nnrecipe.models.hf_causal import load_causal_lm
from nnrecipe.models.sequence import generate
from nnrecipe.runs import create_run
from nnrecipe.tasks.language_modeling import NextToken


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator([corpus(50, seed=3)], trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet))
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config)
    # "Pretraining": three of the four verses, so fine-tuning has the fourth to learn.
    text = "".join(v for v in corpus(300, seed=4).splitlines(keepends=True) if not v.startswith("to be"))
    loader = BlockLoader(encode_stream(HFTokenizer(tok), text), 32, 16, batches=150, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for x, _ in loader.batches():
        model(input_ids=x, labels=x).loss.backward()  # the model shifts its labels itself
        opt.step()
        opt.zero_grad()
    model.save_pretrained(folder)
    return folder


def pretrained_recipe(tmp_path, folder, *overrides):
    return lm_recipe(tmp_path, f"model.name={folder}", "optim.lr=0.003", "train.epochs=4", *overrides)


def base_loss(folder, text: str) -> float:
    model = load_causal_lm(str(folder)).eval()
    tokens = encode_stream(HFTokenizer.load(folder), text)
    return NextToken().evaluate(model, BlockLoader(tokens, 32, 16, batches=8))["loss"]


def test_full_fine_tuning_lowers_the_base_models_loss_and_generates(tmp_path, tiny_gpt2):
    recipe = pretrained_recipe(tmp_path, tiny_gpt2)
    run = create_run(recipe, "gpt2-full")
    result = family.train(recipe, run)
    before = base_loss(tiny_gpt2, family.splits(recipe).val)
    assert result["loss"] < 0.5 * before, (result["loss"], before)
    assert run.spec()["model"]["kind"] == "hf" and (run.dir / "tokenizer.json").is_file()
    out = family.generate(run, "a stitch", max_new_tokens=6, temperature=0.0)
    assert out["text"].startswith(" in time"), out["text"]  # it learned the verse
    from nnrecipe.deploy.export import ATOL, export_run

    card = export_run(run, "onnx")
    assert card["checks"]["max_abs_diff"] <= ATOL and card["model"] == str(tiny_gpt2)


def test_lora_trains_only_its_adapters_and_still_learns(tmp_path, tiny_gpt2, recwarn):
    recipe = pretrained_recipe(tmp_path, tiny_gpt2, "model.finetune=lora", "model.lora_r=8", "optim.lr=0.01")
    run = create_run(recipe, "gpt2-lora")
    result = family.train(recipe, run)
    assert not [w for w in recwarn if "fan_in_fan_out" in str(w.message)]  # peft corrected it, warning per run
    spec = run.spec()
    assert spec["model"]["finetune"] == "lora" and spec["trainable_parameters"] < 0.1 * spec["parameters"]
    before = base_loss(tiny_gpt2, family.splits(recipe).val)
    assert result["loss"] < before - 0.1, (result["loss"], before)
    weights = load_weights(run.best_checkpoint)
    base = load_causal_lm(str(tiny_gpt2)).model.state_dict()
    frozen = [k for k in weights if "lora_" not in k and k.endswith("mlp.c_fc.weight")]
    assert frozen and all(
        torch.equal(weights[k], base[k.replace("base_model.model.", "").replace("model.", "", 1)]) for k in frozen
    )
    assert any("lora_A" in k for k in weights)


def test_cached_generation_equals_recomputing_the_context(tiny_gpt2):
    model = load_causal_lm(str(tiny_gpt2)).eval()
    prompt = torch.tensor([[5, 9, 12]])
    with_cache = generate(model, prompt, 20, temperature=0.0, use_cache=True)
    without = generate(model, prompt, 20, temperature=0.0, use_cache=False)
    assert torch.equal(with_cache, without)


def test_a_pretrained_model_refuses_another_tokenizer_a_longer_block_and_the_doctor(tmp_path, tiny_gpt2):
    with pytest.raises(UserError, match="data.tokenizer: .* reads its own tokenizer"):
        family.train(r := pretrained_recipe(tmp_path, tiny_gpt2, "data.tokenizer=char"), create_run(r, "a"))
    with pytest.raises(UserError, match="data.block_size: 100 is longer than"):
        family.train(r := pretrained_recipe(tmp_path, tiny_gpt2, "data.block_size=100"), create_run(r, "b"))
    with pytest.raises(UserError, match="doctor: .* starts pretrained"):
        family.doctor(pretrained_recipe(tmp_path, tiny_gpt2))
    with pytest.raises(UserError, match="model.name: no such model folder"):
        family.train(r := pretrained_recipe(tmp_path, tmp_path / "missing"), create_run(r, "c"))
