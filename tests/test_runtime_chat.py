"""The generate head's chat and streaming: chat templates rendered as transformers renders them
(jinja2, imported only when a chat is rendered), stop ids, key/value heads for grouped-query
attention, Generator.stream equal to generate token for token with incremental decoding, and
the `generate --stream` and `chat` commands. The decoder is the tiny GPT-2 of test_clm.py, made
by the toolchain up to export; chat fields are added to a copy of its manifest."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ftexport_runtime import Bundle, BundleError, PredictError, Predictor
from ftexport_runtime.bundle import write_manifest
from ftexport_runtime.heads.generate import Generator, TextStream

# A small chat template in the style of the Hub's (block tags on their own lines: trim_blocks
# and lstrip_blocks must be on, as transformers sets them, for the lines to come out right).
TEMPLATE = """{% for message in messages %}
    {% if message['role'] == 'system' %}
{{ message['content'] }}
    {% elif message['role'] == 'user' %}
q: {{ message['content'] }}
    {% elif message['role'] == 'assistant' %}
a: {{ message['content'] }}{{ eos_token }}
    {% else %}
{{ raise_exception('roles are system, user and assistant, not ' + message['role']) }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
a:
{%- endif %}"""

CONVERSATIONS = [
    [{"role": "user", "content": "the film"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a story"}],
    [{"role": "user", "content": "the"}, {"role": "assistant", "content": "film"}, {"role": "user", "content": "is"}],
]

_BUILT: dict[str, Path] = {}


def build_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 bundle (export stage of the toolchain), built once per session."""
    if "plain" not in _BUILT:
        from helpers import write_recipe
        from test_clm import lm_recipe

        from ftexport.pipeline import run
        from ftexport.recipe import load_recipe

        tmp = tmp_path_factory.mktemp("decoder")
        recipe = lm_recipe(tmp)
        recipe["training"]["epochs"] = 2  # a little training: what it says does not matter here
        result = run(load_recipe(write_recipe(tmp / "recipe.yaml", recipe)), stop_after="export")
        _BUILT["plain"] = result.root / "onnx"
    return _BUILT["plain"]


def with_generation(src: Path, dst: Path, **fields) -> Path:
    """A copy of a decoder bundle whose manifest's generation section has `fields` (re-hashed)."""
    shutil.copytree(src, dst)
    manifest = Bundle.open(dst).manifest
    manifest.generation = {**(manifest.generation or {}), **fields}
    write_manifest(dst, manifest)
    return dst


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    return build_decoder(tmp_path_factory)


@pytest.fixture(scope="module")
def chat_bundle(decoder, tmp_path_factory) -> Path:
    return with_generation(decoder, tmp_path_factory.mktemp("chat") / "bundle", chat_template=TEMPLATE, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def p(chat_bundle) -> Predictor:
    return Predictor.from_bundle(chat_bundle)


def hf_tokenizer(bundle: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(bundle / "tokenizer.json"), bos_token="<|endoftext|>", eos_token="<|endoftext|>")


# --- chat templates ----------------------------------------------------------------------------


def test_the_template_renders_as_transformers_renders_it(p, chat_bundle):
    tok = hf_tokenizer(chat_bundle)
    for conversation in CONVERSATIONS:
        for add in (True, False):
            ours = p.generator.chat_prompt(conversation, add_generation_prompt=add)
            theirs = tok.apply_chat_template(conversation, chat_template=TEMPLATE, tokenize=False, add_generation_prompt=add)
            assert ours == theirs, (conversation, add)
            ids = tok.apply_chat_template(conversation, chat_template=TEMPLATE, tokenize=True, add_generation_prompt=add)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # transformers 5 answers a BatchEncoding
            assert p.generator.encode(ours) == list(ids)
    assert p.generator.chat_prompt(CONVERSATIONS[2]) == "q: the\na: film<|endoftext|>\nq: is\na:"


def test_chat_replies_as_generate_continues_the_rendered_prompt(p):
    replies = p.chat(CONVERSATIONS[:2], max_new_tokens=6)
    for conversation, reply in zip(CONVERSATIONS, replies):
        assert reply.prompt == p.generator.chat_prompt(conversation)
        alone = p.chat(conversation, max_new_tokens=6)
        assert len(alone) == 1 and alone[0].token_ids == reply.token_ids
        assert p.generate(reply.prompt, max_new_tokens=6)[0].token_ids == reply.token_ids
    sampled = dict(max_new_tokens=6, do_sample=True, temperature=1.5, top_k=20, seed=4)
    assert p.chat(CONVERSATIONS[0], **sampled)[0].token_ids == p.generate(replies[0].prompt, **sampled)[0].token_ids


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ("hello", r"^chat\(\) takes a non-empty list of \{'role': \.\.\., 'content': \.\.\.\} messages, got str$"),
        ({"role": "user", "content": "hi"}, r"got dict$"),
        ([], r"^chat\(\) got an empty conversation"),
        ([{"role": "user"}], r"^chat\(\): message #0 has no 'content'$"),
        ([{"content": "hi"}], r"^chat\(\): message #0 has no 'role'$"),
        ([{"role": "user", "content": 3}], r"^chat\(\): message #0's 'content' is a int, not a string$"),
        ([{"role": "user", "content": "hi"}, "hi"], r"^chat\(\): message #1 is a str, not a \{'role'"),
        ([{"role": "", "content": "hi"}], r"message #0's 'role' is empty"),
        ([{"role": "user", "content": "\ud800"}], r"message #0's content is not valid Unicode \(a lone surrogate '\\ud800'"),
        (
            [{"role": "tool", "content": "hi"}],
            r"^chat\(\): the model's chat template refused these messages \(roles are system, user and assistant, not tool\)$",
        ),
    ],
)
def test_bad_messages_are_refused_in_one_line(p, messages, message):
    with pytest.raises(PredictError, match=message):
        p.chat(messages)
    with pytest.raises(PredictError, match=message):
        p.stream(messages=messages)


def test_chat_needs_a_template_and_a_decoder(decoder, bundle):
    plain = Predictor.from_bundle(decoder)
    with pytest.raises(
        PredictError, match=r"^chat\(\): this bundle has no chat template \(manifest generation\.chat_template\); use generate"
    ):
        plain.chat(CONVERSATIONS[0])
    classifier = Predictor.from_bundle(bundle)
    for method, call in (("chat", lambda: classifier.chat(CONVERSATIONS[0])), ("stream", lambda: classifier.stream("the film"))):
        with pytest.raises(PredictError) as e:
            call()
        assert str(e.value) == f"{method}(): this bundle's task is text-classification; use predict()"
    with pytest.raises(PredictError, match=r"stream\(\) takes a prompt string or messages=\[\.\.\.\] \(one of them\)"):
        plain.stream()
    with pytest.raises(PredictError, match=r"stream\(\) takes one prompt string, got list"):
        plain.stream(["the", "film"])


def test_jinja2_is_imported_only_to_render_a_chat(chat_bundle):
    code = (
        "import sys\n"
        "from ftexport_runtime import Predictor\n"
        f"p = Predictor.from_bundle({str(chat_bundle)!r})\n"
        "p.generate('the film', max_new_tokens=2)\n"
        "assert 'jinja2' not in sys.modules, 'imported before any chat'\n"
        "p.chat([{'role': 'user', 'content': 'the film'}], max_new_tokens=2)\n"
        "assert 'jinja2' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- stop ids ----------------------------------------------------------------------------------


def _first_new(ids: list[int], eos: int) -> int:
    """The position of the first token that appears for the first time (not at 0, not eos)."""
    return next(k for k in range(1, len(ids)) if ids[k] not in ids[:k] and ids[k] != eos)


def test_generation_stops_at_a_stop_id(decoder, tmp_path):
    plain = Predictor.from_bundle(decoder)
    prompts = ["the film is", "the story"]
    free = plain.generate(prompts, max_new_tokens=12)
    k = _first_new(free[0].token_ids, plain.generator.eos_id)
    stop = free[0].token_ids[k]
    stopped = Predictor.from_bundle(with_generation(decoder, tmp_path / "b", stop_ids=[stop]))
    assert stopped.metadata()["stop_ids"] == [plain.generator.eos_id, stop]
    results = stopped.generate(prompts, max_new_tokens=12)
    g = results[0]
    assert g.token_ids == free[0].token_ids[: k + 1] and g.stopped_at_eos and g.stop_id == stop
    assert g.text == plain.generator.tokenizer.decode(free[0].token_ids[:k], skip_special_tokens=True)  # the stop token is not text
    assert set(g.as_dict()) == {"prompt", "text", "token_ids", "stopped_at_eos"}  # as before stop ids
    # the other row of the batch stops at its own first stop (or eos), or runs to the end
    row = free[1].token_ids
    cut = next((i for i, t in enumerate(row) if t in (stop, plain.generator.eos_id)), None)
    assert results[1].token_ids == (row if cut is None else row[: cut + 1])
    # one prompt at a time, streamed: the same
    s = stopped.stream(prompts[0], max_new_tokens=12)
    assert [t.id for t in s] == g.token_ids and s.result == g


def test_eos_alone_still_reports_no_stop_id_when_generation_runs_out(decoder):
    g = Predictor.from_bundle(decoder).generate("the film is", max_new_tokens=2)[0]
    assert len(g.token_ids) <= 2 and (g.stop_id is None) == (not g.stopped_at_eos)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"stop_ids": "7"}, r"field 'generation\.stop_ids' must be a list of token ids \(non-negative integers\), got '7'"),
        ({"stop_ids": [3, -1]}, r"field 'generation\.stop_ids' must be a list of token ids"),
        ({"stop_ids": [True]}, r"field 'generation\.stop_ids'"),
        ({"chat_template": 5}, r"field 'generation\.chat_template' must be a string, got 5"),
        ({"chat_template": "  "}, r"field 'generation\.chat_template' must be a Jinja template"),
        ({"bos_token": 0}, r"field 'generation\.bos_token' must be a string"),
        ({"eos_token": ["</s>"]}, r"field 'generation\.eos_token' must be a string"),
        ({"num_key_value_heads": 0}, r"field 'generation\.num_key_value_heads' must be a positive integer, got 0"),
    ],
)
def test_chat_fields_of_the_manifest_are_checked(decoder, tmp_path, fields, message):
    b = tmp_path / "b"
    shutil.copytree(decoder, b)
    data = json.loads((b / "manifest.json").read_text())
    data["generation"].update(fields)
    (b / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message) as e:
        Bundle.open(b)
    assert "\n" not in str(e.value)


def test_a_broken_template_is_named_when_first_rendered(decoder, tmp_path):
    p = Predictor.from_bundle(with_generation(decoder, tmp_path / "b", chat_template="{% for m in messages %}{{ m['content'] }"))
    assert p.generate("the", max_new_tokens=1)  # the bundle loads and generates; the template is compiled on the first chat
    with pytest.raises(BundleError, match=r"generation\.chat_template is not a valid Jinja template \(line 1: .*\); re-export it"):
        p.chat(CONVERSATIONS[0])


# --- grouped-query attention: the past is sized by the key/value heads -------------------------


class FakeSession:
    """An ONNX Runtime session stand-in whose past has symbolic head and size dims."""

    def __init__(self, vocab: int):
        self.vocab, self.feeds = vocab, []
        past = [f"past_key_values.0.{k}" for k in ("key", "value")]
        self.inputs = [SimpleNamespace(name=n, shape=["batch", "seq"], type="tensor(int64)") for n in ("input_ids", "attention_mask")]
        self.inputs += [SimpleNamespace(name=n, shape=["batch", "kv_heads", "past", "head_dim"], type="tensor(float)") for n in past]

    def get_inputs(self):
        return self.inputs

    def get_outputs(self):
        return [SimpleNamespace(name=n) for n in ("logits", "present.0.key", "present.0.value")]

    def run(self, names, feeds):
        self.feeds.append({k: v.shape for k, v in feeds.items()})
        batch, new = feeds["input_ids"].shape
        past = feeds["past_key_values.0.key"]
        present = np.zeros((batch, past.shape[1], past.shape[2] + new, past.shape[3]), dtype=np.float32)
        logits = np.zeros((batch, new, self.vocab), dtype=np.float32)
        logits[..., 7] = 1.0  # never eos: the loop takes a second step
        return [logits, present, present]


def test_the_empty_past_has_the_key_value_heads(p, decoder, tmp_path):
    spec = {"past_inputs": ["past_key_values.0.key", "past_key_values.0.value"], "eos_id": 0, "num_heads": 9, "head_dim": 4}
    session = FakeSession(vocab=300)
    g = Generator(session, p.generator.tokenizer, {**spec, "num_key_value_heads": 3}, max_length=16)
    assert (g.num_heads, g.num_kv_heads, g.head_dim) == (3, 3, 4)
    g.generate_ids([[5, 6]], max_new_tokens=2)
    assert session.feeds[0]["past_key_values.0.key"] == (1, 3, 0, 4)  # prefill: an empty past of 3 key/value heads
    assert session.feeds[1]["past_key_values.0.key"] == (1, 3, 2, 4)
    assert Generator(FakeSession(300), p.generator.tokenizer, spec, max_length=16).num_heads == 9  # old manifests: num_heads
    with pytest.raises(BundleError, match=r"lacks head_dim; re-export the bundle"):
        Generator(FakeSession(300), p.generator.tokenizer, {k: v for k, v in spec.items() if k != "head_dim"}, max_length=16)
    # where the graph says how many heads its past has, the manifest must agree with it
    with pytest.raises(
        BundleError, match=r"the model's past has 2 key/value heads but the manifest's generation\.num_key_value_heads says 1"
    ):
        Predictor.from_bundle(with_generation(decoder, tmp_path / "b", num_key_value_heads=1))
    same = Predictor.from_bundle(with_generation(decoder, tmp_path / "c", num_key_value_heads=2))
    assert same.generate("the film is", max_new_tokens=6)[0].token_ids == p.generate("the film is", max_new_tokens=6)[0].token_ids


# --- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"max_new_tokens": 12},
        {"max_new_tokens": 12, "use_cache": False},
        {"max_new_tokens": 10, "do_sample": True, "temperature": 1.4, "top_k": 30, "seed": 7},
        {"max_new_tokens": 10, "do_sample": True, "top_p": 0.9, "seed": 1},
    ],
)
def test_stream_makes_the_tokens_generate_makes(p, settings):
    for prompt in ("the film is", "story", "the movie is very dull and"):
        whole = p.generate(prompt, **settings)[0]
        stream = p.stream(prompt, **settings)
        tokens = list(stream)
        assert [t.id for t in tokens] == whole.token_ids, prompt
        assert stream.result == whole
        assert "".join(t.text for t in tokens) == whole.text
    for conversation in CONVERSATIONS:
        reply = p.chat(conversation, **settings)[0]
        stream = p.stream(messages=conversation, **settings)
        assert [t.id for t in stream] == reply.token_ids and stream.result == reply


def test_a_stream_can_be_stopped_early(p):
    stream = p.stream("the film is", max_new_tokens=12)
    first = next(stream)
    stream.close()
    assert first.id == p.generate("the film is", max_new_tokens=12)[0].token_ids[0]
    assert list(stream) == [] and stream.result is None


def test_incremental_decoding_keeps_multibyte_characters_whole(p, monkeypatch):
    text = "caf\u00e9 \u2615 \U0001f600 na\u00efve"
    tok = p.generator.tokenizer
    ids = tok.encode(text, add_special_tokens=False).ids
    assert len(ids) > len(text.encode("utf-8")) / 2  # byte-level pieces: several characters span tokens
    decoder = TextStream(tok)
    pieces = [decoder.step(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in x for x in pieces)
    assert "" in pieces[:-1]  # a token that ends mid-character adds nothing until the next one completes it
    # through the generation loop, the model made to choose exactly these tokens, then eos
    import ftexport_runtime.heads.generate as generate

    script = iter([*ids, p.generator.eos_id])
    monkeypatch.setattr(generate, "next_token", lambda *a, **k: next(script))
    stream = p.stream("the", max_new_tokens=len(ids) + 5)
    tokens = list(stream)
    assert [t.id for t in tokens] == [*ids, p.generator.eos_id]
    assert [t.text for t in tokens] == pieces[:-1] + [""]
    assert stream.result.text == text and stream.result.stopped_at_eos
    # cut in the middle of the emoji: the last piece is what the full decode says (a replacement character)
    script = iter(ids)
    cut = next(i for i in range(len(ids)) if decoder.tokenizer.decode(ids[: i + 1]).endswith("\ufffd"))
    stream = p.stream("the", max_new_tokens=cut + 1)
    assert "".join(t.text for t in stream) == stream.result.text == tok.decode(ids[: cut + 1])


# --- the commands ------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftexport_runtime.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_generate_stream_prints_what_generate_prints(chat_bundle):
    b = str(chat_bundle)
    plain = run_cli("generate", b, "the film is", "story", "--max-new-tokens", "8")
    streamed = run_cli("generate", b, "the film is", "story", "--max-new-tokens", "8", "--stream")
    assert plain.returncode == streamed.returncode == 0, plain.stderr + streamed.stderr
    assert streamed.stdout == plain.stdout and len(plain.stdout.splitlines()) == 2
    both = run_cli("generate", b, "the film is", "--stream", "--json")
    assert both.returncode == 2
    assert both.stderr.splitlines() == ["error: --stream prints the text as it is made and --json prints whole results; choose one"]


def test_bad_prompts_are_refused_before_anything_is_printed(chat_bundle, p):
    """A lone surrogate (a byte argv could not decode) or a prompt too long for the model, among
    several streamed prompts: one line, exit 2, and no earlier prompt half-printed."""
    with pytest.raises(PredictError, match=r"generate\(\): the prompt is not valid Unicode \(a lone surrogate '\\ud800' at position 3\)"):
        p.generate(["ok \ud800"], max_new_tokens=2)
    with pytest.raises(PredictError, match=r"not valid Unicode"):
        p.stream("ok \ud800")
    b = str(chat_bundle)
    for bad, says in [("ok \udcff", "not valid Unicode (a lone surrogate '\\udcff'"), ("story " * 400, "leaves no room in the model's")]:
        out = run_cli("generate", b, "the film is", bad, "--max-new-tokens", "3", "--stream")
        assert out.returncode == 2 and out.stdout == "", out.stdout
        assert len(out.stderr.strip().splitlines()) == 1 and says in out.stderr, out.stderr


def test_cli_chat_replies_once(chat_bundle, p, decoder):
    b = str(chat_bundle)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a story"}]
    reply = p.chat(messages, max_new_tokens=6)[0]
    out = run_cli("chat", b, "a story", "--system", "be brief", "--max-new-tokens", "6")
    assert out.returncode == 0, out.stderr
    assert out.stdout == reply.text + "\n"
    streamed = run_cli("chat", b, "a story", "--system", "be brief", "--max-new-tokens", "6", "--stream")
    assert streamed.stdout == out.stdout
    js = json.loads(run_cli("chat", b, "a story", "--system", "be brief", "--max-new-tokens", "6", "--json").stdout)
    assert js == json.loads(json.dumps({**reply.as_dict(), "stop_id": reply.stop_id}))
    sampled = run_cli("chat", b, "a story", "--max-new-tokens", "6", "--sample", "--seed", "3", "--top-p", "0.9")
    assert sampled.stdout == p.chat([messages[1]], max_new_tokens=6, do_sample=True, seed=3, top_p=0.9)[0].text + "\n"
    refused = run_cli("chat", str(decoder), "hi")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert refused.stderr.startswith("error: chat(): this bundle has no chat template")
    info = run_cli("info", b)
    assert info.returncode == 0 and re.search(
        r"decoder   2 layers x 2 heads with KV cache, eos id \d+\nchat      template, stop ids \[\]", info.stdout
    )
