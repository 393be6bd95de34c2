"""A small character-level GPT, and model-agnostic helpers: logits, sequence log-probs, sampling.

The helpers work with any causal LM called as `model(input_ids=..., attention_mask=...)` that returns logits
(a tensor, or an object with `.logits`, as a Hugging Face AutoModelForCausalLM does). Rows are left-padded;
position ids are derived from the attention mask and passed when the model's forward accepts them, so the
same tokens get the same positions however a batch is padded.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtgrpo_core import checks as v


class KVCache:
    """Preallocated keys and values of every layer, (R, heads, capacity, head_dim) each; `length` are filled."""

    def __init__(self, layers: int, rows: int, heads: int, capacity: int, head_dim: int, like: torch.Tensor) -> None:
        shape = (rows, heads, capacity, head_dim)
        self.keys = [like.new_empty(shape) for _ in range(layers)]
        self.values = [like.new_empty(shape) for _ in range(layers)]
        self.length = 0

    def extend(self, layer: int, k: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions of `layer` after the filled ones; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.keys[layer].shape[2]:
            raise ValueError(f"KV cache capacity {self.keys[layer].shape[2]} exceeded: {end} positions")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = val
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


@dataclass(frozen=True)
class CharGPTConfig:
    """Size of a CharGPT; the defaults give ~340k parameters."""

    vocab_size: int
    n_layer: int = 3
    n_embd: int = 96
    n_head: int = 4
    max_len: int = 48

    def __post_init__(self) -> None:
        v.positive_int("vocab_size", self.vocab_size, minimum=2)
        v.positive_int("n_layer", self.n_layer)
        v.positive_int("n_head", self.n_head)
        v.positive_int("max_len", self.max_len, minimum=2)
        if v.positive_int("n_embd", self.n_embd) % self.n_head:
            raise ValueError(f"n_embd must be a multiple of n_head={self.n_head}, got {self.n_embd}")


@dataclass
class CharGPTOutput:
    """Logits (R, T, V) and, when asked for, the key/value cache of every layer."""

    logits: torch.Tensor
    past_key_values: KVCache | None = None


class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and a 4x MLP."""

    def __init__(self, cfg: CharGPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        r, t, d = x.shape
        q, k, val = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, val = (a.view(r, t, self.n_head, d // self.n_head).transpose(1, 2) for a in (q, k, val))
        if cache is not None:
            k, val = cache.extend(layer, k, val)
        att = F.scaled_dot_product_attention(q, k, val, attn_mask=allowed)
        x = x + self.proj(att.transpose(1, 2).reshape(r, t, d))
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class CharGPT(nn.Module):
    """A GPT over characters with tied input/output embeddings and an optional key/value cache."""

    def __init__(self, config: CharGPTConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos = nn.Embedding(config.max_len, config.n_embd)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def new_cache(self, rows: int, capacity: int) -> KVCache:
        """An empty key/value cache for `rows` sequences of up to `capacity` tokens."""
        cfg = self.config
        like = self.tok.weight
        return KVCache(cfg.n_layer, rows, cfg.n_head, min(capacity, cfg.max_len), cfg.n_embd // cfg.n_head, like)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
    ) -> CharGPTOutput:
        """input_ids (R, T); attention_mask (R, S) over cached + new tokens, 1 = real token; S = cached + T.

        With `past_key_values` (from `new_cache`) the new keys and values are appended to it in place.
        """
        r, t = input_ids.shape
        past_len = 0 if past_key_values is None else past_key_values.length
        if attention_mask is None:
            attention_mask = torch.ones(r, past_len + t, dtype=torch.long, device=input_ids.device)
        if position_ids is None:
            position_ids = mask_positions(attention_mask)[:, past_len:]
        if past_len + t > self.config.max_len:
            raise ValueError(f"sequence length {past_len + t} exceeds max_len={self.config.max_len}")
        keys = attention_mask.bool()[:, None, None, :]  # (R, 1, 1, S)
        q_abs = torch.arange(past_len, past_len + t, device=input_ids.device)[:, None]
        k_abs = torch.arange(past_len + t, device=input_ids.device)[None, :]
        allowed = (keys & (k_abs <= q_abs)) | (k_abs == q_abs)  # a padded query still sees itself: no NaN
        x = self.tok(input_ids) + self.pos(position_ids)
        for i, block in enumerate(self.blocks):
            x = block(x, allowed, past_key_values, i)
        if past_key_values is not None:
            past_key_values.length += t
        logits = self.ln_f(x) @ self.tok.weight.T
        return CharGPTOutput(logits=logits, past_key_values=past_key_values)


def mask_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counted over real tokens only (left padding gets position 0)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _accepts(model: nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def logits_of(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits (R, T, V) of any causal LM; position ids follow the mask when the model takes them."""
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = mask_positions(attention_mask)
    out = model(**kwargs)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise TypeError(f"model must return logits of shape (R, T, V), got {type(out).__name__}")
    return logits


def check_vocab(model: nn.Module, vocab_size: int) -> None:
    """Refuse a model whose output layer is smaller than the tokenizer's vocabulary."""
    param = next(model.parameters())
    probe = torch.zeros(1, 2, dtype=torch.long, device=param.device)
    with torch.no_grad():
        got = logits_of(model, probe, torch.ones_like(probe)).shape[-1]
    if got < vocab_size:
        raise ValueError(
            f"model vocabulary has {got} entries but the tokenizer has {vocab_size} tokens: "
            f"expected a model whose logits cover every token id"
        )


def completion_logprobs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int, temperature: float = 1.0
) -> torch.Tensor:
    """log pi(token) of every token from column `start` on, under logits / temperature: shape (R, T - start)."""
    logits = logits_of(model, input_ids, attention_mask)[:, start - 1 : -1].float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, input_ids[:, start:, None]).squeeze(-1)


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample completions for left-padded prompts; temperature 0 is greedy.

    Returns completion ids and mask, both (R, max_new_tokens): tokens up to and including the first EOS are
    real (mask 1), later ones are `pad_id` (mask 0). Uses a key/value cache when the model is a CharGPT;
    any other model recomputes the whole sequence for each new token.
    """
    ids, mask = prompt_ids, prompt_mask
    rows = ids.shape[0]
    done = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    new_ids, new_mask = [], []
    cache = model.new_cache(rows, ids.shape[1] + max_new_tokens) if isinstance(model, CharGPT) else None
    step_ids, positions = ids, mask_positions(mask)
    for _ in range(max_new_tokens):
        if cache is not None:
            logits = model(step_ids, mask, positions, past_key_values=cache).logits[:, -1]
        else:
            logits = logits_of(model, ids, mask)[:, -1]
        logits = logits.float()
        if temperature == 0:
            token = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        live = ~done
        token = torch.where(live, token, torch.full_like(token, pad_id))
        new_ids.append(token)
        new_mask.append(live.long())
        done = done | (token == eos_id)
        positions = positions[:, -1:] + 1
        step_ids = token[:, None]
        ids = torch.cat([ids, step_ids], dim=1)
        mask = torch.cat([mask, live.long()[:, None]], dim=1)
        if bool(done.all()):
            break
    comp_ids = torch.stack(new_ids, dim=1)
    comp_mask = torch.stack(new_mask, dim=1)
    pad = max_new_tokens - comp_ids.shape[1]
    if pad:
        comp_ids = F.pad(comp_ids, (0, pad), value=pad_id)
        comp_mask = F.pad(comp_mask, (0, pad), value=0)
    return comp_ids, comp_mask
