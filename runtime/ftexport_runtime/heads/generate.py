"""text-generation: a decoder exported with its key/value cache (Optimum's
text-generation-with-past: one ONNX model whose inputs are input_ids, attention_mask,
position_ids and past_key_values.N.key/value, and whose outputs are logits and present.N.*).

The loop: prefill the prompt with an empty cache (past length 0), then feed one token at a
time, handing each step's present.* back as the next step's past_key_values.*. Sampling is
numpy with a seeded Generator, so a seed reproduces a continuation exactly.

Prompts are encoded without special tokens, the way ftexport trains: a text is its tokens
followed by eos, so a model learns to end a sentence with eos and generation stops there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ..errors import BundleError, PredictError


@dataclass
class Generation:
    prompt: str
    text: str  # the continuation only, decoded
    token_ids: list[int]  # the continuation's ids (eos included when generation stopped there)
    stopped_at_eos: bool

    def as_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "text": self.text, "token_ids": self.token_ids, "stopped_at_eos": self.stopped_at_eos}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """Exactly the k highest logits (ties go to the lower id, as argmax does)."""
    keep = np.zeros(logits.shape, dtype=bool)
    keep[np.argsort(-logits, kind="stable")[:k]] = True
    return keep


def nucleus_mask(probs: np.ndarray, top_p: float) -> np.ndarray:
    """The smallest set of most likely tokens whose probabilities add up to at least top_p
    (Holtzman et al.; the same cut as transformers' TopPLogitsWarper)."""
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    n = int(np.searchsorted(cumulative, top_p - 1e-12) + 1)  # include the token that crosses top_p
    keep = np.zeros(probs.shape, dtype=bool)
    keep[order[: max(1, min(n, len(order)))]] = True
    return keep


def next_token(
    logits: np.ndarray,
    rng: np.random.Generator | None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> int:
    """One token id from a [vocab] logit vector: argmax, or a draw after temperature, top-k, top-p."""
    if not do_sample:
        return int(np.argmax(logits))
    assert rng is not None
    scaled = logits.astype(np.float64) / temperature
    keep = np.ones(scaled.shape, dtype=bool)
    if top_k:
        keep &= top_k_mask(scaled, top_k)
    scaled = np.where(keep, scaled, -np.inf)
    probs = softmax(scaled)
    if top_p is not None and top_p < 1.0:
        keep = nucleus_mask(probs, top_p)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise PredictError(f"generate(): max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not temperature > 0:
        raise PredictError(f"generate(): temperature must be > 0, got {temperature!r} (for greedy decoding leave do_sample off)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise PredictError(f"generate(): top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise PredictError(f"generate(): top_p must be in (0, 1], got {top_p!r}")


class Generator:
    """The KV-cache decoding loop over one onnxruntime session."""

    def __init__(self, session: Any, tokenizer: Tokenizer, spec: dict[str, Any], max_length: int):
        self.session = session
        self.tokenizer = tokenizer
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.max_length = max_length  # the model's positions: prompt + continuation must fit
        self.eos_id = int(spec["eos_id"])
        self.pad_id = int(spec.get("pad_id") if spec.get("pad_id") is not None else self.eos_id)
        self.bos_id = spec.get("bos_id")
        inputs = {i.name: i for i in session.get_inputs()}
        self.past_inputs = list(spec["past_inputs"])
        missing = [n for n in ["input_ids", "attention_mask", *self.past_inputs] if n not in inputs]
        if missing:
            raise BundleError(f"the model lacks inputs {missing} that the manifest's generation section names; re-export the bundle")
        self.present_outputs = [n.replace("past_key_values.", "present.") for n in self.past_inputs]
        outputs = [o.name for o in session.get_outputs()]
        if outputs[0] != "logits" or any(n not in outputs for n in self.present_outputs):
            raise BundleError(f"the model's outputs {outputs[:3]}... are not logits + present.*; re-export with the key/value cache")
        self.uses_positions = "position_ids" in inputs
        shape = inputs[self.past_inputs[0]].shape  # [batch, heads, past, head_dim]
        self.num_heads = int(spec.get("num_heads") or shape[1])
        self.head_dim = int(spec.get("head_dim") or shape[3])
        self.past_dtype = np.float16 if "float16" in inputs[self.past_inputs[0]].type else np.float32

    # ---- the model call --------------------------------------------------------------------

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One model call: logits [batch, new, vocab] for the new tokens, and the cache after them.
        attention_mask covers past and new tokens; past None means an empty cache (prefill)."""
        batch, new = input_ids.shape
        if past is None:
            past = [np.zeros((batch, self.num_heads, 0, self.head_dim), dtype=self.past_dtype)] * len(self.past_inputs)
        feeds: dict[str, np.ndarray] = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        if self.uses_positions:  # left padding: positions count real tokens only (as transformers' generate)
            positions = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0)
            feeds["position_ids"] = positions[:, -new:].astype(np.int64)
        feeds.update(zip(self.past_inputs, past))
        out = self.session.run(["logits", *self.present_outputs], feeds)
        return np.asarray(out[0], dtype=np.float32), list(out[1:])

    # ---- tokens ------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            if self.bos_id is None:
                raise PredictError("generate(): the prompt is empty and the model has no bos token to start from")
            ids = [int(self.bos_id)]
        return ids

    def left_pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = r
            mask[i, width - len(r) :] = 1
        return ids, mask

    # ---- generation --------------------------------------------------------------------------

    def generate_ids(
        self,
        prompts: list[list[int]],
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> list[list[int]]:
        """Continuations (ids) of prompt ids; use_cache=False recomputes the whole sequence at
        every step (slow; the reference the cache must reproduce)."""
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        longest = max(len(p) for p in prompts)
        if longest >= self.max_length:
            raise PredictError(f"generate(): a prompt of {longest} tokens leaves no room in the model's {self.max_length} positions")
        steps = min(max_new_tokens, self.max_length - longest)
        rng = np.random.default_rng(seed) if do_sample else None
        ids, mask = self.left_pad(prompts)
        out: list[list[int]] = [[] for _ in prompts]
        done = np.zeros(len(prompts), dtype=bool)
        logits, past = self.forward(ids, mask)
        for step in range(steps):
            chosen = np.array([next_token(logits[i, -1], rng, do_sample, temperature, top_k, top_p) for i in range(len(prompts))])
            chosen = np.where(done, self.pad_id, chosen)  # finished rows idle on pad until all are done
            for i, t in enumerate(chosen):
                if not done[i]:
                    out[i].append(int(t))
            done |= chosen == self.eos_id
            if done.all() or step == steps - 1:
                break
            ids = np.concatenate([ids, chosen[:, None]], axis=1)
            mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=np.int64)], axis=1)
            if use_cache:
                logits, past = self.forward(chosen[:, None], mask, past)
            else:
                logits, _ = self.forward(ids, mask)
        return out

    def generate(
        self,
        prompts: str | Sequence[str],
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> list[Generation]:
        """Continue each prompt: greedy by default; do_sample=True draws with temperature,
        top_k and top_p (nucleus) from a numpy RNG seeded with `seed`."""
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise PredictError("generate() takes a prompt string or a non-empty list of them")
        rows = self.generate_ids([self.encode(t) for t in texts], max_new_tokens, do_sample, temperature, top_k, top_p, seed, use_cache)
        results = []
        for text, row in zip(texts, rows):
            eos = bool(row) and row[-1] == self.eos_id
            body = row[:-1] if eos else row
            results.append(Generation(text, self.tokenizer.decode(body, skip_special_tokens=True), row, eos))
        return results

    def perplexity_inputs(self, texts: Sequence[str], max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Texts as the model was trained on them (tokens + eos), right-padded into one batch."""
        limit = max_length or self.max_length
        rows = [(self.tokenizer.encode(t, add_special_tokens=False).ids[: limit - 1] + [self.eos_id]) for t in texts]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return ids, mask


def token_nll(logits: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """Summed negative log-likelihood of each next token (positions 1..n-1 of each row) and
    how many tokens it covers: perplexity = exp(sum / count)."""
    z = logits[:, :-1].astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    target = ids[:, 1:]
    picked = np.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    valid = mask[:, 1:].astype(bool)
    return float(-(picked * valid).sum()), int(valid.sum())


class GenerateHead:
    """The head of text-generation bundles: generate() runs the KV-cache loop; predict() is refused."""

    name = "text-generation"
    encoder = False  # the decoder takes a cache too: predict, logits and encode are refused
    serves = False  # POST /v1/predict classifies; generation over HTTP is not built yet
    hint = "use generate(prompt)"
    command = "generate"

    @staticmethod
    def check_manifest(data: dict[str, Any], where: str) -> dict[str, Any]:
        """A language model has no labels, but needs its cache layout."""
        generation = data.get("generation")
        if not (
            isinstance(generation, dict) and isinstance(generation.get("past_inputs"), list) and isinstance(generation.get("eos_id"), int)
        ):
            raise BundleError(f"{where}: a text-generation bundle needs a 'generation' object with past_inputs and eos_id; re-export it")
        return {"generation": dict(generation)}

    def __init__(self, predictor: Any):
        if predictor.session is None:  # a TensorRT engine: encoders only
            raise BundleError(f"{predictor.bundle.root}: a {self.name} model runs on ONNX Runtime only; use backend 'cpu' or 'cuda'")
        # its own tokenizer: the loop encodes prompts unpadded and untruncated
        m = predictor.manifest
        self.generator = Generator(predictor.session, predictor._load_tokenizer(), m.generation or {}, predictor.max_length)

    def generate(
        self,
        p: Any,
        prompts: str | Sequence[str],
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> list[Generation]:
        return self.generator.generate(prompts, max_new_tokens, do_sample, temperature, top_k, top_p, seed, use_cache)
