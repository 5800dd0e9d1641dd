"""A tokenizer trained on a run's own training text, for the text models trained from scratch: word-level
(words and punctuation apart, words seen fewer than twice become [UNK], so [UNK] is trained too) or BPE.
Built with Hugging Face `tokenizers` and wrapped as a `PreTrainedTokenizerFast`, so the loaders, NER's word
alignment and serving use it exactly like a pretrained model's tokenizer; it is saved in the run."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from nnrecipe.errors import UserError

PAD, UNK = "[PAD]", "[UNK]"


def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int, lowercase: bool):
    """A `PreTrainedTokenizerFast` of at most `vocab_size` ids ([PAD] is 0, [UNK] is 1) fitted to `texts`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "word":
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[PAD, UNK])
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
    else:
        raise UserError(f"model.tokenizer: must be word or bpe (got {kind!r})")
    norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainer)
    if tok.get_vocab_size() <= 2:
        raise UserError("model.tokenizer: the training text gave no vocabulary (every word seen once, or no text)")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, model_input_names=["input_ids", "attention_mask"]
    )


def load_tokenizer(folder: Path):
    """The tokenizer a run saved with `save_pretrained`."""
    from transformers import PreTrainedTokenizerFast

    if not (Path(folder) / "tokenizer.json").is_file():
        raise UserError(f"{folder}: no tokenizer.json (the run's tokenizer is missing)")
    return PreTrainedTokenizerFast.from_pretrained(str(folder))
