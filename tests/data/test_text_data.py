"""Language-modelling data: PTB layout, vocabulary from train, demo corpus, batching."""

from __future__ import annotations

import collections
import math

import pytest
import torch

from nasdeploy.data.text import (
    EOS,
    UNK,
    TextDataConfig,
    Vocabulary,
    batchify,
    demo_corpus,
    demo_sentences,
    get_batch,
    load_text_corpus,
    read_ptb_layout,
    write_ptb_layout,
)
from nasdeploy.errors import ConfigError, DataError


def test_ptb_layout_reader_appends_eos_and_builds_vocab_from_train(tmp_path):
    (tmp_path / "ptb.train.txt").write_text(" the cat sat \n the dog ran\n", encoding="utf-8")
    (tmp_path / "ptb.valid.txt").write_text(" the cat ran \n", encoding="utf-8")
    (tmp_path / "ptb.test.txt").write_text(" a cat sat\n", encoding="utf-8")
    corpus = read_ptb_layout(tmp_path)
    assert corpus.vocab.itos == ["the", "cat", "sat", EOS, "dog", "ran", UNK]  # first appearance, <unk> for 'a'
    assert corpus.vocab.decode(corpus.train) == "the cat sat <eos> the dog ran <eos>".split()
    assert corpus.vocab.decode(corpus.valid) == "the cat ran <eos>".split()
    assert corpus.vocab.decode(corpus.test) == [UNK, "cat", "sat", EOS]


def test_no_unk_token_is_added_when_valid_and_test_are_covered(tmp_path):
    write_ptb_layout(tmp_path, {"train": ["a b", "b c"], "valid": ["c a"], "test": ["b"]})
    corpus = read_ptb_layout(tmp_path)
    assert UNK not in corpus.vocab.stoi and len(corpus.vocab) == 4


def test_missing_corpus_files_give_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="corpus folder not found"):
        read_ptb_layout(tmp_path / "nope")
    (tmp_path / "train.txt").write_text("a b\n", encoding="utf-8")
    with pytest.raises(DataError, match="no 'valid.txt' or 'ptb.valid.txt' found"):
        read_ptb_layout(tmp_path)
    with pytest.raises(ConfigError, match="needs a data folder"):
        load_text_corpus(TextDataConfig(dataset="ptb"))
    with pytest.raises(ConfigError, match="'demo' or 'ptb'"):
        TextDataConfig(dataset="wikitext")


def test_vocabulary_json_round_trip():
    vocab = Vocabulary(["x", "y", EOS])
    assert Vocabulary.from_json(vocab.to_json()).itos == vocab.itos
    with pytest.raises(DataError, match="not a nasdeploy vocabulary"):
        Vocabulary.from_json("{}")


def test_demo_corpus_is_deterministic_sized_and_survives_the_ptb_layout(tmp_path):
    a, b = demo_corpus(seed=1), demo_corpus(seed=1)
    assert torch.equal(a.train, b.train) and a.vocab.itos == b.vocab.itos
    assert not torch.equal(demo_corpus(seed=2).train[:200], a.train[:200])
    assert 100 <= len(a.vocab) <= 500 and 5_000 <= len(a.train) <= 50_000
    write_ptb_layout(tmp_path, demo_sentences(seed=1))
    back = read_ptb_layout(tmp_path)
    assert back.vocab.itos == a.vocab.itos
    assert all(torch.equal(getattr(back, s), getattr(a, s)) for s in ("train", "valid", "test"))


def test_demo_corpus_has_structure_beyond_unigrams():
    # Bigram perplexity on valid must be far below unigram perplexity (local syntax), and subject-verb
    # agreement must hold across relative clauses ("the dogs that the cat chases run").
    corpus = demo_corpus(seed=0)
    train, valid, v = corpus.train.tolist(), corpus.valid.tolist(), len(corpus.vocab)
    uni = collections.Counter(train)
    bi = collections.Counter(zip(train[:-1], train[1:]))
    uni_nll = -sum(math.log((uni[t] + 0.1) / (len(train) + 0.1 * v)) for t in valid) / len(valid)
    bi_nll = -sum(math.log((bi[(a, b)] + 0.1) / (uni[a] + 0.1 * v)) for a, b in zip(valid[:-1], valid[1:])) / (len(valid) - 1)
    assert math.exp(bi_nll) < 0.5 * math.exp(uni_nll)
    sentences = demo_sentences(seed=0)["train"]
    plural_subject = [s.split() for s in sentences if s.startswith("two ") and " that " in s and " and " not in s]
    assert plural_subject  # the grammar produces long-range agreement cases


def test_batchify_and_get_batch():
    data = torch.arange(23)
    batched = batchify(data, 4)  # 5 rows, the 3 tail tokens dropped; columns are contiguous streams
    assert batched.shape == (5, 4)
    assert batched[:, 1].tolist() == [5, 6, 7, 8, 9]
    x, y = get_batch(batched, 1, 3)
    assert torch.equal(x, batched[1:4]) and torch.equal(y, batched[2:5])
    x, y = get_batch(batched, 3, 10)  # clipped at the end
    assert x.shape[0] == 1 and torch.equal(y, batched[4:5])
    with pytest.raises(DataError, match="too few"):
        batchify(torch.arange(5), 4)
