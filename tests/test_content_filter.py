"""The banned-phrase filter on its own: which token ids it bans after which output, on a small hand-made
vocabulary where every answer can be written out (the engine tests check it where tokens are drawn)."""

import pytest
import torch

from gpt2kit.generate.content_filter import BannedPhraseFilter, VocabIndex

VOCAB = [b"a", b"b", b"ad", b"bad", b"Bad", b"wo", b"word", b"Word", b"rd", b"w", b"d", b"badword", b"x badw", b"ordy", b" ", b""]
ID = {t: i for i, t in enumerate(VOCAB)}


def ids(*tokens: bytes) -> set[int]:
    return {ID[t] for t in tokens}


def banned(f: BannedPhraseFilter) -> set[int]:
    out = f.banned_ids()
    assert out.dtype == torch.long and out.dim() == 1
    return set(out.tolist())


def test_vocab_index_prefix_and_substring_queries():
    index = VocabIndex(VOCAB)
    assert set(index.starting_with(b"wo")) == ids(b"wo", b"word", b"Word")  # lowercased
    assert set(index.starting_with(b"b")) == ids(b"b", b"bad", b"Bad", b"badword")
    assert set(index.starting_with(b"ordy")) == ids(b"ordy") and index.starting_with(b"zz") == []
    assert set(index.starting_with(b"")) == set(range(len(VOCAB)))
    assert set(index.containing(b"adw")) == ids(b"badword", b"x badw")
    assert index.lower[ID[b"Word"]] == b"word"


def test_bans_follow_the_output_byte_by_byte():
    f = BannedPhraseFilter(["BadWord"], VocabIndex(VOCAB))
    always = ids(b"badword")  # contains the whole phrase
    assert banned(f) == always | ids()  # nothing begun yet
    f.feed(b"x ba")
    assert banned(f) == always  # "ba" + "dword..." has no token
    f.feed(b"d")
    assert banned(f) == always | ids(b"word", b"Word")  # "bad" + "word"
    f.feed(b"wo")
    assert banned(f) == always | ids(b"rd")  # "badwo" + "rd"
    f.feed(b"R")
    assert banned(f) == always | ids(b"d")  # "badwor" + "d", case-insensitive
    f.feed(b"t")
    assert banned(f) == always  # the tail no longer ends with a part of the phrase


def test_completions_by_a_token_that_starts_with_the_rest():
    f = BannedPhraseFilter(["badword"], VocabIndex(VOCAB), prompt_tail=b"the BAD")
    assert banned(f) == ids(b"badword", b"word", b"Word")  # a phrase begun in the prompt is not completed
    f = BannedPhraseFilter(["badwo"], VocabIndex(VOCAB), prompt_tail=b"bad")
    assert banned(f) == ids(b"badword", b"wo", b"word", b"Word")  # "x badw" holds "badw", not "badwo"
    f = BannedPhraseFilter(["wordy"], VocabIndex(VOCAB), prompt_tail=b"w")
    assert banned(f) == ids(b"ordy")  # "w" + "ordy"


def test_several_phrases_and_the_tail_length():
    f = BannedPhraseFilter(["ab", "xyz"], VocabIndex(VOCAB))
    f.feed(b"xy" * 50 + b"a")
    assert banned(f) == ids(b"b", b"bad", b"Bad", b"badword")  # "a" + "b..."
    f.feed(b"xy")
    assert banned(f) == set()  # "xy" + "z..." has no token; "a" is no longer at the end
    f = BannedPhraseFilter(["a"], VocabIndex(VOCAB), prompt_tail=b"zzz")
    assert banned(f) == {i for i, t in enumerate(VOCAB) if b"a" in t.lower()}
    f.feed(b"a")  # one-byte phrases keep no tail
    assert banned(f) == {i for i, t in enumerate(VOCAB) if b"a" in t.lower()}
    assert BannedPhraseFilter([], VocabIndex(VOCAB)).banned_ids().tolist() == []


@pytest.mark.parametrize("device", ["cpu", "meta"])  # meta: a device that is not the default one, on any machine
def test_banned_ids_on_the_device(device):
    f = BannedPhraseFilter(["word"], VocabIndex(VOCAB))
    assert f.banned_ids(device).device.type == device
