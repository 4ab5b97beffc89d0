"""Word-level language-modelling data: a PTB-layout reader, the vocabulary, batching, a demo corpus.

PTB layout: a folder with train/valid/test text files (`train.txt` or `ptb.train.txt`, ...), one
sentence per line; every line becomes its words plus `<eos>`. The vocabulary is built from the
training split in order of first appearance (as the reference does); words of valid/test that the
training split lacks map to `<unk>`.

The demo corpus is generated (no download): sentences from a small probabilistic grammar with
topics that persist across lines and subject-verb number agreement across relative clauses, so a
recurrent cell that carries state does measurably better than one that does not.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from nasdeploy.errors import ConfigError, DataError, LimitError
from nasdeploy.utils.files import write_text_atomic
from nasdeploy.utils.limits import DATA_FILE_BYTES, JSON_BYTES, brief, check_generated_data, check_seed, loads_json

# Memory of one generated sentence while it is tokenised: about 10 words as Python strings, list slots and ids.
SENTENCE_BYTES = 1024
EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")


class Vocabulary:
    """Word <-> id, ids in order of first appearance."""

    def __init__(self, words: Iterable[str] = ()):
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        for w in words:
            self.add(w)

    def add(self, word: str) -> int:
        """The id of `word`, adding it if new."""
        if word not in self.stoi:
            self.stoi[word] = len(self.itos)
            self.itos.append(word)
        return self.stoi[word]

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> torch.Tensor:
        """Token ids (int64); unknown words become `<unk>`, which must then be in the vocabulary."""
        unk = self.stoi.get(UNK)
        ids = []
        for t in tokens:
            i = self.stoi.get(t, unk)
            if i is None:
                raise DataError(f"word '{t}' is not in the vocabulary and the vocabulary has no '{UNK}'")
            ids.append(i)
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of the ids."""
        return [self.itos[int(i)] for i in ids]

    def to_json(self) -> str:
        """The id-ordered word list as JSON (what a deployed model needs to map words to ids)."""
        return json.dumps({"format": "nasdeploy.vocab", "words": self.itos}, indent=0) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "vocabulary JSON") -> "Vocabulary":
        """Read what to_json wrote."""
        JSON_BYTES.check(source, len(text))
        try:
            words = loads_json(text, source)["words"]
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise TypeError(source)
        except LimitError:
            raise
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{source}: not a nasdeploy vocabulary file") from None
        return cls(words)


@dataclass
class TextCorpus:
    """Token-id streams of the three splits and their vocabulary."""

    name: str
    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor

    def summary(self) -> dict[str, int | str]:
        """Sizes, for logs."""
        return {"name": self.name, "vocab": len(self.vocab), "train_tokens": len(self.train),
                "valid_tokens": len(self.valid), "test_tokens": len(self.test)}


def tokenize_lines(lines: Iterable[str]) -> list[str]:
    """Words of every line plus `<eos>` after each line."""
    tokens: list[str] = []
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


def corpus_from_token_splits(name: str, splits: dict[str, list[str]]) -> TextCorpus:
    """Build the vocabulary from train and encode every split (adding `<unk>` only if valid/test need it)."""
    vocab = Vocabulary(splits["train"])
    if any(t not in vocab.stoi for s in ("valid", "test") for t in splits[s]):
        vocab.add(UNK)
    return TextCorpus(name, vocab, *(vocab.encode(splits[s]) for s in SPLITS))


def _split_file(data_dir: Path, split: str) -> Path:
    for candidate in (f"{split}.txt", f"ptb.{split}.txt"):
        if (data_dir / candidate).is_file():
            return data_dir / candidate
    raise DataError(
        f"PTB-layout corpus in {data_dir}: no '{split}.txt' or 'ptb.{split}.txt' found "
        f"(expected train/valid/test text files, one sentence per line)"
    )


def read_ptb_layout(data_dir: str | os.PathLike[str], name: str = "ptb") -> TextCorpus:
    """Read a corpus in the PTB layout from a local folder (never downloads)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"corpus folder not found: {root} (expected train/valid/test text files in the PTB layout)")
    splits = {}
    for split in SPLITS:
        path = _split_file(root, split)
        DATA_FILE_BYTES.check(f"corpus file {path}", path.stat().st_size)
        try:
            with path.open(encoding="utf-8") as f:
                splits[split] = tokenize_lines(f)
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    if len(splits["train"]) < 2:
        raise DataError(f"{_split_file(root, 'train')} holds no text")
    return corpus_from_token_splits(name, splits)


def write_ptb_layout(out_dir: str | os.PathLike[str], sentences: dict[str, list[str]]) -> Path:
    """Write train/valid/test sentence lists as `<split>.txt` files (atomically)."""
    root = Path(out_dir)
    for split in SPLITS:
        write_text_atomic(root / f"{split}.txt", "".join(f" {s}\n" for s in sentences[split]))
    return root


# -- demo corpus ----------------------------------------------------------------------------------

# topic -> (noun singular/plural pairs, verb singular/plural pairs, adjectives)
_TOPICS: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]] = {
    "animals": (
        [("dog", "dogs"), ("cat", "cats"), ("horse", "horses"), ("bird", "birds"), ("fox", "foxes"),
         ("wolf", "wolves"), ("rabbit", "rabbits"), ("mouse", "mice"), ("lion", "lions"), ("bear", "bears")],
        [("runs", "run"), ("jumps", "jump"), ("sleeps", "sleep"), ("hunts", "hunt"), ("chases", "chase"), ("eats", "eat")],
        ["wild", "fast", "furry", "hungry", "small"],
    ),
    "food": (
        [("apple", "apples"), ("loaf", "loaves"), ("cake", "cakes"), ("soup", "soups"), ("pie", "pies"),
         ("cookie", "cookies"), ("lemon", "lemons"), ("pear", "pears"), ("onion", "onions"), ("carrot", "carrots")],
        [("tastes", "taste"), ("cooks", "cook"), ("melts", "melt"), ("bakes", "bake"), ("smells", "smell"), ("cools", "cool")],
        ["sweet", "fresh", "warm", "salty", "ripe"],
    ),
    "city": (
        [("street", "streets"), ("tower", "towers"), ("car", "cars"), ("bus", "buses"), ("bridge", "bridges"),
         ("shop", "shops"), ("train", "trains"), ("road", "roads"), ("park", "parks"), ("house", "houses")],
        [("stands", "stand"), ("moves", "move"), ("opens", "open"), ("closes", "close"), ("shines", "shine"), ("waits", "wait")],
        ["busy", "old", "tall", "quiet", "bright"],
    ),
    "nature": (
        [("cloud", "clouds"), ("storm", "storms"), ("wind", "winds"), ("wave", "waves"), ("river", "rivers"),
         ("mountain", "mountains"), ("star", "stars"), ("moon", "moons"), ("tree", "trees"), ("flower", "flowers")],
        [("grows", "grow"), ("falls", "fall"), ("rises", "rise"), ("blows", "blow"), ("flows", "flow"), ("glows", "glow")],
        ["cold", "dark", "green", "calm", "deep"],
    ),
    "music": (
        [("song", "songs"), ("drum", "drums"), ("piano", "pianos"), ("singer", "singers"), ("band", "bands"),
         ("guitar", "guitars"), ("note", "notes"), ("choir", "choirs"), ("violin", "violins"), ("dancer", "dancers")],
        [("plays", "play"), ("sings", "sing"), ("dances", "dance"), ("echoes", "echo"), ("rings", "ring"), ("hums", "hum")],
        ["loud", "soft", "happy", "slow", "gentle"],
    ),
    "science": (
        [("atom", "atoms"), ("cell", "cells"), ("robot", "robots"), ("engine", "engines"), ("magnet", "magnets"),
         ("planet", "planets"), ("laser", "lasers"), ("crystal", "crystals"), ("signal", "signals"), ("circuit", "circuits")],
        [("spins", "spin"), ("splits", "split"), ("charges", "charge"), ("heats", "heat"), ("sparks", "spark"), ("orbits", "orbit")],
        ["tiny", "strange", "electric", "heavy", "stable"],
    ),
}  # fmt: skip
_DETS = {0: ("a", "this", "every", "the"), 1: ("two", "many", "these", "some", "the")}  # number -> determiners
_PREPS = ("near", "with", "under", "behind")


class _DemoGrammar:
    """Sentences: NP(n) [that NP(m) V(m)] V(n) [NP] [PREP NP] with topics that persist over lines."""

    def __init__(self, rng: random.Random, topic_stay: float = 0.85, on_topic: float = 0.9):
        self.rng, self.topic_stay, self.on_topic = rng, topic_stay, on_topic
        self.topics = list(_TOPICS)
        self.topic = rng.choice(self.topics)

    def _content_topic(self) -> str:
        return self.topic if self.rng.random() < self.on_topic else self.rng.choice(self.topics)

    def _np(self, number: int) -> list[str]:
        nouns, _, adjs = _TOPICS[self._content_topic()]
        words = [self.rng.choice(_DETS[number])]
        if self.rng.random() < 0.3:
            words.append(self.rng.choice(adjs))
        words.append(self.rng.choice(nouns)[number])
        return words

    def _verb(self, number: int) -> str:
        return self.rng.choice(_TOPICS[self._content_topic()][1])[number]

    def sentence(self) -> str:
        if self.rng.random() > self.topic_stay:
            self.topic = self.rng.choice(self.topics)
        rng = self.rng
        number = rng.randrange(2)
        words = self._np(number)
        if rng.random() < 0.15:  # coordination: "X and Y" takes a plural verb
            words += ["and"] + self._np(rng.randrange(2))
            number = 1
        if rng.random() < 0.4:  # object relative clause between subject and verb
            inner = rng.randrange(2)
            words += ["that"] + self._np(inner) + [self._verb(inner)]
        words.append(self._verb(number))
        if rng.random() < 0.5:
            words += self._np(rng.randrange(2))
        if rng.random() < 0.3:
            words += [rng.choice(_PREPS)] + self._np(rng.randrange(2))
        return " ".join(words)


def demo_sentences(seed: int = 0, train: int = 1500, valid: int = 200, test: int = 200) -> dict[str, list[str]]:
    """The demo corpus as sentence lists per split, deterministic by seed (one grammar stream)."""
    for key, value in (("train", train), ("valid", valid), ("test", test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"demo corpus {key} sentence count must be a positive integer, got {brief(value)}")
        check_generated_data(f"demo corpus {key} sentences", value, SENTENCE_BYTES)
    grammar = _DemoGrammar(random.Random(seed))
    return {split: [grammar.sentence() for _ in range(n)] for split, n in zip(SPLITS, (train, valid, test))}


def demo_corpus(seed: int = 0, train: int = 1500, valid: int = 200, test: int = 200) -> TextCorpus:
    """The generated demo corpus, tokenised like PTB."""
    sentences = demo_sentences(seed, train, valid, test)
    return corpus_from_token_splits("demo", {s: tokenize_lines(sentences[s]) for s in SPLITS})


# -- batching ---------------------------------------------------------------------------------------

def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a token stream into `batch_size` parallel columns [N, batch_size] (the tail is dropped)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    rows = data.size(0) // batch_size
    if rows < 2:
        raise DataError(f"{data.size(0)} tokens are too few for batch size {batch_size} (need at least 2 rows)")
    return data[: rows * batch_size].view(batch_size, rows).t().contiguous()


def get_batch(source: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs source[i : i+L] and next-word targets source[i+1 : i+1+L], L clipped to the end."""
    length = min(seq_len, source.size(0) - 1 - i)
    return source[i: i + length], source[i + 1: i + 1 + length]


# -- config -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextDataConfig:
    """Which corpus: the generated demo ('demo') or a local PTB-layout folder ('ptb')."""

    dataset: str = "demo"
    data_dir: str | None = None
    demo_seed: int = 0
    demo_train_sentences: int = 1500
    demo_valid_sentences: int = 200
    demo_test_sentences: int = 200

    def __post_init__(self) -> None:
        if self.dataset not in ("demo", "ptb"):
            raise ConfigError(f"data.dataset must be 'demo' or 'ptb', got {brief(self.dataset)}")
        check_seed("data.demo_seed", self.demo_seed)
        if self.dataset == "demo":
            for key in ("demo_train_sentences", "demo_valid_sentences", "demo_test_sentences"):
                check_generated_data(f"data.{key}", getattr(self, key), SENTENCE_BYTES)


def load_text_corpus(cfg: TextDataConfig, data_dir: str | os.PathLike[str] | None = None) -> TextCorpus:
    """The corpus a config names; `data_dir` overrides cfg.data_dir for 'ptb'."""
    if cfg.dataset == "demo":
        return demo_corpus(cfg.demo_seed, cfg.demo_train_sentences, cfg.demo_valid_sentences, cfg.demo_test_sentences)
    folder = data_dir if data_dir is not None else cfg.data_dir
    if folder is None:
        raise ConfigError("dataset 'ptb' needs a data folder: set data.data_dir or pass --data-dir")
    return read_ptb_layout(folder, name="ptb")
