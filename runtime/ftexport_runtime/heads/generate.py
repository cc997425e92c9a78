"""text-generation: a decoder exported with its key/value cache (Optimum's
text-generation-with-past: one ONNX model whose inputs are input_ids, attention_mask,
position_ids and past_key_values.N.key/value, and whose outputs are logits and present.N.*).

The loop: prefill the prompt with an empty cache (past length 0), then feed one token at a
time, handing each step's present.* back as the next step's past_key_values.*. Sampling is
numpy with a seeded Generator, so a seed reproduces a continuation exactly.

Prompts are encoded without special tokens, the way ftexport trains: a text is its tokens
followed by eos, so a model learns to end a sentence with eos and generation stops there.
A chat model's conversation is rendered with its chat template first (heads/chat.py), and
generation also stops at the manifest's `stop_ids` (e.g. an end-of-turn token).

`Generator.stream` yields each new token with the text it adds as it is made (decoded
incrementally, so a character split over several byte-level tokens comes out whole); it runs
the same loop as `generate`, so both make the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ..errors import BundleError, PredictError, check_unicode
from .chat import check_messages, compile_template, render
from .generate_io import CHAT, GENERATE, GENERATE_ROUTE, MAX_NEW_TOKENS


@dataclass
class Generation:
    prompt: str  # the prompt (for a chat, the conversation rendered by the chat template)
    text: str  # the continuation only, decoded
    token_ids: list[int]  # the continuation's ids (eos or the stop id included when generation stopped there)
    stopped_at_eos: bool  # stopped at eos or at one of the manifest's stop_ids
    stop_id: int | None = None  # the id it stopped at (eos or a stop id), None when it ran out of tokens

    def as_dict(self) -> dict[str, Any]:
        """prompt, text, token_ids, stopped_at_eos (as bundles before stop ids answered; stop_id is the attribute)."""
        return {"prompt": self.prompt, "text": self.text, "token_ids": self.token_ids, "stopped_at_eos": self.stopped_at_eos}


@dataclass(frozen=True)
class Token:
    """One new token of a stream and the text it adds to the continuation: "" while the
    bytes of a character are still incomplete (the next token completes it), and "" for the
    stop token (eos or a stop id), which the text leaves out."""

    id: int
    text: str


class TextStream:
    """Incremental decoding: the text each new token adds. The continuation so far is decoded
    as a whole and the new tail is handed out, held back while it ends in an incomplete UTF-8
    character (decoded as U+FFFD), so a multi-byte character split across byte-level tokens
    comes out whole, once. Decoding the whole continuation each step keeps the spacing rules
    of every tokenizer's decoder (a leading-space strip applies to the first token only)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def step(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        return self._advance(final=False)

    def flush(self) -> str:
        """What is left at the end (an incomplete character comes out as U+FFFD, as in the full decode)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.startswith(self.emitted) or (not final and text.endswith("\ufffd")):
            return ""  # wait for the rest of a character (a decoder that rewrites earlier text: the result's text is exact)
        piece, self.emitted = text[len(self.emitted) :], text
        return piece


class Stream:
    """A generation token by token: iterate it for `Token`s; once exhausted, `result` is the
    Generation (the same as `generate` gives for this prompt). `close()` stops it early."""

    def __init__(self, generator: Generator, prompt: str, steps: Iterator[tuple[np.ndarray, np.ndarray, bool]]):
        self.prompt = prompt
        self.token_ids: list[int] = []
        self.result: Generation | None = None
        self._generator = generator
        self._steps = steps
        self._stops = generator.stop_set()
        self._text = TextStream(generator.tokenizer)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Token:
        if self.result is not None:
            raise StopIteration
        chosen, _, last = next(self._steps)
        token = int(chosen[0])
        self.token_ids.append(token)
        if token in self._stops:
            text, last = self._text.flush(), True
        else:
            text = self._text.step(token) + (self._text.flush() if last else "")
        if last:
            self.result = self._generator.result(self.prompt, self.token_ids)
            self._steps.close()
        return Token(token, text)

    def close(self) -> None:
        self._steps.close()


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


MIN_TEMPERATURE = 1e-4  # below it a draw is the argmax, and logits / temperature can overflow


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, seed: int | None = None) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise PredictError(f"generate(): max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not temperature > 0:
        raise PredictError(f"generate(): temperature must be > 0, got {temperature!r} (for greedy decoding leave do_sample off)")
    if temperature < MIN_TEMPERATURE:  # logits / temperature must stay finite for the softmax
        raise PredictError(
            f"generate(): temperature {temperature!r} is under {MIN_TEMPERATURE:g}, where sampling is the argmax anyway; "
            "leave do_sample off for greedy decoding"
        )
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise PredictError(f"generate(): seed must be an integer of 0 or more, got {seed!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise PredictError(f"generate(): top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise PredictError(f"generate(): top_p must be in (0, 1], got {top_p!r}")


class Generator:
    """The KV-cache decoding loop over one onnxruntime session.

    `num_heads` is the number of key/value heads, the past's dimension 1: with grouped-query
    attention (Llama, SmolLM2...) fewer than the query heads. It is read from the graph's past
    input shape, else the manifest's num_key_value_heads, else its num_heads."""

    def __init__(self, session: Any, tokenizer: Tokenizer, spec: dict[str, Any], max_length: int):
        self.session = session
        self.tokenizer = tokenizer
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.max_length = max_length  # the model's positions: prompt + continuation must fit
        self.eos_id = int(spec["eos_id"])
        self.pad_id = int(spec.get("pad_id") if spec.get("pad_id") is not None else self.eos_id)
        self.bos_id = spec.get("bos_id")
        # Besides eos, the ids that end a turn (a chat model's end-of-turn token); eos is read
        # from self.eos_id at each call, so a caller may switch it off (the bench does).
        self.stop_ids = tuple(int(x) for x in spec.get("stop_ids") or () if int(x) != self.eos_id)
        self.chat_template: str | None = spec.get("chat_template")
        self.special_tokens = {
            k: v
            for k, v in {
                "bos_token": spec.get("bos_token") or self._token_text(self.bos_id),
                "eos_token": spec.get("eos_token") or self._token_text(self.eos_id),
            }.items()
            if v is not None
        }
        self._template: Any = None  # compiled on the first chat
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
        shape = inputs[self.past_inputs[0]].shape  # [batch, kv heads, past, head_dim]; symbolic dims are str or None
        graph_heads = shape[1] if len(shape) == 4 and isinstance(shape[1], int) and shape[1] > 0 else None
        kv_heads = spec.get("num_key_value_heads")
        if graph_heads is not None and kv_heads is not None and graph_heads != kv_heads:
            raise BundleError(
                f"the model's past has {graph_heads} key/value heads but the manifest's generation.num_key_value_heads says {kv_heads}; "
                "re-export the bundle"
            )
        heads = graph_heads or kv_heads or spec.get("num_heads")
        graph_dim = shape[3] if len(shape) == 4 and isinstance(shape[3], int) and shape[3] > 0 else None
        head_dim = graph_dim or spec.get("head_dim")
        if not heads or not head_dim:
            raise BundleError(
                "the model's past does not say its key/value heads and head size, and the manifest's generation section lacks "
                f"{'num_key_value_heads' if not heads else 'head_dim'}; re-export the bundle"
            )
        self.num_heads = int(heads)  # key/value heads: what the empty past is sized by
        self.num_kv_heads = self.num_heads
        self.head_dim = int(head_dim)
        self.past_dtype = np.float16 if "float16" in inputs[self.past_inputs[0]].type else np.float32

    def _token_text(self, token_id: Any) -> str | None:
        return None if token_id is None else self.tokenizer.id_to_token(int(token_id))

    def stop_set(self) -> set[int]:
        """The ids that end a generation: eos and the manifest's stop_ids."""
        return {self.eos_id, *self.stop_ids}

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
        if not isinstance(text, str):
            raise PredictError(f"generate(): a prompt is a {type(text).__name__}, not a string")
        check_unicode(text, "generate(): the prompt")
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

    def _steps_left(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, seed: int | None
    ) -> int:
        """Check the settings and the prompts' room; how many tokens may be generated."""
        check_sampling(max_new_tokens, temperature, top_k, top_p, seed)
        longest = max(len(p) for p in prompts)
        if longest >= self.max_length:
            raise PredictError(f"generate(): a prompt of {longest} tokens leaves no room in the model's {self.max_length} positions")
        return min(max_new_tokens, self.max_length - longest)

    def _steps(
        self,
        prompts: list[list[int]],
        steps: int,
        do_sample: bool,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
        use_cache: bool,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
        """The decoding loop, one step at a time: (the token chosen for each row, which rows
        were still running, whether this is the last step). Finished rows idle on pad."""
        stops = np.array(sorted(self.stop_set()), dtype=np.int64)
        rng = np.random.default_rng(seed) if do_sample else None
        ids, mask = self.left_pad(prompts)
        done = np.zeros(len(prompts), dtype=bool)
        logits, past = self.forward(ids, mask)
        for step in range(steps):
            chosen = np.array([next_token(logits[i, -1], rng, do_sample, temperature, top_k, top_p) for i in range(len(prompts))])
            chosen = np.where(done, self.pad_id, chosen)  # finished rows idle on pad until all are done
            running = ~done
            done = done | np.isin(chosen, stops)
            last = bool(done.all()) or step == steps - 1
            yield chosen, running, last
            if last:
                return
            ids = np.concatenate([ids, chosen[:, None]], axis=1)
            mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=np.int64)], axis=1)
            if use_cache:
                logits, past = self.forward(chosen[:, None], mask, past)
            else:
                logits, _ = self.forward(ids, mask)

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
        steps = self._steps_left(prompts, max_new_tokens, temperature, top_k, top_p, seed)
        out: list[list[int]] = [[] for _ in prompts]
        for chosen, running, _ in self._steps(prompts, steps, do_sample, temperature, top_k, top_p, seed, use_cache):
            for i in np.flatnonzero(running):
                out[i].append(int(chosen[i]))
        return out

    def result(self, prompt: str, row: list[int]) -> Generation:
        """The Generation of a prompt from its continuation's ids (the stop token left out of the text)."""
        stop = bool(row) and row[-1] in self.stop_set()
        body = row[:-1] if stop else row
        return Generation(prompt, self.tokenizer.decode(body, skip_special_tokens=True), list(row), stop, row[-1] if stop else None)

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
        top_k and top_p (nucleus) from a numpy RNG seeded with `seed`. Stops at eos or a stop id."""
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise PredictError("generate() takes a prompt string or a non-empty list of them")
        rows = self.generate_ids([self.encode(t) for t in texts], max_new_tokens, do_sample, temperature, top_k, top_p, seed, use_cache)
        return [self.result(text, row) for text, row in zip(texts, rows)]

    # ---- chat and streaming ------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """A conversation rendered by the model's chat template (what chat() continues)."""
        if not self.chat_template:
            raise PredictError(
                "chat(): this bundle has no chat template (manifest generation.chat_template); "
                "use generate(prompt) with a prompt in the model's own format"
            )
        conversation = check_messages(messages)
        if self._template is None:
            self._template = compile_template(self.chat_template, "manifest.json")
        return render(self._template, conversation, add_generation_prompt, self.special_tokens)

    def chat(
        self,
        messages: Sequence[Any],
        max_new_tokens: int = 20,
        add_generation_prompt: bool = True,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> list[Generation]:
        """The model's reply to a conversation ([{"role": ..., "content": ...}, ...]), or to each
        of a list of conversations (one left-padded batch): one Generation each, whose prompt is
        the rendered conversation. Stops at eos or a stop id (the end-of-turn token)."""
        if isinstance(messages, (list, tuple)) and messages and all(isinstance(c, (list, tuple)) for c in messages):
            conversations = list(messages)
        else:
            conversations = [messages]
        prompts = [self.chat_prompt(c, add_generation_prompt) for c in conversations]
        return self.generate(prompts, max_new_tokens, do_sample, temperature, top_k, top_p, seed, use_cache)

    def stream(
        self,
        prompt: str | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        use_cache: bool = True,
        messages: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> Stream:
        """Continue one prompt (or reply to one conversation, `messages=`) token by token:
        iterate the returned Stream for each Token as it is made; its `result` is then the
        Generation, the same tokens as generate() / chat() make with these settings. Bad
        settings or input raise here, before any model call."""
        if (prompt is None) == (messages is None):
            raise PredictError("stream() takes a prompt string or messages=[...] (one of them)")
        if messages is not None:
            prompt = self.chat_prompt(messages, add_generation_prompt)
        if not isinstance(prompt, str):
            raise PredictError(f"stream() takes one prompt string, got {type(prompt).__name__}")
        ids = [self.encode(prompt)]
        steps = self._steps_left(ids, max_new_tokens, temperature, top_k, top_p, seed)
        return Stream(self, prompt, self._steps(ids, steps, do_sample, temperature, top_k, top_p, seed, use_cache))

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
    """The head of text-generation bundles: generate(), chat() and stream() run the KV-cache
    loop; predict() is refused."""

    name = "text-generation"
    encoder = False  # the decoder takes a cache too: predict, logits and encode are refused
    serves = True  # POST /v1/generate (JSON or server-sent events)
    hint = "use generate(prompt)"
    command = "generate"
    commands = (GENERATE, CHAT)
    routes = (GENERATE_ROUTE,)
    serve_options = (MAX_NEW_TOKENS,)

    @staticmethod
    def check_manifest(data: dict[str, Any], where: str) -> dict[str, Any]:
        """A language model has no labels, but needs its cache layout; a chat model's template,
        special tokens and stop ids are checked when present."""
        generation = data.get("generation")
        if not (
            isinstance(generation, dict) and isinstance(generation.get("past_inputs"), list) and isinstance(generation.get("eos_id"), int)
        ):
            raise BundleError(f"{where}: a text-generation bundle needs a 'generation' object with past_inputs and eos_id; re-export it")

        def bad(key: str, expected: str) -> BundleError:
            return BundleError(f"{where}: field 'generation.{key}' must be {expected}, got {generation[key]!r:.80}")

        for key in ("chat_template", "bos_token", "eos_token"):
            if generation.get(key) is not None and not isinstance(generation[key], str):
                raise bad(key, "a string")
        if generation.get("chat_template") is not None and not generation["chat_template"].strip():
            raise bad("chat_template", "a Jinja template (or absent)")
        stop_ids = generation.get("stop_ids")
        if stop_ids is not None and not (
            isinstance(stop_ids, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in stop_ids)
        ):
            raise bad("stop_ids", "a list of token ids (non-negative integers)")
        for key in ("num_key_value_heads", "num_heads", "head_dim"):
            value = generation.get(key)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise bad(key, "a positive integer")
        return {"generation": dict(generation)}

    @staticmethod
    def describe(manifest: Any) -> list[str]:
        """The lines `ftexport-runtime info` prints for such a bundle."""
        g = manifest.generation or {}
        kv = g.get("num_key_value_heads")
        lines = [
            f"decoder   {g.get('num_layers')} layers x {g.get('num_heads')} heads with KV cache"
            + (f" ({kv} key/value heads)" if kv and kv != g.get("num_heads") else "")
            + f", eos id {g.get('eos_id')}"
        ]
        if g.get("chat_template") or g.get("stop_ids"):
            lines.append(f"chat      {'template' if g.get('chat_template') else 'no template'}, stop ids {g.get('stop_ids') or []}")
        return lines

    def __init__(self, predictor: Any):
        if predictor.session is None:  # a TensorRT engine: encoders only
            raise BundleError(f"{predictor.bundle.root}: a {self.name} model runs on ONNX Runtime only; use backend 'cpu' or 'cuda'")
        # its own tokenizer: the loop encodes prompts unpadded and untruncated
        m = predictor.manifest
        self.generator = Generator(predictor.session, predictor._load_tokenizer(), m.generation or {}, predictor.max_length)

    def info(self) -> dict[str, Any]:
        """What Predictor.metadata() adds for such a bundle."""
        g = self.generator
        return {"chat": bool(g.chat_template), "eos_id": g.eos_id, "stop_ids": [g.eos_id, *g.stop_ids]}

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

    def chat(self, p: Any, messages: Sequence[Any], **settings: Any) -> list[Generation]:
        return self.generator.chat(messages, **settings)

    def stream(self, p: Any, prompt: str | None = None, **settings: Any) -> Stream:
        return self.generator.stream(prompt, **settings)
