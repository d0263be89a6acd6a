"""Vocabulary trimming: an LM head of K output tokens that still answers over the whole vocabulary.

``trim_model`` gives a decoder an output head of the K rows of the tokens a domain uses (input embeddings
stay whole: a prompt may hold any token; a tied head becomes an untied copy of those embedding rows).
The head (``TrimmedHead``) computes K logits and gathers them back into vocabulary positions, the other
tokens getting ``max(kept logits) - fill_margin`` (see ``core.shape.VocabTrim``), so ``generate()``, ONNX
Runtime, GenAI and every sampler see usual token ids. ``config.ziplm_vocab`` records the kept ids;
``load_model`` rebuilds the head from it.

Why a finite fill and not -inf: the parity rule (``|got - want| <= atol + rtol * max|want|``, shared by
export and ``verify``) turns -inf - -inf into NaN and would fail every trimmed model; a huge constant
(-1e9, float32's lowest) would make ``max|want|`` huge and pass any error. ``max - 128`` is finite under
temperature, repetition penalty and max-subtraction, ranks below the best kept token, and
``exp(-128)`` is exactly 0 in an fp32 / fp16 softmax (the smallest fp32 denormal is ``exp(-103.3)``).

Token counting and selection are pure functions over numpy arrays; ``vocab_quality`` measures what a
trimmed model loses against its untrimmed parent on held-out text (``VocabQuality``, versioned JSON).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..core import checks
from ..core.errors import UserError
from ..core.jsonio import atomic_write_json, check_header, read_json
from ..core.shape import DEFAULT_FILL_MARGIN, VOCAB_CONFIG_KEY, VocabTrim


# --- the head ---------------------------------------------------------------------------------------------
class TrimmedHead(nn.Module):
    """``weight`` (K, hidden) rows of the kept tokens -> logits over the whole vocabulary.

    ``forward``: K logits, one fill column (their max minus ``fill_margin``), then one Gather with a
    constant index (kept token -> its row, any other token -> the fill column): exports to ONNX as
    MatMul, ReduceMax, Sub, Concat, Gather."""

    def __init__(self, weight: torch.Tensor, trim: VocabTrim, bias: torch.Tensor | None = None):
        super().__init__()
        k = len(trim.kept)
        if weight.shape[0] != k:
            raise ValueError(f"head weight has {weight.shape[0]} rows for {k} kept tokens")
        self.weight = nn.Parameter(weight, requires_grad=weight.requires_grad)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=bias.requires_grad)
        self.trim = trim
        self.fill_margin = float(trim.fill_margin)
        kept = torch.tensor(trim.kept, dtype=torch.long)
        index = torch.full((trim.vocab_size,), k, dtype=torch.long)
        index[kept] = torch.arange(k)
        self.register_buffer("kept_ids", kept, persistent=False)
        self.register_buffer("vocab_index", index, persistent=False)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def kept_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.weight, self.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.kept_logits(hidden)
        fill = logits.amax(dim=-1, keepdim=True) - self.fill_margin
        return torch.cat([logits, fill], dim=-1).index_select(-1, self.vocab_index)

    def extra_repr(self) -> str:
        return f"kept={len(self.trim.kept)}, vocab={self.trim.vocab_size}, fill=max-{self.fill_margin:g}"


def vocab_trim_of(model: nn.Module) -> VocabTrim | None:
    """The kept output tokens of a live model (None: a whole-vocabulary head)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head.trim if isinstance(head, TrimmedHead) else None


def check_trimmable(arch: Any, raw_config: dict[str, Any], where: str) -> None:
    """Refuse an encoder, or a model whose head is already trimmed (before loading it)."""
    if not arch.is_decoder:
        raise UserError(f"trim-vocab needs a causal LM (decoder); {where} is a {arch.family} encoder",
                        "trim the output vocabulary of a GPT-2 or Llama-family model")
    if raw_config.get(VOCAB_CONFIG_KEY) is not None:
        raise UserError(f"{where} already has a trimmed output vocabulary ({VOCAB_CONFIG_KEY} in config.json)",
                        "trim the untrimmed model (dense or pruned) instead")


def _untie(model: nn.Module) -> None:
    model.config.tie_word_embeddings = False
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    text.tie_word_embeddings = False
    if hasattr(model, "get_expanded_tied_weights_keys"):
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=False)


def trim_model(model: nn.Module, kept: Sequence[int], fill_margin: float = DEFAULT_FILL_MARGIN) -> nn.Module:
    """Give ``model`` (a decoder, dense or pruned) an output head of the ``kept`` tokens' rows, in place.

    The new head's weight is a copy of those rows (of the input embedding when the head was tied, which is
    then untied); ``config.ziplm_vocab`` records the kept ids."""
    from . import adapter_for

    arch = adapter_for(model).arch(model)
    if not arch.is_decoder:
        raise UserError(f"trim-vocab needs a causal LM; this is a {arch.family} encoder")
    head = model.get_output_embeddings()
    if isinstance(head, TrimmedHead):
        raise UserError("the model's output vocabulary is already trimmed", "trim the untrimmed model instead")
    if not isinstance(head, nn.Linear):
        raise UserError(f"{type(model).__name__}'s output head is a {type(head).__name__}, not a Linear",
                        "trim-vocab supports GPT-2 and Llama-family causal LMs")
    vocab = head.weight.shape[0]
    ids = sorted({int(i) for i in kept})
    if not ids or ids[0] < 0 or ids[-1] >= vocab:
        raise UserError(f"kept token ids must be in [0, {vocab}) and at least one, got "
                        f"{ids[:3] if not ids or ids[0] < 0 else ids[-3:]}", "keep ids of the model's vocabulary")
    trim = VocabTrim(vocab, tuple(ids), float(fill_margin))
    rows = torch.tensor(trim.kept, dtype=torch.long, device=head.weight.device)
    with torch.no_grad():
        weight = head.weight.detach().index_select(0, rows).clone()
        bias = None if head.bias is None else head.bias.detach().index_select(0, rows).clone()
    new = TrimmedHead(weight, trim, bias).to(head.weight.device)
    _untie(model)
    model.set_output_embeddings(new)
    setattr(model.config, VOCAB_CONFIG_KEY, trim.to_json())
    return model


def attach_empty_head(model: nn.Module, trim: VocabTrim) -> nn.Module:
    """``load_model``: an uninitialised K-row head for ``trim`` (its weight is loaded afterwards)."""
    head = model.get_output_embeddings()
    weight = torch.empty(len(trim.kept), head.weight.shape[1], dtype=head.weight.dtype)
    bias = None if getattr(head, "bias", None) is None else torch.empty(len(trim.kept), dtype=head.weight.dtype)
    _untie(model)
    model.set_output_embeddings(TrimmedHead(weight, trim, bias))
    return model


# --- which tokens: counting and selection (pure) ----------------------------------------------------------
def count_tokens(tokenizer: Any, texts: Iterable[str], vocab_size: int, batch: int = 64) -> np.ndarray:
    """How often each token id occurs in ``texts`` (tokenised without special tokens), length ``vocab_size``."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    texts = list(texts)
    for start in range(0, len(texts), batch):
        for ids in tokenizer(texts[start : start + batch], add_special_tokens=False)["input_ids"]:
            if ids:
                arr = np.asarray(ids, dtype=np.int64)
                if arr.max() >= vocab_size:
                    raise UserError(f"the tokenizer gives token id {int(arr.max())}, beyond the model's vocabulary "
                                    f"of {vocab_size}", "use the model's own tokenizer")
                counts += np.bincount(arr, minlength=vocab_size)
    return counts


def _ids(value: Any) -> list[int]:
    values = value if isinstance(value, (list, tuple, set)) else [value]
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


# Reserved placeholder tokens a tokenizer declares but a model never learned to emit: Gemma's 6,242
# <unused0>.., BERT's [unused0].., Llama 3's <|reserved_special_token_0|>..
_PLACEHOLDER = re.compile(r"^(<\|?(unused|reserved)[a-z_]*\d+\|?>|\[unused\d+\])$")


def special_ids(tokenizer: Any, vocab_size: int, *configs: dict[str, Any] | None) -> list[int]:
    """Token ids a trimmed head always keeps: BOS / EOS / PAD / UNK of the tokenizer and of each config dict
    (config.json, generation_config.json), every special and every added token of the tokenizer (chat
    markers such as ``<end_of_turn>``) except reserved placeholders (``<unused12>``: a model never emits
    them; they would be 6,242 of Gemma's rows)."""
    keys = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    found: set[int] = set()
    for config in configs:
        for key in keys:
            found.update(_ids((config or {}).get(key)))
    if tokenizer is not None:
        for key in keys:
            found.update(_ids(getattr(tokenizer, key, None)))
        found.update(_ids(list(getattr(tokenizer, "all_special_ids", []) or [])))
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        found.update(_ids([i for i, token in added.items() if not _PLACEHOLDER.match(str(token))]))
    return sorted(i for i in found if 0 <= i < vocab_size)


@dataclass(frozen=True)
class Selection:
    kept: tuple[int, ...]  # ascending
    coverage: float  # share of the counted tokens that are kept
    counted: int  # tokens counted
    distinct: int  # distinct token ids seen
    specials: int  # always-kept ids


def select_tokens(counts: np.ndarray, specials: Sequence[int], keep: int | None = None,
                  coverage: float | None = None) -> Selection:
    """The kept output tokens: the specials, then the most frequent tokens (ties: lower id first) until
    ``keep`` tokens in all, or until they cover ``coverage`` of the counted tokens."""
    if (keep is None) == (coverage is None):
        raise UserError("pass exactly one of --keep K and --coverage C")
    counts = np.asarray(counts, dtype=np.int64)
    vocab, total = counts.size, int(counts.sum())
    if total == 0:
        raise UserError("the domain text gives no tokens", "pass a file with text in it")
    specials = sorted(set(int(s) for s in specials))
    order = np.lexsort((np.arange(vocab), -counts))  # most frequent first, then lower id
    if keep is not None:
        if keep > vocab:
            raise UserError(f"--keep {keep} is more than the model's {vocab} output tokens",
                            f"pass --keep {vocab} or less")
        if keep < len(specials):
            raise UserError(f"--keep {keep} is fewer than the {len(specials)} special tokens that are always kept",
                            f"pass --keep {len(specials) + 1} or more")
        mask = np.ones(vocab, dtype=bool)
        mask[specials] = False
        extra = order[mask[order]][: keep - len(specials)]
    else:
        need = math.ceil(coverage * total - 1e-9 * total)
        cum = np.cumsum(counts[order])
        n = int(np.searchsorted(cum, need, side="left")) + 1
        extra = order[: min(n, int((counts > 0).sum()))]
    kept = np.union1d(np.asarray(specials, dtype=np.int64), extra.astype(np.int64))
    covered = int(counts[kept].sum())
    return Selection(tuple(int(i) for i in kept), covered / total, total, int((counts > 0).sum()), len(specials))


# --- quality against the untrimmed model --------------------------------------------------------------------
QUALITY_FORMAT = "ziplm-deploy/vocab-quality"
QUALITY_VERSION = 1
QUALITY_FILE = "vocab-quality.json"


@dataclass(frozen=True)
class VocabQuality:
    """What a trimmed model loses against its untrimmed parent on held-out text (next-token positions).

    ``coverage``: share of held-out target tokens in the kept set; the rest (``impossible_tokens``) have
    probability 0 under the trimmed model, so its perplexity over all tokens is infinite (``perplexity``
    null) whenever one occurs, and ``perplexity_in_set`` is over the kept targets only (the untrimmed
    model's over the same tokens beside it). ``kl``: mean KL(trimmed || untrimmed) of the next-token
    distributions (KL the other way is infinite: the untrimmed model gives every token mass);
    ``mass_outside``: the untrimmed model's mean probability on the dropped tokens. Greedy: N tokens from
    each prompt; ``greedy_prefix_agreement`` = mean common-prefix length / N, ``greedy_step_agreement``
    = the trimmed model's next token equals the untrimmed one's along the untrimmed greedy path."""

    kept: int
    vocab_size: int
    tokens: int
    coverage: float
    impossible_tokens: int
    top1_agreement: float
    kl: float
    mass_outside: float
    perplexity: float | None
    perplexity_in_set: float | None  # None: no held-out token is kept
    reference_perplexity: float
    reference_perplexity_in_set: float | None
    greedy_prompts: int
    greedy_tokens: int
    greedy_prefix_agreement: float
    greedy_step_agreement: float
    greedy_identical: int
    eval_data: str = ""

    @property
    def impossible_share(self) -> float:
        return self.impossible_tokens / self.tokens

    def to_json(self) -> dict[str, Any]:
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"format": QUALITY_FORMAT, "version": QUALITY_VERSION, **body}

    @staticmethod
    def from_json(payload: Any, source: str = "vocab quality") -> "VocabQuality":
        check_header(payload, QUALITY_FORMAT, (QUALITY_VERSION,), source)
        names = {f.name: f for f in fields(VocabQuality)}
        unknown = sorted(set(payload) - set(names) - {"format", "version"})
        missing = sorted(n for n in names if n != "eval_data" and n not in payload)
        if unknown or missing:
            raise UserError(f"{source}: unknown keys {unknown} / missing keys {missing}", "re-run trim-vocab")
        values: dict[str, Any] = {}
        for name in names:
            if name not in payload:
                continue
            v = payload[name]
            if name == "eval_data":
                values[name] = checks.typed(v, str, source, name, "a string")
            elif name in _INTS:
                values[name] = checks.integer(v, source, name, lo=0)
            elif name in _NULLABLE and v is None:
                values[name] = None
            else:
                hi = 1.0 if name in _SHARES else None
                values[name] = checks.number(v, source, name, lo=0, hi=hi)
        return VocabQuality(**values)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_json())

    @staticmethod
    def load(path: str | os.PathLike) -> "VocabQuality":
        return VocabQuality.from_json(read_json(path, "vocab quality report"), source=str(path))


_INTS = ("kept", "vocab_size", "tokens", "impossible_tokens", "greedy_prompts", "greedy_tokens", "greedy_identical")
_NULLABLE = ("perplexity", "perplexity_in_set", "reference_perplexity_in_set")
_SHARES = ("coverage", "top1_agreement", "mass_outside", "greedy_prefix_agreement", "greedy_step_agreement")


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float()


@torch.no_grad()
def greedy(model: nn.Module, prompt: Sequence[int], tokens: int) -> list[int]:
    """``tokens`` greedy tokens after ``prompt`` (EOS does not stop it: both models are compared over N)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    ids = torch.tensor([list(prompt)], dtype=torch.long)
    out: list[int] = []
    for _ in range(tokens):
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[0, -1]
        nxt = int(logits.argmax())
        out.append(nxt)
        ids = torch.tensor([[nxt]], dtype=torch.long)
    return out


@torch.no_grad()
def vocab_quality(trimmed: nn.Module, reference: nn.Module, windows: torch.Tensor, prompts: Sequence[Sequence[int]],
                  greedy_tokens: int, batch_size: int = 4, eval_data: str = "") -> VocabQuality:
    """Coverage, top-1 agreement, KL, perplexity (out-of-set tokens counted) on ``windows`` (n, seq) and
    greedy agreement over ``greedy_tokens`` tokens from each prompt, of ``trimmed`` against ``reference``."""
    trim = vocab_trim_of(trimmed)
    if trim is None:
        raise UserError("vocab_quality needs a model with a trimmed output vocabulary")
    trimmed.eval()
    reference.eval()
    kept = torch.tensor(trim.kept, dtype=torch.long)
    index = torch.full((trim.vocab_size,), -1, dtype=torch.long)
    index[kept] = torch.arange(len(kept))
    tokens = impossible = agree = 0
    kl = outside = nll_in = ref_nll_in = ref_nll = 0.0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        target = batch[:, 1:].reshape(-1)
        lq = torch.log_softmax(_logits(trimmed, batch)[:, :-1].reshape(target.numel(), -1)[:, kept], dim=-1)
        lp = torch.log_softmax(_logits(reference, batch)[:, :-1].reshape(target.numel(), -1), dim=-1)
        lp_kept = lp[:, kept]
        kl += float((lq.exp() * (lq - lp_kept)).sum(-1).clamp_min(0).sum())
        outside += float((1 - lp_kept.logsumexp(-1).exp()).clamp_min(0).sum())
        agree += int((kept[lq.argmax(-1)] == lp.argmax(-1)).sum())
        pos = index[target]
        inside = pos >= 0
        rows = torch.arange(target.numel())
        nll_in -= float(lq[rows[inside], pos[inside]].sum())
        ref_token = lp[rows, target]
        ref_nll -= float(ref_token.sum())
        ref_nll_in -= float(ref_token[inside].sum())
        tokens += target.numel()
        impossible += int((~inside).sum())
    in_set = tokens - impossible
    prefix = step = identical = 0
    for prompt in prompts:
        want = greedy(reference, prompt, greedy_tokens)
        got = greedy(trimmed, prompt, greedy_tokens)
        common = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), greedy_tokens)
        prefix += common
        identical += common == greedy_tokens
        path = torch.tensor([list(prompt) + want[:-1]], dtype=torch.long)
        forced = _logits(trimmed, path)[0, len(prompt) - 1 :].argmax(-1)
        step += int((forced == torch.tensor(want)).sum())
    n_greedy = max(len(prompts) * greedy_tokens, 1)
    ppl_in = math.exp(nll_in / in_set) if in_set else None
    return VocabQuality(
        kept=len(kept), vocab_size=trim.vocab_size, tokens=tokens, coverage=in_set / tokens,
        impossible_tokens=impossible, top1_agreement=agree / tokens, kl=kl / tokens, mass_outside=outside / tokens,
        perplexity=ppl_in if impossible == 0 else None, perplexity_in_set=ppl_in,
        reference_perplexity=math.exp(ref_nll / tokens),
        reference_perplexity_in_set=math.exp(ref_nll_in / in_set) if in_set else None,
        greedy_prompts=len(prompts), greedy_tokens=greedy_tokens, greedy_prefix_agreement=prefix / n_greedy,
        greedy_step_agreement=step / n_greedy, greedy_identical=identical, eval_data=eval_data)


def prompts_from(windows: torch.Tensor, count: int, length: int) -> list[list[int]]:
    """``count`` prompts: the first ``length`` tokens of windows spread evenly over ``windows``."""
    n = len(windows)
    picks = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(min(count, n))})
    return [windows[i, :length].tolist() for i in picks]
