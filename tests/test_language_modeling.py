"""Language modelling from scratch: tokenisers, the block loader, GPT and RNN models, sampling with and
without a cache, and the family end to end (it learns, resumes exactly, reports, generates)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nnrecipe.data.lm import BlockLoader, ByteTokenizer, CharTokenizer, HFTokenizer, encode_stream
from nnrecipe.engine.loop import Callback
from nnrecipe.errors import UserError
from nnrecipe.models.sequence import SequenceConfig, build_sequence_model, generate, sample_next
from nnrecipe.recipe import validate_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family

family = get_family("language_modeling")

# A small text with structure a model can learn in seconds: the same verses in a varying order.
VERSES = [
    "the quick brown fox jumps over the lazy dog.\n",
    "a stitch in time saves nine.\n",
    "all that glitters is not gold.\n",
    "to be or not to be, that is the question.\n",
]


def corpus(n: int = 400, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(VERSES[i] for i in rng.integers(0, len(VERSES), n))


def lm_recipe(tmp_path, *overrides, **sections):
    (tmp_path / "train.txt").write_text(corpus())
    raw = {
        "task": "language_modeling",
        "data": {"train": str(tmp_path / "train.txt"), "block_size": 32, "batches_per_epoch": 50, "eval_batches": 8},
        "model": {"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 64},
        "optim": {"lr": 3e-3},
        "train": {"epochs": 8, "batch_size": 16, "seed": 0},
        "sample": {"prompts": ["the "], "max_new_tokens": 40},
        "track": {"runs_dir": str(tmp_path / "runs"), "progress": False, "tensorboard": False},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    from nnrecipe.recipe import apply_override

    for item in overrides:
        apply_override(raw, item)
    return validate_recipe(raw)


def test_tokenizers_round_trip_and_name_unseen_characters():
    char = CharTokenizer.fit("hello world")
    assert char.decode(char.encode("low hello")) == "low hello" and char.vocab_size == 8
    with pytest.raises(UserError, match="characters the training text never had: 'xz'"):
        char.encode("zox", "the prompt")
    b = ByteTokenizer()
    assert b.decode(b.encode("héllo ✓")) == "héllo ✓" and b.vocab_size == 256
    bpe = HFTokenizer.train(corpus(200), 300)
    text = "the quick brown fox"
    assert bpe.decode(bpe.encode(text)) == text and len(bpe.encode(text)) < len(text)  # merges happened


def test_block_loader_is_seeded_per_batch_and_rejects_short_text(tmp_path):
    tokens = encode_stream(ByteTokenizer(), corpus(50), tmp_path / "t.bin")
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
    loader = BlockLoader(tokens, 16, 4, batches=5, shuffle=True, seed=3)
    first = list(loader.batches(epoch=1))
    x, y = first[0]
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    resumed = list(loader.batches(epoch=1, start=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[2:], resumed))  # skipping reproduces the rest
    assert not torch.equal(first[0][0], next(loader.batches(epoch=2))[0])
    val = list(BlockLoader(tokens, 16, 4).batches())
    assert torch.equal(val[0][0][1], torch.from_numpy(np.asarray(tokens[16:32], dtype=np.int64)))  # consecutive blocks
    with pytest.raises(UserError, match="too short for one block of 64"):
        BlockLoader(tokens[:50], 64, 4, where="data.train")


@pytest.mark.parametrize("kind", ["gpt", "lstm", "gru", "rnn"])
def test_incremental_generation_equals_recomputing_the_whole_context(kind):
    torch.manual_seed(0)
    model = build_sequence_model(SequenceConfig(kind, 20, 64, n_layer=2, n_embd=16, hidden=16, n_head=2)).eval()
    prompt = torch.tensor([[1, 2, 3, 4]])
    cached = generate(model, prompt, 30, temperature=0, use_cache=True)
    plain = generate(model, prompt, 30, temperature=0, use_cache=False)
    assert torch.equal(cached, plain) and cached.shape == (1, 34)
    with torch.no_grad():  # the cache's logits are the full pass's, position by position
        full, _ = model(cached)
        logits, state = model(cached[:, :10])
        step, _ = model(cached[:, 10:11], state)
    assert torch.allclose(step[0, -1], full[0, 10], atol=1e-5)


def test_gpt_generation_past_its_block_keeps_going_and_sampling_is_seeded():
    torch.manual_seed(0)
    model = build_sequence_model(SequenceConfig("gpt", 12, 16, n_layer=1, n_embd=16, n_head=2)).eval()
    out = generate(model, torch.tensor([[1, 2]]), 40, temperature=1.0, seed=5)
    assert out.shape == (1, 42)  # 2.5 blocks: the cache is re-read from the last half block
    assert torch.equal(out, generate(model, torch.tensor([[1, 2]]), 40, temperature=1.0, seed=5))
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]])
    picks = {int(sample_next(logits, 1.0, 2, None, torch.Generator().manual_seed(i))) for i in range(50)}
    assert picks <= {2, 3}  # top-k keeps the two most likely
    assert int(sample_next(logits, 1.0, None, 0.5, torch.Generator())) == 2  # top-p 0.5: the 0.93 token alone


@pytest.fixture(scope="module")
def trained_gpt(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("lm")
    recipe = lm_recipe(tmp_path)
    run = create_run(recipe, "gpt")
    assert family.train(recipe, run)["status"] == "finished"
    return run, tmp_path


def test_gpt_starts_at_the_uniform_loss():
    model = build_sequence_model(SequenceConfig("gpt", 30, 32, n_layer=2, n_embd=32, n_head=2))
    x, y = torch.randint(0, 30, (2, 4, 32), generator=torch.Generator().manual_seed(0))
    init = torch.nn.functional.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()
    assert abs(init - math.log(30)) < 0.15  # GPT-2 initialisation: about ln(vocab) at the start


def test_gpt_learns_the_corpus_reports_and_generates(trained_gpt):
    run, tmp_path = trained_gpt
    report = json.loads((run.dir / "report.json").read_text())["val"]
    vocab = len(set(corpus()))
    assert report["loss"] < 0.5 * math.log(vocab) and report["bits_per_char"] == pytest.approx(
        report["loss"] / math.log(2)
    )
    assert report["samples"][0]["prompt"] == "the " and len(report["samples"][0]["text"]) == 40
    out = family.generate(run, "a stitch", max_new_tokens=20, temperature=0.0)
    assert out["text"].startswith(" in time") and out["new_tokens"] == 20  # it learned the verse
    (tmp_path / "other.txt").write_text(corpus(100, seed=1))
    assert family.evaluate(run, data_path=str(tmp_path / "other.txt"))["loss"] < 0.5 * math.log(vocab)
    with pytest.raises(UserError, match="characters the training text never had"):
        family.generate(run, "QUIZ")
    with pytest.raises(UserError, match="prompt 2 of 2: characters the training text never had: 'QZ'"):
        family.predict(run, ["the ", "QZ"])  # "the prompt", after continuing the first
    # options are held to the sample section's rules: a huge seed was torch's overflow traceback
    from nnrecipe.errors import RecipeError

    for options, message in (
        ({"seed": 2**70}, r"--seed: Input should be less than or equal to 4294967295"),
        ({"seed": -1}, r"--seed: Input should be greater than or equal to 0"),
        ({"top_p": 0.0}, r"--top-p: Input should be greater than 0"),
    ):
        with pytest.raises(RecipeError, match=message):
            family.generate(run, "a stitch", **options)
    assert family.generate(run, "a stitch", max_new_tokens=5, top_k=0, seed=2**32 - 1)["new_tokens"] == 5


def test_lstm_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path):
    recipe = lm_recipe(tmp_path, "model.name=lstm", "model.hidden=32", "train.epochs=2", "data.batches_per_epoch=10")
    straight = create_run(recipe, "straight")
    family.train(recipe, straight)

    class Stop(Callback):
        def after_step(self, trainer):
            if trainer.state.global_step == 13:
                trainer.stop_requested = True

    broken = create_run(recipe, "broken")
    assert family.train(recipe, broken, callbacks=[Stop()])["status"] == "interrupted"
    family.train(broken.recipe(), broken, resume=True)
    from nnrecipe.engine.checkpoint import load_weights

    a, b = load_weights(straight.best_checkpoint), load_weights(broken.best_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_text_too_short_for_a_block_or_a_prompt_it_cannot_read_is_a_clear_error_before_training(tmp_path):
    recipe = lm_recipe(tmp_path, "data.block_size=20000")
    with pytest.raises(UserError, match="too short for one block of 20000"):
        family.train(recipe, create_run(recipe, "short"))
    (tmp_path / "empty.txt").write_text("  \n")
    recipe = lm_recipe(tmp_path, f"data.train={tmp_path / 'empty.txt'}")
    with pytest.raises(UserError, match="holds no text"):
        family.train(recipe, create_run(recipe, "empty"))
    recipe = lm_recipe(tmp_path, "sample.prompts=['ROMEO:']")
    with pytest.raises(UserError, match=r"sample.prompts\[0\]: characters the training text never had: ':EMOR'"):
        family.train(recipe, create_run(recipe, "prompt"))


def test_a_language_model_is_served_with_limits(trained_gpt):
    from fastapi.testclient import TestClient

    from nnrecipe.deploy.serve import ServeConfig, create_app

    run, _ = trained_gpt
    app = create_app(ServeConfig(run_dir=run.dir, insecure_no_auth=True, max_text_chars=50, max_new_tokens=30))
    with TestClient(app) as client:
        r = client.post("/v1/generate", json={"prompt": "a stitch", "max_new_tokens": 12, "temperature": 0})
        assert r.status_code == 200 and r.json()["new_tokens"] == 12 and r.json()["text"].startswith(" in time")
        assert (
            client.post("/v1/generate", json={"prompt": "x" * 51}).json()["detail"].startswith("prompt: 51 characters")
        )
        assert client.post("/v1/generate", json={"prompt": "a", "seed": 2**70}).status_code == 422  # was a 500
        infinite = b'{"prompt": "a", "temperature": Infinity}'  # Python's JSON reads it; FastAPI echoed it: 500
        bad = client.post("/v1/generate", content=infinite, headers={"content-type": "application/json"})
        assert bad.status_code == 422 and bad.json()["detail"] == "temperature: Input should be a finite number"
        big = client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 31})
        assert big.status_code == 422 and big.json()["detail"].startswith("max_new_tokens")
        assert (
            client.post("/v1/generate", json={"prompt": "the "}).json()["new_tokens"] == 30
        )  # the recipe's 40, capped
        unseen = client.post("/v1/generate", json={"prompt": "QZ"})  # named the field twice: "prompt: the prompt:"
        assert unseen.status_code == 422 and unseen.json()["detail"].startswith("prompt: characters the training text")
        whole = r.json()["text"]
        streamed = client.post(
            "/v1/generate", json={"prompt": "a stitch", "max_new_tokens": 12, "temperature": 0, "stream": True}
        )
        assert streamed.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert "".join(e.get("text", "") for e in events) == whole and len(events) == 13  # 12 pieces, then done
        assert events[-1]["done"] and events[-1]["new_tokens"] == 12
        assert client.post("/v1/generate", json={"prompt": "QZ", "stream": True}).status_code == 422  # before streaming
        rows = client.post("/v1/predict", json={"inputs": ["the ", "all "]}).json()["predictions"]
        # the recipe's 40, capped by --max-new-tokens as /v1/generate is (it generated all 40)
        assert [r["prompt"] for r in rows] == ["the ", "all "] and all(r["new_tokens"] == 30 for r in rows)
        bad = client.post("/v1/predict", json={"inputs": ["the ", "QZ"]})  # was a 500 and a traceback
        assert bad.status_code == 422 and bad.json()["detail"].startswith("inputs[1]: characters the training text")
        assert client.get("/v1/model").json()["task"] == "language_modeling"
    # No /v1/explain here, so its input limit (default 4) does not bound the queue: --max-queue 1 was refused.
    one_at_a_time = ServeConfig(run_dir=run.dir, insecure_no_auth=True, max_queue=1, max_batch=1)
    assert "/v1/explain" not in {r.path for r in create_app(one_at_a_time).routes}


def test_a_streaming_client_that_hangs_up_stops_the_generation(trained_gpt):
    """It went on to the token limit for no one, holding its place in the work queue."""
    import asyncio
    import threading

    from nnrecipe.deploy.guards import Admission
    from nnrecipe.deploy.serve import load_predictor, stream_generation

    run, _ = trained_gpt
    predictor = load_predictor(run)
    pieces = []
    out = predictor.generate(
        "a stitch", max_new_tokens=20, temperature=0, on_piece=pieces.append, stop_when=lambda: len(pieces) == 3
    )
    assert out["new_tokens"] == 3 and out["text"] == "".join(pieces)  # asked after each token

    class Recorded:
        """The run's predictor, holding its first piece until the client is gone, and keeping its result."""

        def __init__(self):
            self.client_gone, self.result = threading.Event(), None

        def generate(self, prompt, on_piece, **options):
            def held(text):
                on_piece(text)
                self.client_gone.wait(10)

            self.result = predictor.generate(prompt, on_piece=held, **options)
            return self.result

    async def hang_up_after_the_first_piece():
        recorded, admission = Recorded(), Admission(4)
        admission.take(1)
        options = {"temperature": 0, "max_new_tokens": 20}
        events = stream_generation(recorded, "a stitch", options, asyncio.get_running_loop(), admission)
        assert json.loads((await anext(events))[6:])["text"]
        await events.aclose()  # what the server does when the client disconnects
        recorded.client_gone.set()
        for _ in range(1000):  # until the thread ends (a liveness bound, not a timing)
            if admission.used == 0:
                break
            await asyncio.sleep(0.01)
        return recorded.result, admission.used

    result, used = asyncio.run(hang_up_after_the_first_piece())
    assert used == 0 and result["new_tokens"] == 1, result  # it stops at the token after the hang-up; was 20


def test_a_generation_past_its_deadline_answers_504_and_stops(trained_gpt, monkeypatch):
    """After the 504 it ran on to the token limit for no one, holding its place in the work queue."""
    import time

    from fastapi.testclient import TestClient

    from nnrecipe.deploy.serve import ServeConfig, create_app
    from nnrecipe.models import sequence
    from nnrecipe.tasks.language_modeling import LMPredictor

    def slow(*args, **kwargs):  # a model a hundred times larger
        time.sleep(0.02)
        return sample_next(*args, **kwargs)

    results, real = [], LMPredictor.generate
    monkeypatch.setattr(sequence, "sample_next", slow)
    monkeypatch.setattr(LMPredictor, "generate", lambda *a, **k: results.append(real(*a, **k)) or results[-1])
    run, _ = trained_gpt
    cfg = ServeConfig(run_dir=run.dir, insecure_no_auth=True, deadline_s=0.2, batch_wait_ms=1, max_new_tokens=200)
    with TestClient(create_app(cfg)) as client:
        r = client.post("/v1/generate", json={"prompt": "a stitch", "max_new_tokens": 200})
        assert r.status_code == 504 and "0.2 s deadline" in r.json()["detail"]
        for _ in range(1000):  # until the abandoned generation ends (a liveness bound, not a timing)
            if results:
                break
            time.sleep(0.01)
    assert results and results[0]["new_tokens"] < 200, results  # was all 200


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["shakespeare-char-gpt", "shakespeare-char-lstm"])
def test_bundled_lm_recipes_train_and_generate_through_the_cli(recipe, tmp_path):
    from tests.test_cli import ROOT, nnrecipe, only_run

    (tmp_path / "text.txt").write_text(corpus(200))
    small = ["model.n_layer=1", "model.n_embd=32", "model.hidden=32", "model.n_head=2", "data.block_size=32"]
    res = nnrecipe(
        "train", ROOT / "recipes" / f"{recipe}.yaml", "--set", f"data.train={tmp_path / 'text.txt'}",
        *(a for s in [*small, "train.epochs=1", "data.batches_per_epoch=5", "data.eval_batches=2",
                      "sample.max_new_tokens=20", "sample.prompts=['the ']", f"track.runs_dir={tmp_path / 'runs'}"] for a in ("--set", s)),
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "val loss" in res.stderr and "bits per character" in res.stderr
    res = nnrecipe(
        "generate", only_run(tmp_path / "runs"), "the ", "--max-new-tokens", "10", "--seed", "1", cwd=tmp_path
    )
    assert res.returncode == 0 and res.stdout.startswith("the ") and "10 tokens at" in res.stderr


def test_the_logits_graph_exports_to_onnx_with_free_batch_and_time(trained_gpt):
    from nnrecipe.deploy.export import ATOL, export_run, onnx_outputs

    run, _ = trained_gpt
    card = export_run(run, "onnx")
    assert card["checks"]["max_abs_diff"] <= ATOL and card["task"] == "language_modeling"
    x = torch.randint(0, 10, (3, 7))
    with torch.no_grad():
        expected = family.inference(run).model(x)[0].numpy()
    assert np.abs(onnx_outputs(run.dir / "export" / "model.onnx", x) - expected).max() <= ATOL


def test_the_doctor_checks_a_language_model_recipe(tmp_path):
    from nnrecipe.doctor.run import run_doctor

    results = {r.number: r for r in run_doctor(lm_recipe(tmp_path), tmp_path / "doctor")}
    text = corpus()
    vocab = len(set(text[: int(len(text) * 0.9)]))
    assert results[3].verdict == "pass" and f"-ln(1/C) = {math.log(vocab):.3f}" in results[3].figure
    assert results[6].verdict == "pass" and results[1].verdict == "pass"
    assert (tmp_path / "doctor" / "batch.txt").read_text().startswith("'")


def test_samples_are_logged_to_tensorboard_while_training(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = lm_recipe(tmp_path, "train.epochs=2", "data.batches_per_epoch=5", "track.tensorboard=true")
    run = create_run(recipe, "tb")
    family.train(recipe, run)
    events = EventAccumulator(str(run.dir / "tensorboard"))
    events.Reload()
    texts = events.Tensors("sample/text_summary")
    assert [t.step for t in texts] == [5, 10]  # one sample per epoch
    assert texts[0].tensor_proto.string_val[0].decode().startswith("```\nthe ")


def test_an_empty_prompt_starts_from_a_newline_or_a_space_the_vocabulary_has():
    """`generate RUN ""` on a character model whose text had no newline said the prompt held a character
    the text never had ('\\n', which the user never typed)."""
    from nnrecipe.data.lm import fit_tokenizer
    from nnrecipe.tasks.language_modeling import prompt_ids

    lines, spaces, neither = (fit_tokenizer("char", text, 0) for text in ("ab\nab", "ab ab", "abab"))
    assert prompt_ids(lines, "") == lines.encode("\n") and prompt_ids(spaces, "") == spaces.encode(" ")
    assert prompt_ids(spaces, "ab") == spaces.encode("ab")
    with pytest.raises(UserError, match="the prompt is empty, and this vocabulary has no newline or space"):
        prompt_ids(neither, "")


def test_cli_generate_prints_each_piece_as_it_is_drawn_and_ctrl_c_keeps_it(trained_gpt):
    """`generate` printed nothing until the last token: a long --max-new-tokens sat silent for minutes.
    Text now arrives while the model is still drawing, and Ctrl-C ends the line it printed."""
    import os
    import select
    import signal
    import subprocess
    import sys

    run, _ = trained_gpt
    cmd = [sys.executable, "-m", "nnrecipe.cli", "generate", str(run.dir), "a stitch", "--max-new-tokens", "10000000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    while len(seen) < 40 and select.select([proc.stdout], [], [], 180)[0]:  # a liveness bound, not a speed one
        seen += os.read(proc.stdout.fileno(), 100)
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=60)
    assert seen.startswith(b"a stitch") and len(seen) >= 40, (seen, stderr)
    assert proc.returncode == 130 and (seen + rest).endswith(b"\n") and b"Traceback" not in stderr
