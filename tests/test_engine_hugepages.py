"""Huge pages in the engine: moving what a decode step reads changes no token and leaves the cache empty, a
run-sized KV cache moves and a larger one does not, and who asks for the move (generate by run length, chat,
serve). The mechanism itself (finding and moving memory) is tested in test_hugepages.py."""

import pytest

from gpt2kit import Tokenizer
from gpt2kit.generate import Engine, SamplingParams
from gpt2kit.generate.decode import DecodeRunner

TOK = Tokenizer()
TABLE = [TOK.token_bytes(i) for i in range(TOK.n_vocab)]


@pytest.fixture(scope="module")
def trained():
    import gpt2kit

    return gpt2kit.from_pretrained("builtin")


def _step_runs_code_in_file_pages(engine) -> bool:
    """Whether the engine's decode step touches machine code still in a library's file pages (a whole huge
    page of it: what collapse moves), which an engine asking for huge pages then moves."""
    from gpt2kit import hugepages

    def whole(r) -> bool:
        return -(-r.start // hugepages.HUGE_PAGE) < r.end // hugepages.HUGE_PAGE

    return any(r.kind == "code" and whole(r) for r in hugepages.hot(engine.runner.hot_regions(engine.cache)))


@pytest.mark.parametrize("weights", ["auto", "int8"])
def test_huge_pages_change_no_number_and_leave_the_cache_empty(weights, tmp_path, monkeypatch):
    """The probe step that finds the hot memory writes into the engine's cache; the engine must then start
    from an empty cache, and moving pages must not change a token. Moving is done to the model's own memory
    (its float32 weights are a file mapping that gets replaced), so the reference tokens come first, from a
    freshly loaded model that no huge-page engine has touched."""
    import gpt2kit
    from gpt2kit import hugepages
    from gpt2kit.generate import decode

    gpt2kit.save_pretrained(gpt2kit.from_pretrained("builtin"), tmp_path, tokenizer_files=False)
    model = gpt2kit.from_pretrained(tmp_path)  # float32 safetensors: the tensors are views of the mapped file
    prompts = [TOK.encode_ordinary("It is a truth universally acknowledged"), TOK.encode_ordinary("In the beginning")]
    params = SamplingParams(max_new_tokens=12, temperature=0)
    plain = Engine(model, max_batch=2, token_bytes=TABLE, weights=weights)
    assert plain.huge_pages.skipped == "not asked for"
    moved = []  # the regions the engines ask to move
    collapse = hugepages.collapse

    def recorded(regions):
        regions = list(regions)
        moved.extend(regions)
        return collapse(regions)

    monkeypatch.setattr(hugepages, "collapse", recorded)
    expected = [c.token_ids for c in plain.generate(prompts, params)]
    code_left = _step_runs_code_in_file_pages(plain)  # False where an earlier engine in this process moved it all
    huge = Engine(model, max_batch=2, token_bytes=TABLE, weights=weights, huge_pages=True)
    if hugepages.collapse([]).skipped is None and hugepages.referenced(lambda: None):  # Linux 6.1+ with THP, smaps: something was moved
        assert huge.huge_pages.bytes > huge.huge_pages.code >= 0 and huge.huge_pages.skipped is None, huge.huge_pages
        # where the step still runs code in a library's file pages, that code moves (where an earlier engine in
        # this process moved it all, nothing is left to move; a step may also touch code the probe step did not)
        assert huge.huge_pages.code > 0 or not code_left, huge.huge_pages
        assert _overlaps(moved, huge.cache)  # a cache sized to a run moves too
        moved.clear()
        monkeypatch.setattr(decode, "KV_CACHE_MOVED_MAX", 0)
        large = Engine(model, max_batch=2, token_bytes=TABLE, weights=weights, huge_pages=True)
        assert moved and not _overlaps(moved, large.cache)  # a larger one (a server's) is left as it is
        assert [c.token_ids for c in large.generate(prompts, params)] == expected
    assert huge.cache.lengths.tolist() == [0, 0] and not huge.cache.valid.any()
    assert [c.token_ids for c in huge.generate(prompts, params)] == expected
    assert [c.token_ids for c in plain.generate(prompts, params)] == expected  # the plain engine reads the moved weights too


def _overlaps(regions, cache) -> bool:
    kv = cache.kv.untyped_storage()
    return any(r.start < kv.data_ptr() + kv.nbytes() and kv.data_ptr() < r.end for r in regions)


def test_text_generator_and_chat_decide_huge_pages_by_how_long_they_run(trained, monkeypatch):
    from gpt2kit import hugepages
    from gpt2kit.generate.chat import ChatSession
    from gpt2kit.generate.text import GenerateOptions, TextGenerator

    asked = []
    monkeypatch.setattr(DecodeRunner, "collapse_hot", lambda self, cache: asked.append(True) or hugepages.Collapsed())
    short = TextGenerator(trained, TOK)
    short.complete(["Hello"], SamplingParams(max_new_tokens=2))
    assert asked == []  # a 2-token run: the one-time cost would not pay
    TextGenerator(trained, TOK).engine(hugepages.LONG_RUN_STEPS)
    assert asked == [True]
    TextGenerator(trained, TOK, GenerateOptions(huge_pages="off")).engine(None)
    assert asked == [True]
    assert ChatSession(trained, TOK)._tg.options.huge_pages == "on"  # a chat lives on
    assert ChatSession(trained, TOK, options=GenerateOptions(huge_pages="off"))._tg.options.huge_pages == "off"
