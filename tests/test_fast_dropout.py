"""CPU training swaps nn.Dropout for FastDropout (engine/fast_dropout.py): the same Bernoulli mask and scaling
as torch's dropout, drawn 16 bits at a time, and the model is given back as it was built."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.engine.config import Train
from nnrecipe.engine.fast_dropout import FastDropout, fast_dropout
from nnrecipe.engine.loop import Callback
from test_engine import make_trainer, net


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_the_mask_drops_p_of_the_elements_and_scales_survivors_without_bias(dtype, p):
    torch.manual_seed(0)
    x = (torch.rand(64, 33, 101) + 0.5).to(dtype)  # an odd element count: the last 64-bit draw is cut
    out = FastDropout(p).train()(x)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - p) < 0.005  # 213k elements: 4+ standard deviations
    assert not torch.equal(dropped, F.dropout(x, p, training=True) == 0)  # its own draws, not torch's
    # survivors are x / (1 - p) rounded once: unbiased on average even in bf16, where 1 / 0.9 itself would
    # round to 1.109375 (torch's own bf16 dropout scales by that, 0.16% low)
    scale = (out[~dropped].double() / x[~dropped].double()).mean().item()
    assert scale == pytest.approx(1 / (1 - p), rel=2e-4)
    if dtype == torch.float32:
        torch.manual_seed(0)
        reference = F.dropout(x, p, training=True)
        both = ~dropped & (reference != 0)
        assert torch.equal(out[both], reference[both])


def test_the_mask_is_uniform_over_positions_and_repeats_with_the_seed():
    x = torch.ones(4000, 8)
    torch.manual_seed(1)
    a = FastDropout(0.25).train()(x)
    per_lane = (a == 0).float().view(-1, 4).mean(0)  # each of the four 16-bit lanes of a 64-bit draw
    assert torch.allclose(per_lane, torch.full((4,), 0.25), atol=0.02)
    torch.manual_seed(1)
    assert torch.equal(a, FastDropout(0.25).train()(x))


def test_gradients_flow_through_the_kept_elements_only_and_eval_is_the_identity():
    x = torch.randn(50, 20, requires_grad=True)
    layer = FastDropout(0.3).train()
    out = layer(x)
    out.sum().backward()
    assert torch.allclose(x.grad, (out != 0).float() / 0.7)
    assert torch.equal(layer.eval()(x), x)


def test_the_swap_covers_every_dropout_with_p_and_puts_the_originals_back():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.5), nn.Dropout(0.0)))
    originals = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    with fast_dropout(model) as swapped:
        assert swapped == 2
        assert [type(m).__name__ for m in model.modules() if "Dropout" in type(m).__name__] == [
            "FastDropout",
            "FastDropout",
            "Dropout",
        ]
        assert model[2][0].p == 0.5
    assert [m for m in model.modules() if isinstance(m, nn.Dropout)] == originals


class _Layers(Callback):
    def __init__(self):
        self.seen = []

    def on_train_mode(self, epoch, model):
        self.seen.append(sorted({type(m).__name__ for m in model.modules() if "Dropout" in type(m).__name__}))


def test_cpu_training_runs_with_fast_dropout_and_returns_the_model_as_built(tmp_path):
    layers = _Layers()
    model = net(dropout=0.3)
    trainer = make_trainer(tmp_path, model, train=Train(epochs=2, batch_size=32, device="cpu"), callbacks=[layers])
    result = trainer.fit()
    assert layers.seen == [["FastDropout"], ["FastDropout"]]
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert result.history[-1]["val_accuracy"] > 0.9  # it learns (three separable blobs)


def tiny_bert(attention_dropout: float):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=attention_dropout, attn_implementation="sdpa",
    )  # fmt: skip
    return BertModel(config)


def test_a_transformers_encoder_attends_through_fast_dropout_with_the_padding_mask_and_is_given_back():
    """Inside the swap a Hugging Face encoder's SDPA attention is replaced by one whose probability dropout is
    the module's FastDropout: with (almost) nothing dropped it computes SDPA's function, padding included
    (what the padded tokens hold changes no real token's output); with p = 0.5 the seed decides the output;
    after, the config says sdpa again and evaluation is untouched."""
    ids = torch.randint(1, 50, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:], mask[2, 2:] = 0, 0
    other = ids.clone()
    other[mask == 0] = 7
    model = tiny_bert(1e-6)  # a FastDropout of p 1e-6 drops nothing (16-bit threshold) and scales by 1.000001
    reference = model.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    model.train()
    calls = []
    with fast_dropout(model):
        assert model.config._attn_implementation != "sdpa"
        layer = model.encoder.layer[0].attention.self
        layer.dropout.register_forward_hook(lambda *_: calls.append(1))  # SDPA would never call it
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out_other = model(input_ids=other, attention_mask=mask).last_hidden_state
    assert model.config._attn_implementation == "sdpa" and type(layer.dropout) is nn.Dropout and len(calls) == 2
    real = mask.bool()
    torch.testing.assert_close(out[real], reference[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_other[real], out[real], rtol=1e-6, atol=1e-6)

    model = tiny_bert(0.5).train()
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        with fast_dropout(model):
            runs.append(model(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])
    assert not torch.allclose(runs[0][real], model.eval()(input_ids=ids, attention_mask=mask).last_hidden_state[real])
