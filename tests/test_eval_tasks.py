"""Task protocols on hand-made cases, malformed data files, results output, and the CLI end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import gpt2kit
from conftest import tiny_gpt
from gpt2kit.config import GPT2_EOT_ID
from gpt2kit.errors import ConfigError, DataError
from gpt2kit.eval.hellaswag import load_hellaswag
from gpt2kit.eval.lambada import last_token_request, lm_eval_request, load_lambada
from gpt2kit.eval.loglikelihood import encode_pair, score_tokens
from gpt2kit.eval.results import EvalResult, format_table, write_json
from gpt2kit.eval.wikitext import load_wikitext

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
TOK = gpt2kit.Tokenizer()


# ---- tokenisation boundaries ------------------------------------------------------------------------
def test_lm_eval_target_keeps_its_leading_space():
    ctx, cont = lm_eval_request(TOK, "He handed her the letter")
    assert cont == TOK.encode_ordinary(" letter") and len(cont) == 1  # " letter", not "letter"
    assert ctx + cont == TOK.encode_ordinary("He handed her the letter")


def test_multi_token_word_is_scored_whole_in_lm_eval_and_last_piece_in_paper():
    text = "the family gave the harpsichord"
    ctx, cont = lm_eval_request(TOK, text)
    assert TOK.decode(cont) == " harpsichord" and len(cont) == 4
    p_ctx, p_cont = last_token_request(TOK, text)
    assert len(p_cont) == 1 and p_ctx + p_cont == TOK.encode_ordinary(text)
    assert p_cont == cont[-1:] and p_ctx[-3:] == cont[:-1]  # its first pieces are context


def test_trailing_space_of_context_moves_to_the_continuation():
    assert encode_pair(TOK, "The cat sat on the ", "mat") == encode_pair(TOK, "The cat sat on the", " mat")
    assert encode_pair(TOK, "The cat sat on the", " mat")[1] == TOK.encode_ordinary(" mat")


def test_continuation_is_what_follows_the_contexts_tokens_when_bpe_merges_across():
    ctx, cont = encode_pair(TOK, "I like New Yor", "k pizza")  # "Yor" + "k" merge into " York"
    assert ctx == TOK.encode_ordinary("I like New Yor")
    assert TOK.encode_ordinary("I like New York pizza")[len(ctx) :] == cont


def test_empty_context_becomes_endoftext():
    assert encode_pair(TOK, "", " hello") == ([GPT2_EOT_ID], TOK.encode_ordinary(" hello"))


def test_lambada_paper_protocol_strips_trailing_whitespace():
    assert last_token_request(TOK, "he touched the key\n") == last_token_request(TOK, "he touched the key")


def test_greedy_match_needs_every_token():
    """A model that always predicts token 5: a continuation [5, 5] is greedy, [5, 6] is not."""

    class Always5(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = gpt2kit.GPTConfig(vocab_size=10, n_positions=16, n_embd=4, n_layer=1, n_head=1)
            self.lm_head = torch.nn.Linear(4, 10, bias=False)
            with torch.no_grad():
                self.lm_head.weight.zero_()
                self.lm_head.weight[5, 0] = 1.0

        def hidden_states(self, idx, kv_cache=None, attention_mask=None, scratch=None):
            h = torch.zeros(*idx.shape, 4)
            h[..., 0] = 3.0
            return h

    s = score_tokens(Always5(), [([1, 2], [5, 5]), ([1], [5, 6]), ([3, 3, 3], [6])])
    assert s.is_greedy.tolist() == [True, False, False]
    assert s.n_tokens.tolist() == [2, 2, 1]
    lp5 = 3.0 - torch.logsumexp(torch.tensor([3.0] + [0.0] * 9), 0).item()
    assert s.logprob[0].item() == pytest.approx(2 * lp5)
    assert s.logprob[1].item() == pytest.approx(lp5 + (lp5 - 3.0))  # log p(6) = log p(5) - 3


@pytest.mark.parametrize("blocked", [True, False])
def test_logit_head_equals_log_softmax_across_chunks_and_blocks(blocked):
    from gpt2kit.eval.logit_head import LogitHead

    torch.manual_seed(0)
    model = gpt2kit.GPT(gpt2kit.GPTConfig(vocab_size=1000, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    h, t = torch.randn(11, 32), torch.randint(0, 1000, (11,))
    t[3] = model.lm_head(h[3]).argmax()  # at least one greedy hit
    t[4], t[5] = 255, 999  # the last column of a block, and of the ragged last block
    logits = model.lm_head(h).double()
    want = logits.log_softmax(-1).gather(1, t[:, None])[:, 0]
    head = LogitHead(model, chunk=4, block=256)  # rows in chunks of 4, 4, 3; vocabulary in 256, 256, 256, 232
    head.blocked = blocked  # the CPU float32 path, or the plain one GPUs and bf16 take
    with torch.inference_mode():
        lp, ok = head(h, t)
    torch.testing.assert_close(lp.double(), want, rtol=0, atol=1e-5)
    assert ok.tolist() == (logits.argmax(-1) == t).tolist() and ok[3]


def test_logit_head_blocked_bf16_equals_the_plain_bf16_head():
    """bf16 models walk the blocks too: each block's product in bf16, upcast, the same numbers as
    lm_head(h).float() (the plain path, which rounds the logits to bf16 the same way)."""
    from gpt2kit.eval.logit_head import LogitHead

    torch.manual_seed(1)
    model = gpt2kit.GPT(gpt2kit.GPTConfig(vocab_size=1000, n_positions=16, n_embd=32, n_layer=1, n_head=2)).to(torch.bfloat16)
    h, t = torch.randn(11, 32).to(torch.bfloat16), torch.randint(0, 1000, (11,))
    t[3] = model.lm_head(h[3]).float().argmax()
    out = {}
    w32 = model.lm_head.weight.detach().float()  # (V, C): what the float32 kernel holds
    for blocked, upcast in ((True, False), (True, True), (False, False)):
        head = LogitHead(model, chunk=4, block=256, float32_weight=w32 if upcast else None)
        assert head.blocked and (head.w32 is not None) == upcast
        head.blocked = blocked
        with torch.inference_mode():
            out[blocked, upcast] = head(h, t)
    plain = out[False, False]
    for key in ((True, False), (True, True)):  # upcast: float32 products of the bf16 values, rounded to bf16 once
        torch.testing.assert_close(out[key][0], plain[0], rtol=0, atol=1e-5)
        assert out[key][1].tolist() == plain[1].tolist() and out[key][1][3]
    assert LogitHead(model.float(), float32_weight=w32).w32 is None  # a float32 model has nothing to upcast


def test_scoring_a_bf16_model_upcasts_the_head_where_its_copy_runs_float32(monkeypatch):
    """The head follows the scoring copy's measured lm_head kind: float32 blocks where the float32 kernel won."""
    from gpt2kit.eval import loglikelihood as LL

    model = tiny_gpt(vocab_size=300, n_layer=1, n_head=2, n_embd=16, n_positions=16).to(torch.bfloat16)
    made = []
    real = LL.LogitHead
    monkeypatch.setattr(LL, "LogitHead", lambda m, **kw: made.append(kw) or real(m, **kw))
    ref = LL.score_tokens(model, [([1, 2, 3], [4, 5])])
    for kind in ("float32", "linear"):
        monkeypatch.setenv("GPT2KIT_KERNEL", kind)
        LL._COPIES.clear()
        scores = LL.score_tokens(model, [([1, 2, 3], [4, 5])])
        w32 = made[-1]["float32_weight"]  # the copy's own float32 head weight, or None
        assert (w32 is not None) == (kind == "float32")
        assert w32 is None or (w32.dtype == torch.float32 and torch.equal(w32, model.lm_head.weight.float()))
        torch.testing.assert_close(scores.logprob, ref.logprob, rtol=0, atol=0.05)


def test_the_scoring_head_finds_the_float32_weight_of_a_prompt_kernel_not_packed_yet():
    """A copy packs its prompt kernels on their first call: a head whose prompt kind is `float32` and whose decode
    kind is another hands its float32 weight over all the same (packing it then); of another prompt kind, nothing is
    packed for the scoring head, which runs apart from the copy's own."""
    from types import SimpleNamespace

    from gpt2kit.eval import loglikelihood as LL
    from gpt2kit.model.kernels import KernelLinear

    lin = torch.nn.Linear(16, 40, bias=False).to(torch.bfloat16)
    head = KernelLinear(lin, "linear", "float32", rows=4)
    assert head.large is None
    w32 = LL._float32_head(SimpleNamespace(lm_head=head))
    assert w32.dtype == torch.float32 and torch.equal(w32, lin.weight.float()) and head.large.w is w32
    head = KernelLinear(lin, "linear", "mkl", rows=4)
    assert LL._float32_head(SimpleNamespace(lm_head=head)) is None and head.large is None
    assert LL._float32_head(SimpleNamespace(lm_head=lin)) is None  # no copy: the model's own head


def test_logit_head_argmax_tie_across_blocks_keeps_the_first_index():
    from gpt2kit.eval.logit_head import LogitHead

    model = gpt2kit.GPT(gpt2kit.GPTConfig(vocab_size=600, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[[10, 20, 300, 599], 0] = 5.0  # the same top logit twice in block 0, in blocks 1 and 2
    h = torch.zeros(4, 8)
    h[:, 0] = 1.0
    with torch.inference_mode():
        lp, ok = LogitHead(model, block=256)(h, torch.tensor([10, 20, 300, 599]))
    assert ok.tolist() == [True, False, False, False]  # torch.argmax's first occurrence
    assert torch.allclose(lp, torch.full((4,), 5 - math.log(4 * math.exp(5) + 596)))


def test_batches_cap_padded_tokens_on_the_cpu_and_scores_do_not_depend_on_batching():
    from gpt2kit.eval.loglikelihood import _batches

    assert list(_batches(list(range(7)), [1024, 1024, 1024, 500, 100, 100, 100], 8, 2048)) == [[0, 1], [2, 3], [4, 5, 6]]
    assert list(_batches([0, 1, 2], [3000, 10, 10], 8, 2048)) == [[0], [1, 2]]  # one long request alone
    assert list(_batches([0, 1, 2], [3000, 10, 10], 2, None)) == [[0, 1], [2]]
    torch.manual_seed(0)
    model = gpt2kit.GPT(gpt2kit.GPTConfig(vocab_size=300, n_positions=64, n_embd=32, n_layer=1, n_head=2))
    reqs = [
        (torch.randint(0, 300, (n,)).tolist(), torch.randint(0, 300, (k,)).tolist())
        for n, k in [(60, 4), (5, 2), (30, 30), (1, 1)]
    ]
    one, many = score_tokens(model, reqs, batch_size=1), score_tokens(model, reqs, batch_size=8)
    torch.testing.assert_close(one.logprob, many.logprob, rtol=0, atol=1e-4)
    assert one.is_greedy.tolist() == many.is_greedy.tolist()


# ---- malformed data files ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, match",
    [
        ('{"text": "fine"}\n{"text": "broken\n', r"lambada\.jsonl:2: not valid JSON"),
        ('{"text": "fine"}\n\n{"txt": "wrong field"}\n', r"lambada\.jsonl:3: missing field 'text'"),
        ('{"text": 42}\n', r"lambada\.jsonl:1: field 'text' should be string"),
        ('["a list"]\n', r"lambada\.jsonl:1: expected a JSON object"),
        ("", r"lambada\.jsonl: the file is empty"),
        ("\n  \n", r"lambada\.jsonl: the file is empty"),
    ],
)
def test_bad_lambada_files(tmp_path, content, match):
    path = tmp_path / "lambada.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_lambada(path)


def test_bad_hellaswag_files(tmp_path):
    good = json.loads((FIXTURES / "hellaswag_val.jsonl").read_text().splitlines()[0])
    path = tmp_path / "hs.jsonl"
    for change, match in [
        ({"endings": "not a list"}, r"hs\.jsonl:2: field 'endings' should be list"),
        ({"label": 7}, r"hs\.jsonl:2: 'label' 7 is not an index"),
        ({"label": "x"}, r"hs\.jsonl:2: 'label' must be the index"),
        ({"ctx_a": None}, r"hs\.jsonl:2: field 'ctx_a' should be string"),
    ]:
        path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **change}) + "\n")
        with pytest.raises(DataError, match=match):
            load_hellaswag(path)
    del good["activity_label"]
    path.write_text(json.dumps(good) + "\n")
    with pytest.raises(DataError, match=r"hs\.jsonl:1: missing field 'activity_label'"):
        load_hellaswag(path)


def test_bad_wikitext_and_missing_files(tmp_path):
    (tmp_path / "empty.raw").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_wikitext(tmp_path / "empty.raw")
    (tmp_path / "plain.raw").write_text("just some text\nwithout headings\n")
    with pytest.raises(DataError, match="does not look like WikiText"):
        load_wikitext(tmp_path / "plain.raw")
    (tmp_path / "latin1.raw").write_bytes(b" = A = \nok\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"latin1\.raw:3: not valid UTF-8"):
        load_wikitext(tmp_path / "latin1.raw")
    with pytest.raises(DataError, match="no such file"):
        load_lambada(tmp_path / "nope.jsonl")


def test_limit_reads_only_the_first_records():
    assert len(load_lambada(FIXTURES / "lambada_test.jsonl", limit=2)) == 2
    assert len(load_hellaswag(FIXTURES / "hellaswag_val.jsonl", limit=3)) == 3
    assert len(load_wikitext(FIXTURES / "wiki.test.raw", limit=1)) == 1


# ---- results -----------------------------------------------------------------------------------------
def test_results_table_and_json_roundtrip(tmp_path):
    rows = [EvalResult("lambada", "lm-eval", "acc", 0.25, "m", 4), EvalResult("lambada", "paper-last-token", "ppl", 12.5, "m", 4)]
    table = format_table(rows)
    assert (
        "paper-last-token" in table and "12.5000" in table and table.splitlines()[0].split()[:3] == ["task", "protocol", "metric"]
    )
    write_json(tmp_path / "r.json", rows)
    assert [EvalResult(**row) for row in json.loads((tmp_path / "r.json").read_text())] == rows
    assert set(json.loads((tmp_path / "r.json").read_text())[0]) == {"task", "protocol", "metric", "value", "model", "n", "date"}


def test_config_errors():
    from gpt2kit.eval.runner import EvalConfig

    with pytest.raises(ConfigError, match="needs --data"):
        EvalConfig(task="lambada")
    with pytest.raises(ConfigError, match="unknown eval task"):
        EvalConfig(task="mmlu", data=["x"])
    with pytest.raises(ConfigError, match="--limit"):
        EvalConfig(task="perplexity", data=["x"], limit=0)


# ---- CLI end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return gpt2kit.save_pretrained(tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=128), tmp_path_factory.mktemp("cli_tiny"))


def test_cli_perplexity_on_corpus_excerpts(tiny_folder, excerpts_dir, tmp_path, capsys):
    from gpt2kit.cli.__main__ import main

    out = tmp_path / "ppl.json"
    rc = main(["eval", "perplexity", "--model", str(tiny_folder), "--data", str(excerpts_dir), "--limit", "3000",
               "--stride", "64", "--batch-size", "8", "--device", "cpu", "-o", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0
    # the progress bar (its final 100% frame may be skipped by tqdm's refresh interval)
    assert "perplexity windows" in captured.err and "req/s" in captured.err
    rows = json.loads(out.read_text())
    assert {r["metric"] for r in rows} == {"token_perplexity", "bits_per_byte", "word_perplexity"}
    assert all(r["n"] == 3000 and r["protocol"] == "sliding-window-stride64" for r in rows)
    assert "token_perplexity" in captured.out
    # the reference: transformers on the same weights, over the first 3000 tokens of the first file (sorted),
    # the same windows (stride 64, 128 context), <|endoftext|> first
    import transformers

    from test_eval_perplexity import reference_nll

    text = sorted(excerpts_dir.glob("*.txt"))[0].read_text(encoding="utf-8")
    tok = gpt2kit.Tokenizer()
    ids = tok.encode_ordinary(text)[:3000]
    nll, n = reference_nll(transformers.GPT2LMHeadModel.from_pretrained(tiny_folder).eval(), [50256] + ids, 128, 64)
    value = {r["metric"]: r["value"] for r in rows}
    assert n == 3000 and value["token_perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert value["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(tok.decode_bytes(ids)), rel=1e-4)


@pytest.mark.parametrize(
    "task, data", [("lambada", "lambada_test.jsonl"), ("hellaswag", "hellaswag_val.jsonl"), ("wikitext", "wiki.test.raw")]
)
def test_cli_tasks(tiny_folder, tmp_path, capsys, task, data):
    from gpt2kit.cli.__main__ import main

    out = tmp_path / "r.json"
    assert main(["eval", task, "--model", str(tiny_folder), "--data", str(FIXTURES / data), "--no-progress", "-o", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["task"] for r in rows} == {task} and all(r["n"] > 0 for r in rows)
    if task == "lambada":
        assert {r["protocol"] for r in rows} == {"lm-eval", "paper-last-token"}


def test_cli_bad_data_is_one_line_error(tiny_folder, tmp_path, capsys):
    from gpt2kit.cli.__main__ import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    assert main(["eval", "lambada", "--model", str(tiny_folder), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt2kit eval: error:") and "bad.jsonl:2: not valid JSON" in err and "Traceback" not in err
