"""GPT-2, exactly: pre-LN decoder blocks, learned positions, tanh-GELU, head tied to the token embedding.

Parameter names are GPT-2's own (`transformer.wte`, `transformer.h.{i}.attn.c_attn`, `transformer.ln_f`,
`lm_head`), so official weights copy by name; the only difference from the Hugging Face checkpoint is
that we use `nn.Linear` ([out, in]) where it uses the TF-era `Conv1D` ([in, out]), and `convert.py`
transposes those four weights once at load/save time.

Shapes: B batch, T new tokens, K attended key columns, C = n_embd, nh heads, hs = C // nh, V vocab.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2kit.config import GPTConfig
from gpt2kit.errors import InputError
from gpt2kit.model.head_loss import lm_head_loss
from gpt2kit.model.kv_cache import KVCache, StepPlan


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """nn.Dropout's function without a module per use: in inference it is the identity, and a decode step
    would otherwise make 37 module calls that return their input."""
    return F.dropout(x, p, training=True) if training and p > 0 else x


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.record: list[torch.Tensor] | None = None  # set by record_attention: each forward appends its probabilities
        # the dtype attention runs in (None: the model's); a decode runner's inference copy sets float32 where this
        # machine runs float32 attention faster than 16-bit (model/attention_plan.py)
        self.compute_dtype: torch.dtype | None = None
        # a kernel for one query per row (q, k, v, float32 additive bias or None) -> (B, nh, 1, hs), where a decode
        # runner's copy measured one faster than SDPA (gemv.attend; model/attention_plan.py); None: SDPA
        self.one_query: Callable[..., torch.Tensor] | None = None
        # the same kernel writing the step's keys and values into the cache itself (gemv.attend_step), for a step that
        # writes one aligned column in every row: (c_attn's (B, 1, 3C) output, one layer's cache, K) -> (B, 1, C), heads
        # side by side, or None where it cannot
        self.one_query_step: Callable[..., torch.Tensor | None] | None = None
        # a kernel for plain causal attention of many queries (q, k, v) -> (B, nh, T, hs), in inference, where this
        # machine measured one faster than SDPA for the model's dtype (gemv.causal; model/attention_plan.py)
        self.many_query: Callable[..., torch.Tensor] | None = None

    def forward(
        self, x: torch.Tensor, layer: int, kv_cache: KVCache | None, plan: StepPlan | None
    ) -> torch.Tensor:
        # x: (B, T, C) -> (B, T, C)
        B, T, C = x.shape
        h = self.c_attn(x)  # (B, T, 3C): every head's query, then every head's key, then every head's value
        y = None
        step = self.one_query_step  # one aligned new column per row, causal: the kernel writes it and attends
        if step is not None and T == 1 and plan is not None and plan.causal and plan.col == plan.n_keys - 1 and self._plain(h):
            y = step(h, kv_cache.layer(layer), plan.n_keys)  # (B, 1, C), the cache written; None: it cannot
        if y is None:
            qkv = self.split_heads(h)  # (3, B, nh, T, hs)
            if kv_cache is not None:
                k, v = kv_cache.update(layer, qkv[1:], plan)  # (B, nh, K, hs): everything this row has seen
            else:
                k, v = qkv[1], qkv[2]
            y = self.attend(qkv[0], k, v, plan).transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return _dropout(self.c_proj(y if y.dtype == x.dtype else y.to(x.dtype)), self.dropout, self.training)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: StepPlan | None) -> torch.Tensor:
        """(B, nh, T, hs) queries, (B, nh, K, hs) keys and values -> (B, nh, T, hs), in compute_dtype (else q's
        dtype; a cache kept in another dtype is converted). plan: the step's masks (None: plain causal)."""
        dt = self.compute_dtype or q.dtype
        if q.dtype != dt:
            q = q.to(dt)
        if k.dtype != dt:
            k, v = k.to(dt), v.to(dt)
        T = q.shape[2]
        dropout_p = self.dropout if self.training else 0.0
        mask = None if plan is None else plan.attn_mask  # (B, 1, T, K) bool, None: plain causal (or plan.causal)
        if self._plain(q):
            if self.one_query is not None and T == 1:
                return self.one_query(q, k, v, None if plan is None or plan.causal else plan.attn_bias(torch.float32))
            if self.many_query is not None and T > 1 and (plan is None or plan.causal):
                return self.many_query(q, k, v)
        if self.record is not None:  # attention maps asked for (record_attention)
            y = self._explicit_attention(q, k, v, None if plan is None or plan.causal else plan.attn_bias(q.dtype))
        elif plan is not None and plan.causal:  # plain causal over the cache: one query sees every key
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, dropout_p=dropout_p)
        elif T == 1 and mask is not None:  # one query (decode): the additive mask is made once per step, not per layer
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=plan.attn_bias(q.dtype), dropout_p=dropout_p)
        elif mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        else:  # the fast path: plain causal attention (flash / memory-efficient kernels)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        return y  # (B, nh, T, hs)

    def _plain(self, t: torch.Tensor) -> bool:
        """Whether attention on `t` is plain inference, which a kernel may run: no recorded maps, no dropout, no
        gradient."""
        return self.record is None and not (self.training and self.dropout > 0) and not t.requires_grad

    def _explicit_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T / sqrt(hs) + bias) v, with the probabilities in hand: (B, nh, T, hs) q, (B, nh, K, hs) k, v;
        bias (B, 1, T, K) additive (0 / -inf), None for plain causal attention. SDPA's math, written out
        because `record_attention` needs the probabilities themselves; every other path calls SDPA."""
        T, K = q.shape[2], k.shape[2]
        att = torch.matmul(q, k.transpose(-1, -2)).mul_(1.0 / math.sqrt(q.shape[-1]))  # (B, nh, T, K)
        if bias is None:  # causal over the last T of K keys
            att.masked_fill_(~torch.ones(T, K, dtype=torch.bool, device=q.device).tril(K - T), -math.inf)
        else:
            att.add_(bias)
        probs = torch.softmax(att, dim=-1)  # (B, nh, T, K)
        if self.record is not None:
            self.record.append(probs.detach())
        return torch.matmul(probs, v)  # (B, nh, T, hs)

    def split_heads(self, qkv: torch.Tensor) -> torch.Tensor:
        """c_attn's output (B, T, 3C) -> (3, B, nh, T, hs), a view of it: q, k, v stacked."""
        B, T, _ = qkv.shape
        return qkv.view(B, T, 3, self.n_head, self.n_embd // self.n_head).permute(2, 0, 3, 1, 4)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_dim)
        self.c_proj = nn.Linear(config.mlp_dim, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, C) -> (B, T, 4C) -> (B, T, C). GPT-2's GELU is the tanh approximation ("gelu_new"),
        # not the exact erf form: using the exact one shifts logits by ~1e-3 against the real weights.
        fc_gelu = getattr(self.c_fc, "gelu", None)  # an inference copy's KernelLinear: the GELU fused where it can
        h = fc_gelu(x) if fc_gelu is not None else F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, 4C)
        return _dropout(self.c_proj(h), self.dropout, self.training)


class Block(nn.Module):
    """Pre-LN: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, layer: int, kv_cache: KVCache | None, plan: StepPlan | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), layer, kv_cache, plan)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        # Built inside `with torch.device("meta")` (from_pretrained: the weights come from the file), nothing is
        # initialised: torch's random init of a meta tensor imports torch._dynamo, 1.5 s of every model load.
        meta = torch.empty(0).is_meta

        def embedding(rows: int) -> nn.Embedding:  # (rows, C)
            return nn.Embedding(rows, config.n_embd, _weight=torch.empty(rows, config.n_embd) if meta else None)

        self.transformer = nn.ModuleDict(
            dict(
                wte=embedding(config.vocab_size),
                wpe=embedding(config.n_positions),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one (V, C) matrix embeds and unembeds
        if meta:
            return
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections that write into the residual stream by 1/sqrt(2 L):
        # each block adds two of them, and the stream's variance should not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """Parameters, the tied head counted once."""
        return sum(p.numel() for p in self.parameters())

    # ---- Hugging Face conventions: thin delegations to gpt2kit.pretrained ---------------------------
    # (imported when called: the model package does not depend on the loading code, which depends on it)
    @classmethod
    def from_pretrained(cls, name_or_path, device=None, dtype=None) -> GPT:
        """`gpt2kit.from_pretrained`: a preset, a Hugging Face repo id or a local folder, in eval mode."""
        from gpt2kit.pretrained import from_pretrained

        return from_pretrained(name_or_path, device=device, dtype=dtype)

    def save_pretrained(self, folder, dtype=None, tokenizer_files: bool = True):
        """`gpt2kit.save_pretrained(self, ...)`: a Hugging Face GPT-2 folder that transformers loads as-is."""
        from gpt2kit.pretrained import save_pretrained

        return save_pretrained(self, folder, dtype=dtype, tokenizer_files=tokenizer_files)

    # ---- forward ---------------------------------------------------------------------------------
    def hidden_states(
        self,
        idx: torch.Tensor,
        kv_cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        plan: StepPlan | None = None,
    ) -> torch.Tensor:
        """Token ids (B, T) -> final hidden states after ln_f (B, T, C).

        kv_cache: continue from (and append to) the cached keys/values; positions continue per row.
        attention_mask: (B, T) with 1 for real tokens and 0 for left padding: padded tokens are
            neither attended to nor counted in positions, so each row computes what it would alone.
        plan: the step `kv_cache.plan(T, attention_mask)` already made by the caller, which then answers for
            the ids (the decode runner: the engine samples them from the vocabulary).
        """
        B, T = idx.shape
        if plan is None:
            self._check_input(idx, kv_cache)
            if kv_cache is not None:
                plan = kv_cache.plan(T, attention_mask)
            elif attention_mask is not None:
                plan = _padding_plan(attention_mask.to(idx.device))
        # (B, T) per row from the plan; (1, T) for a plain forward
        position_ids = plan.position_ids if plan is not None else torch.arange(T, device=idx.device)[None]
        x = self.transformer.wte(idx) + self.transformer.wpe(position_ids)  # (B, T, C)
        x = _dropout(x, self.config.dropout, self.training)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, layer, kv_cache, plan)
        return self.transformer.ln_f(x)  # (B, T, C)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) -> (logits (B, T, V), None), or with targets (B, T): (None, mean cross-entropy).

        Targets are already shifted by the data layer (targets[b, t] is the token after idx[b, t]);
        positions whose target is IGNORE_INDEX (-100) add no loss. With targets the head and the loss run
        together in row chunks (head_loss.py), so the (B, T, V) logits are never made: callers that want
        logits and a loss compute the loss from the logits themselves. Columns past config.n_vocab (a
        padded head) are left out of the softmax.
        """
        h = self.hidden_states(idx, kv_cache, attention_mask)  # (B, T, C)
        if targets is None:
            return self.lm_head(h), None  # (B, T, V)
        return None, lm_head_loss(h, self.lm_head.weight, targets, n_valid=self.config.real_vocab_size)

    def _check_input(self, idx: torch.Tensor, kv_cache: KVCache | None) -> None:
        if idx.dim() != 2:
            raise InputError(f"token ids must be a (B, T) tensor, got shape {tuple(idx.shape)}.")
        if idx.dtype not in (torch.long, torch.int32, torch.int64):
            raise InputError(f"token ids must be integers, got dtype {idx.dtype}.")
        T = idx.shape[1]
        if T == 0:
            raise InputError("token ids are empty: give at least one token (e.g. <|endoftext|>, id 50256).")
        past = kv_cache.seq_len if kv_cache is not None else 0
        if past + T > self.config.n_positions:
            raise InputError(
                f"sequence of {past + T} tokens is longer than the model's context of {self.config.n_positions} "
                "(n_positions). Truncate the input, evaluate it in windows, or generate with the sliding window."
            )
        # A range check costs a device->host sync on a GPU, so it runs only where it is free (CPU);
        # the generation engine and the data loaders validate ids at their own boundaries.
        if idx.device.type == "cpu" and not torch.compiler.is_compiling():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.config.vocab_size:
                bad = hi if hi >= self.config.vocab_size else lo
                raise InputError(
                    f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size}). Token ids must come "
                    "from the GPT-2 tokenizer (or a tokenizer with the model's vocab_size)."
                )


def _padding_plan(attention_mask: torch.Tensor) -> StepPlan:
    """Masks for a left-padded batch without a cache: causal, padded keys hidden, positions from the mask."""
    real = attention_mask.bool()  # (B, T)
    T = real.shape[1]
    position_ids = (real.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
    ar = torch.arange(T, device=real.device)
    causal = ar[None, :] <= ar[:, None]  # (T, T)
    attn_mask = (causal[None] & real[:, None, :]) | torch.eye(T, dtype=torch.bool, device=real.device)[None]
    cols = ar[None].expand_as(position_ids)
    return StepPlan(cols=cols, position_ids=position_ids, attn_mask=attn_mask[:, None], n_keys=T)


@contextlib.contextmanager
def record_attention(model: GPT) -> Iterator[list[list[torch.Tensor]]]:
    """Inside the block, every forward of `model` also records its attention probabilities: `maps[l]` is
    the list of (B, nh, T, K) tensors layer l produced, one per forward. They come from the model's own
    attention (the explicit softmax path), not from a second implementation."""
    layers = [block.attn for block in model.transformer.h]
    maps: list[list[torch.Tensor]] = [[] for _ in layers]
    for attn, rec in zip(layers, maps):
        attn.record = rec
    try:
        yield maps
    finally:
        for attn in layers:
            attn.record = None
