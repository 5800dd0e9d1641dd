"""Text files bigger than memory (`data.stream` for text classification): the streamed path reads the rows the
in-memory path reads and batches them identically (grouped by length too), a mid-epoch resume is exact, a streamed run trains and
reports, and its resident memory stays below what the in-memory path needs."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.test_resume import assert_resumes_exactly
from tests.test_text_classification import text_recipe

from nnrecipe.data.text import StreamedTextLoader, read_text_file
from nnrecipe.errors import UserError
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family
from nnrecipe.tasks.text_inputs import text_loader, text_splits

SMALL = ("model.name=bilstm", "model.embedding_dim=32", "model.hidden_size=32", "optim.lr=0.01", "train.epochs=3")


def awkward_csv(path: Path, n: int = 203) -> Path:
    """Quoted fields with commas, quotes and line breaks inside, non-ASCII text, lengths that vary."""
    rng = random.Random(1)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "note", "label"])
        for i in range(n):
            text = f'review {i}, "quoted"\nsecond line é' if i % 7 == 0 else f"plain {i} " * rng.randint(1, 9)
            w.writerow([text, "x", "pos" if i % 2 else "neg"])
    return path


def tokenizer():
    from transformers import AutoTokenizer

    from nnrecipe.models.hf import resolve

    return AutoTokenizer.from_pretrained(resolve("minilm"))


def test_a_streamed_file_gives_the_in_memory_rows_and_batches_and_resumes_mid_epoch(tmp_path):
    path = awkward_csv(tmp_path / "awkward.csv")
    memory, streamed = read_text_file(path, "auto", "sentence", "label"), read_text_file(path, "auto", "sentence", "label", stream=True)  # fmt: skip
    assert streamed.streamed and list(streamed.texts) == memory.texts and streamed.labels == memory.labels
    assert streamed.texts[7] == memory.texts[7] and "\n" in streamed.texts[7]  # a record spanning two lines
    tok = tokenizer()
    for group in (False, True):
        kw = {"shuffle": True, "seed": 3, "group_by_length": group}
        a = text_loader(tok, memory, ["neg", "pos"], 8, 16, "cpu", **kw)
        b = text_loader(tok, streamed, ["neg", "pos"], 8, 16, "cpu", **kw)
        assert isinstance(b, StreamedTextLoader) and len(a) == len(b)
        xa, xb = list(a.batches(1)), list(b.batches(1))
        assert all(all(torch.equal(u[k], v[k]) for k in u) for u, v in zip(xa, xb, strict=True))  # grouped too
        later = list(b.batches(1, start=5))  # a resume reads from batch 5 on
        assert len(later) == len(b) - 5 and all(all(torch.equal(u[k], v[k]) for k in u) for u, v in zip(later, xb[5:]))


def test_auto_streams_above_the_cap_and_streamed_splits_refuse_containment(tmp_path, capsys):
    recipe = text_recipe(tmp_path)
    assert not text_splits(recipe.data).train.streamed
    capped = text_recipe(tmp_path, "data.memory_cap_mb=1")
    (tmp_path / "big.tsv").write_text("sentence\tlabel\n" + "the film is fine and long\tpos\n" * 8000)
    capped.data.train = tmp_path / "big.tsv"
    splits = text_splits(capped.data)
    err = capsys.readouterr().err
    assert splits.train.streamed and splits.val.streamed and len(splits.val) == 800
    assert "streaming " in err and ": held in memory they would take" in err and "held out by rows" in err
    with pytest.raises(UserError, match="containment compares every training text"):
        text_splits(text_recipe(tmp_path, "data.stream=true", "data.split_groups=containment").data)
    (tmp_path / "torn.jsonl").write_text('{"sentence": "a", "label": "pos"}\n{"sentence": "b"}\n')
    with pytest.raises(UserError, match=r"row 2 \(at byte 34\) has no 'label'"):
        read_text_file(tmp_path / "torn.jsonl", "auto", "sentence", "label", stream=True)


def test_a_streamed_run_learns_reports_and_a_mid_epoch_resume_is_exact(tmp_path):
    family = get_family("text_classification")
    recipe = text_recipe(tmp_path, "data.stream=true", *SMALL)
    straight = create_run(recipe, "straight")
    result = family.train(recipe, straight)
    assert result["accuracy"] >= 0.9, result
    report = json.loads((straight.dir / "report.json").read_text())["test"]
    assert report["examples"] == 80 and all(isinstance(r["text"], str) for r in report["confidently_wrong"])
    assert_resumes_exactly(family, recipe, straight, batch=3)


TEXT_MEMORY = """
import json, sys
from pathlib import Path
from nnrecipe.data.text import read_text_file
from nnrecipe.tasks.text_inputs import text_loader
from transformers import AutoTokenizer
from nnrecipe.models.hf import resolve
def kb(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])
def epoch(path, stream):
    part = read_text_file(Path(path), "auto", "sentence", "label", stream=stream)
    loader = text_loader(tok, part, ["0", "1"], 32, 128, "cpu", shuffle=True, group_by_length=True)
    return sum(len(b["labels"]) for b in loader.batches(0))
tok = AutoTokenizer.from_pretrained(resolve("minilm"))
stream = sys.argv[3] == "true"
epoch(sys.argv[2], stream)  # the same path once on a tiny file: every lazy import
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from here
base = kb("VmRSS:")
seen = epoch(sys.argv[1], stream)
print(json.dumps({"growth_mb": (kb("VmHWM:") - base) / 1024, "seen": seen}))
"""


@pytest.mark.slow
def test_streamed_texts_stay_below_a_memory_cap_that_the_in_memory_path_passes(tmp_path):
    """60,000 short reviews (8.7 MB of JSONL): held in memory and tokenised they raise the peak resident memory
    by well over 32 MB; streamed, one epoch of batches raises it by less than 32 MB (one process each)."""
    rng = random.Random(0)
    words = "the a film plot acting was is great dreadful wonderful boring long short story of and with".split()
    for name, n in (("big.jsonl", 60_000), ("warm.jsonl", 50)):
        with (tmp_path / name).open("w") as f:
            for i in range(n):
                text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
                f.write(json.dumps({"sentence": text, "label": str(i % 2)}) + "\n")
    growth = {}
    for stream in ("false", "true"):
        args = [tmp_path / "big.jsonl", tmp_path / "warm.jsonl", stream]
        res = subprocess.run(
            [sys.executable, "-c", TEXT_MEMORY, *map(str, args)], capture_output=True, text=True, timeout=600
        )
        assert res.returncode == 0, res.stderr[-3000:]
        row = json.loads(res.stdout.strip().splitlines()[-1])
        assert row["seen"] == 60_000
        growth[stream] = row["growth_mb"]
    print(f"peak memory growth: in memory {growth['false']:.0f} MB, streamed {growth['true']:.0f} MB")
    assert growth["false"] > 64 and growth["true"] < 32, growth
