"""Predictor: what applications embed, the composition of a bundle, an engine that runs its
model (engines/) and the head of its task (heads/). Validation and benchmarks of the ONNX
backends use this same class, so what ftexport measures is what ships.

Thread safety: one Predictor may be shared by threads. onnxruntime's `InferenceSession.run`
is thread-safe, and the tokenizer is configured once at load and only read afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .bundle import Bundle, Variant
from .engines import Engine, get_backend
from .engines.ort import TENSORRT, OrtEngine, check_available, tensorrt_options, trt_cache_root
from .errors import BackendUnavailable, BundleError, PredictError, check_unicode
from .heads import get_head, refusal
from .heads.entities import Entities
from .tokenizer import ENCODER_INPUTS, encoder_feeds, load_tokenizer


def _ort_rewrite(variant: Variant) -> bool:
    """Whether a variant is ONNX Runtime's own graph (a fused O2-O4 graph, or the CPU rewrite of
    dynamic int8): contrib operators that TensorRT's parser does not read."""
    d = variant.details
    return bool(d.get("ort_graph")) or d.get("optimization_level") in ("O2", "O3", "O4")


def default_variant(manifest: Any, backend: Any) -> str | None:
    """The variant a backend runs when none is named: the manifest's choice (bundle.variant), except
    on ONNX Runtime's TensorRT provider, where a choice TensorRT cannot read (bundles written before
    ftexport stopped making the O4 graph TensorRT's default) gives way to fp32."""
    if backend.provider != TENSORRT:
        return None
    name = manifest.backend_defaults.get(backend.defaults_key) or manifest.default_variant
    chosen = manifest.variants.get(name)
    if chosen is not None and _ort_rewrite(chosen) and "fp32" in manifest.variants:
        return "fp32"
    return None


class Predictor:
    """Run a bundle's model on texts.

    >>> p = Predictor.from_bundle("runs/quickstart/bundle")
    >>> p.predict(["a wonderful, moving film"])[0].label
    'positive'

    A token-classification (NER) bundle answers with entity spans instead:

    >>> Predictor.from_bundle("runs/ner/bundle").predict(["John lives in Berlin"])[0].as_dict()
    {'entities': [{'entity_group': 'PER', 'score': 0.99, 'word': 'John', 'start': 0, 'end': 4}, ...]}

    A feature-extraction bundle makes sentence embeddings (`embed`), a text-generation bundle
    continues prompts and chats (`generate`, `chat`, `stream`); a method the bundle's task
    lacks is refused with one line saying what to call instead.
    """

    def __init__(
        self,
        bundle: Bundle,
        variant: str | None = None,
        backend: str = "cpu",
        threads: int | None = None,
        max_batch: int = 64,
        session_options: ort.SessionOptions | None = None,
        fallback: str | None = None,
        verify_loaded: bool = False,
        trt_cache: str | os.PathLike[str] | None = None,
    ):
        """Load `variant` of an opened bundle. `verify_loaded` checks the sha256 of each file
        as it is read and loads those very bytes (from_bundle turns it on). `trt_cache`: see
        from_bundle."""
        if max_batch < 1:
            raise PredictError(f"max_batch must be at least 1, got {max_batch}")
        if fallback not in (None, "cuda"):
            raise PredictError(f"fallback must be None or 'cuda', got {fallback!r}")
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.backend = get_backend(backend)
        self.max_batch = max_batch
        self.labels = list(self.manifest.labels)
        self.max_length = self.manifest.max_length
        self.engine = None  # an EngineRunner when a TensorRT engine of the bundle runs
        self.fallback_reason: str | None = None  # why a TensorRT engine was replaced by ORT CUDA
        self._verify_loaded = verify_loaded
        head = get_head(self.manifest.task)
        if self.backend.name == "tensorrt" and self.manifest.engines:
            variant = self._load_engine(variant, fallback)
            if self.engine is not None:
                self._runner: Engine = self.engine
                self.head = head(self)
                self.generator = getattr(self.head, "generator", None)
                return
        self.variant: Variant = bundle.variant(variant or default_variant(self.manifest, self.backend), self.backend.defaults_key)
        self.tokenizer = self._load_tokenizer()
        self.threads = threads
        options = None
        if self.backend.provider == TENSORRT:  # ONNX Runtime's TensorRT provider: caches and one profile for every shape
            check_available(self.backend)  # before any folder is made for it
            options = tensorrt_options(
                trt_cache_root(trt_cache),
                self._model_key(),
                list(self.manifest.inputs) if head.encoder else None,
                self.max_batch,
                self.max_length,
            )
        runner = OrtEngine.from_bundle(
            bundle,
            self.variant,
            self.backend,
            session_options,
            threads,
            verify=verify_loaded,
            io_binding=head.encoder and self.backend.name != "cpu",
            provider_options=options,
        )
        self._runner = runner
        self.session = runner.session
        unknown = set(runner.input_types) - set(ENCODER_INPUTS)
        if head.encoder and (unknown or "input_ids" not in runner.input_types):
            raise BundleError(
                f"{bundle.path_of(self.variant.file)}: model inputs {sorted(runner.input_types)} do not match what the tokenizer gives "
                "(input_ids, attention_mask, token_type_ids); re-export the model"
            )
        self.head = head(self)  # a decoder's head builds its KV-cache loop over the session here
        self.generator = getattr(self.head, "generator", None)

    def _model_key(self) -> str:
        """A folder name for the engines ONNX Runtime's TensorRT provider builds from this
        variant's file: its sha256 (from the manifest) and name, so bundles never share one."""
        digest = self.manifest.files.get(self.variant.file, "")[:16] or "unhashed"
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{self.manifest.name}-{self.variant.name}")
        return f"{name}-{digest}"

    def _load_engine(self, name: str | None, fallback: str | None) -> str | None:
        """Load the bundle's TensorRT engine `name` (default: fp16, else the first one). With
        fallback="cuda", an engine this machine cannot run (no TensorRT, another GPU or
        TensorRT version) gives way to its ONNX model on ONNX Runtime CUDA; the name of that
        variant is returned. Without it, that raises BackendUnavailable naming the fix."""
        from .engines.tensorrt import EngineRunner, current_fingerprint, fingerprint_mismatch
        from .engines.tensorrt import refusal as engine_refusal

        engines = self.manifest.engines
        name = name or ("fp16" if "fp16" in engines else next(iter(engines)))
        if name not in engines:
            raise BundleError(f"{self.bundle.root}: no TensorRT engine {name!r} in this bundle (it has: {', '.join(engines)})")
        spec = engines[name]
        try:
            problems = fingerprint_mismatch(spec.fingerprint, current_fingerprint(driver=False))
            if problems:
                raise BackendUnavailable(engine_refusal(spec, str(self.bundle.root), problems))
            data = self.bundle.read(spec.file, self._verify_loaded)
            output = self.manifest.outputs[0] if self.manifest.outputs else "logits"
            self.engine = EngineRunner(data, spec, output)
        except BackendUnavailable as e:
            if fallback != "cuda":
                raise
            self.fallback_reason = str(e)
            self.backend = get_backend("cuda")
            return spec.source
        self.variant = Variant(spec.name, spec.file, spec.precision, details={"engine": spec.to_json()})
        self.max_batch = min(self.max_batch, spec.profile.batch[2])
        if spec.on_longer == "truncate":
            self.max_length = min(self.max_length, spec.profile.seq[2])
        self.tokenizer = self._load_tokenizer()
        self.threads = None
        self.session = None
        return name

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        variant: str | None = None,
        backend: str = "cpu",
        threads: int | None = None,
        max_batch: int = 64,
        session_options: ort.SessionOptions | None = None,
        verify: str = "all",
        fallback: str | None = None,
        trt_cache: str | os.PathLike[str] | None = None,
    ) -> Predictor:
        """Open and verify a bundle (directory or .tar.gz) and load one of its variants.

        variant: a name from the manifest ("fp32", "int8", ...); default: the manifest's choice.
        backend: "cpu", "cuda", "tensorrt" or "ort-tensorrt"; a GPU backend that would fall back
            to CPU raises. "ort-tensorrt" is ONNX Runtime's TensorRT provider even when the
            bundle holds TensorRT engines.
        threads: ONNX Runtime intra-op threads (default: onnxruntime's choice, one per core).
        max_batch: larger inputs are split into batches of this size.
        verify: "all" checks the sha256 of every file of the bundle: each file that is loaded
            as it is read (the checked bytes are the ones loaded; a model with external data is
            checked, then read by path), the others on a thread while the session is built;
            from_bundle returns only once all of them matched. Loading from bytes raises the
            peak memory at load by about the model file's size; the bytes are freed after.
            "used" checks only the files this Predictor loads (the variant's model and the
            tokenizer), for a faster start from a bundle that carries variants it does not load
            (or ship only what you load: `ftexport pack --variants int8`); "none" trusts the files.
        fallback: backend "tensorrt" runs the bundle's TensorRT engine (`variant` names the
            engine, e.g. "fp16" or "int8"); an engine built on another GPU or TensorRT version
            is refused, unless fallback="cuda", which runs the engine's ONNX model on ONNX
            Runtime CUDA instead (`fallback_reason` says why). A bundle without engines runs
            on ONNX Runtime's TensorRT provider.
        trt_cache: with ONNX Runtime's TensorRT provider, the folder for its engine and timing
            caches (default: $FTEXPORT_TRT_CACHE, else ~/.cache/ftexport/tensorrt), so a restart
            reuses the engines; one optimization profile covers batch 1..max_batch and 1..max_length
            tokens, so a new shape does not rebuild one. Its default variant is one TensorRT
            reads (the symmetric Q/DQ int8 or fp32), never ONNX Runtime's own fused graphs.
        """
        if verify not in ("used", "all", "none"):
            raise PredictError(f"verify must be 'used', 'all' or 'none', got {verify!r}")
        bundle = Bundle.open(path, verify="none")
        finish = None
        if verify == "all":  # what __init__ loads it checks as it reads; the rest is hashed meanwhile
            loaded = cls._loaded_files(bundle, variant, backend)
            finish = bundle.verify_in_background([f for f in bundle.manifest.files if f not in loaded])

        def every_file_checked() -> None:  # and any file the guess above named but __init__ did not read
            if finish is not None:
                finish()
                bundle.verify(bundle.unchecked())

        try:
            predictor = cls(
                bundle, variant, backend, threads, max_batch, session_options, fallback, verify_loaded=verify != "none", trt_cache=trt_cache
            )
        except Exception:
            try:
                every_file_checked()
            except BundleError as tampered:  # as when every file was hashed first: tampering is reported ahead of a load error
                raise tampered from None
            except Exception:  # noqa: BLE001, S110
                pass  # a file that cannot be read says less than the load error
            raise
        every_file_checked()
        return predictor

    @staticmethod
    def _loaded_files(bundle: Bundle, variant: str | None, backend: str) -> set[str]:
        """The files a Predictor for (variant, backend) will most likely read: its model (with
        external data), or its TensorRT engines, and the tokenizer. A wrong guess costs time,
        not safety: a file read is checked as it is read, and from_bundle checks whatever else
        is left unchecked before it returns."""
        m = bundle.manifest
        files = {m.tokenizer["file"]}
        try:
            chosen_backend = get_backend(backend)
            if chosen_backend.name == "tensorrt" and m.engines:
                files |= {e.file for e in m.engines.values() if e.name == (variant or e.name)}
            else:
                chosen = bundle.variant(variant or default_variant(m, chosen_backend), chosen_backend.defaults_key)
                files |= {chosen.file, *chosen.extra_files}
        except (BundleError, BackendUnavailable):
            pass  # __init__ raises the same error with its own message
        return files

    @property
    def providers(self) -> list[str]:
        return self._runner.providers

    @property
    def _io_binding(self) -> bool:
        """Whether run() binds inputs and outputs on the GPU (ONNX Runtime on cuda or tensorrt)."""
        return bool(getattr(self._runner, "io_binding", False))

    def _load_tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.bundle, self.max_length, self._verify_loaded)

    def _head_method(self, method: str) -> Callable[..., Any]:
        """The head's `method`, or a one-line PredictError when this bundle's task has none."""
        fn = getattr(self.head, method, None)
        if fn is None:
            raise PredictError(refusal(method, self.head))
        return fn

    def _need_encoder(self) -> None:
        if not self.head.encoder:
            raise PredictError(refusal("predict", self.head))

    def _texts_then_refusal(self, method: str, texts: Any) -> Callable[..., Any]:
        """The head's `method`; when it has none, the texts are judged first (as for every
        bundle), then the call is refused with one line saying what this bundle does."""
        fn = getattr(self.head, method, None)
        if fn is None:
            self._check_texts(texts, method)
            raise PredictError(refusal(method, self.head))
        return fn

    @staticmethod
    def _check_texts(texts: Sequence[str], method: str = "predict") -> list[str]:
        if isinstance(texts, str):
            raise PredictError(f"{method}() takes a list of texts, got a single string; wrap it in a list")
        if isinstance(texts, (bytes, bytearray)):
            raise PredictError(f"{method}() takes a list of texts, got {type(texts).__name__}; decode it and wrap it in a list")
        try:
            texts = list(texts)
        except TypeError:
            raise PredictError(f"{method}() takes a list of texts, got a {type(texts).__name__}") from None
        if not texts:
            raise PredictError(f"{method}() got an empty list of texts; pass at least one string")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise PredictError(f"{method}(): text #{i} is a {type(t).__name__}, not a string")
            check_unicode(t, f"{method}(): text #{i}")
        return texts

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
    ) -> list[Any]:
        """text-generation bundles: continue each prompt (greedy, or sampled with temperature,
        top-k and top-p from a numpy RNG seeded with `seed`); see ftexport_runtime.heads.generate."""
        return self._head_method("generate")(self, prompts, max_new_tokens, do_sample, temperature, top_k, top_p, seed, use_cache)

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
    ) -> list[Any]:
        """text-generation bundles with a chat template: the model's reply to a conversation
        ([{"role": ..., "content": ...}, ...]), or to each of a list of conversations; one
        Generation each (its prompt is the rendered conversation). Stops at eos or a stop id."""
        return self._head_method("chat")(
            self,
            messages,
            max_new_tokens=max_new_tokens,
            add_generation_prompt=add_generation_prompt,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            use_cache=use_cache,
        )

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
        messages: Sequence[Any] | None = None,
        add_generation_prompt: bool = True,
    ) -> Any:
        """text-generation bundles: one prompt (or conversation, `messages=`) token by token.
        Iterate the returned Stream for Tokens (id, the text it adds) as they are made; then
        `stream.result` is the Generation, the same tokens as generate() / chat() make."""
        return self._head_method("stream")(
            self,
            prompt,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            use_cache=use_cache,
            messages=messages,
            add_generation_prompt=add_generation_prompt,
        )

    def embed(self, texts: Sequence[str], batch_size: int | None = None, return_token_counts: bool = False) -> Any:
        """feature-extraction bundles: the sentence embedding of each text, float32 [n, dimension]
        (pooled and, as the bundle says, L2-normalized by the model). Texts longer than
        max_length tokens are cut; `batch_size` texts (default max_batch) per model call.
        return_token_counts=True: also the number of tokens of each text (after the cut)."""
        return self._texts_then_refusal("embed", texts)(self, texts, batch_size, return_token_counts)

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Tokenize a batch into the model's input arrays (padded to the longest text)."""
        self._need_encoder()
        return self._feeds(self.tokenizer.encode_batch(self._check_texts(texts)))

    def _feeds(self, encs: list[Any]) -> dict[str, np.ndarray]:
        return encoder_feeds(encs, self._runner.input_types)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run the model on already-encoded inputs; returns float32 logits."""
        return self._runner.run(feeds)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        texts = self._check_texts(texts)
        parts = [self.run(self.encode(texts[i : i + self.max_batch])) for i in range(0, len(texts), self.max_batch)]
        return np.concatenate(parts, axis=0)

    def predict(self, texts: Sequence[str]) -> list[Any]:
        """Label and score for each text, in order (a Prediction each); for a
        token-classification bundle, the entities of each text (Entities, aggregation "simple")."""
        return self._texts_then_refusal("predict", texts)(self, texts)

    # ---- token classification ------------------------------------------------------------

    def entities(self, texts: Sequence[str], aggregation: str = "simple", batch_size: int | None = None) -> list[Entities]:
        """Entity spans of each text with character offsets into it. Texts longer than the
        bundle's max_length tokens are cut: entities past the cut are not found."""
        return self._head_method("entities")(self, texts, aggregation, batch_size)

    def entities_from_words(self, words: Sequence[Sequence[str]], aggregation: str = "simple") -> list[Entities]:
        """Entities of pre-tokenized sentences (CoNLL style); offsets index the sentence's
        words joined by single spaces."""
        return self._head_method("entities_from_words")(self, words, aggregation)

    def word_logits(self, words: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Logits at each word's first sub-token, one [kept words, labels] array per sentence
        (words cut off by max_length are absent): what validation compares with PyTorch."""
        return self._head_method("word_logits")(self, words)

    def predict_batch(self, texts: Sequence[str], batch_size: int | None = None) -> list[Any]:
        """Label and score for each of many texts, in order, run `batch_size` texts per model call.

        batch_size defaults to `max_batch`; `predict` is `predict_batch` with the default. Each
        model call pads to the longest text of its chunk, so sorting texts by length first
        saves work on mixed lengths. Safe to call from many threads on one Predictor.

        A dynamically quantized int8 model picks its activation scales per call, over every
        text of the chunk and its padding: a text's scores move with the company it is
        batched with, and a borderline label can flip (2% of the SST-2 test texts with the
        quickstart bundle). fp32 and statically quantized models do not depend on the chunk.
        """
        size = self.max_batch if batch_size is None else batch_size
        if not isinstance(size, int) or size < 1:
            raise PredictError(f"predict_batch(): batch_size must be a positive integer, got {batch_size!r}")
        fn = getattr(self.head, "predict_batch", None)
        if fn is None:
            self._check_texts(texts)
            raise PredictError(refusal("predict", self.head))
        return fn(self, texts, size)

    def metadata(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m.name,
            "task": m.task,
            "labels": m.labels,
            "max_length": m.max_length,
            "variant": self.variant.name,
            "precision": self.variant.precision,
            "backend": self.backend.name,
            "providers": self.providers,
            **({"fallback_reason": self.fallback_reason} if self.fallback_reason else {}),
            **(self.head.info() if hasattr(self.head, "info") else {}),  # e.g. an embedding's dimension
        }
