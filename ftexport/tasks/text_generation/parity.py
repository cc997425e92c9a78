"""The parity check of text-generation bundles (a `ParityCase` for `ftexport validate`).

Two measurements on the held-out split, PyTorch against every variant (through the
runtime's Predictor and Generator, i.e. what ships):

- greedy parity: prompts are the first `prompt_tokens` tokens of held-out texts; the
  variant's KV-cache greedy continuation must equal PyTorch's `generate(do_sample=False,
  use_cache=True)` token for token (gate `min_greedy_match`, 1.0 for fp32 by default);
- teacher-forced scoring of whole texts (tokens + eos): perplexity and its ratio to
  PyTorch's (`max_perplexity_ratio`), next-token top-1 agreement with PyTorch
  (`min_agreement`), next-token accuracy and its drop (`max_accuracy_drop`), and the
  largest |logit difference| over every position and vocabulary entry (`max_logit_diff`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from ftexport_runtime import Predictor
from ftexport_runtime.heads.generate import token_nll

from ...core import progress
from ...core.errors import DataError
from ...core.hf import reference_device
from ...core.tables import markdown_table
from ...data import load_data
from ..base import ParityCase, with_defaults


class _Stats:
    """Running teacher-forced statistics of one model against the PyTorch reference."""

    def __init__(self) -> None:
        self.nll = 0.0
        self.tokens = 0
        self.correct = 0
        self.agree = 0
        self.max_diff = 0.0
        self.sum_diff = 0.0
        self.cells = 0
        self.min_cos = 1.0

    def add(self, logits: np.ndarray, ids: np.ndarray, mask: np.ndarray, reference: np.ndarray | None) -> None:
        nll, n = token_nll(logits, ids, mask)
        self.nll += nll
        self.tokens += n
        valid = mask[:, 1:].astype(bool)  # positions whose next token is a real one
        pred = logits[:, :-1].argmax(-1)
        self.correct += int(((pred == ids[:, 1:]) & valid).sum())
        if reference is not None:
            real = mask.astype(bool)
            a, b = reference[real].astype(np.float64), logits[real].astype(np.float64)
            diff = np.abs(a - b)
            self.max_diff = max(self.max_diff, float(diff.max()) if np.isfinite(b).all() else math.inf)
            self.sum_diff += float(diff.sum())
            self.cells += diff.size
            cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
            self.min_cos = min(self.min_cos, float(cos.min()))
            self.agree += int(((reference[:, :-1].argmax(-1) == pred) & valid).sum())

    def result(self) -> dict[str, float]:
        ppl = math.exp(min(self.nll / max(self.tokens, 1), 50.0))
        return {
            "perplexity": ppl,
            "accuracy": self.correct / max(self.tokens, 1),  # next-token top-1 accuracy
            "agreement": self.agree / max(self.tokens, 1),  # next-token top-1 equal to PyTorch's
            "max_logit_diff": self.max_diff,
            "mean_logit_diff": self.sum_diff / max(self.cells, 1),
            "min_cosine": self.min_cos,
            "tokens": self.tokens,
        }


def prompts_from(generator: Any, texts: list[str], check: Any) -> list[list[int]]:
    """The first prompt_tokens tokens of the first held-out texts that are longer than that."""
    out = []
    for t in texts:
        ids = generator.tokenizer.encode(t, add_special_tokens=False).ids
        if len(ids) > check.prompt_tokens:
            out.append(ids[: check.prompt_tokens])
        if len(out) == check.prompts:
            break
    if not out:
        raise DataError(f"validate: no held-out text is longer than generation.prompt_tokens={check.prompt_tokens} tokens; lower it")
    return out


def torch_greedy(model: Any, prompts: list[list[int]], new_tokens: int, eos: int, pad: int, stops: tuple[int, ...] = ()) -> list[list[int]]:
    """PyTorch's greedy continuation of each prompt, stopping where the runtime stops (eos, or
    a stop id of a chat model)."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                use_cache=True,
                max_new_tokens=new_tokens,
                eos_token_id=[eos, *stops] if stops else eos,
                pad_token_id=pad,
                num_beams=1,
            )
            out.append([int(t) for t in gen[0, len(p) :].tolist()])
    return out


class GenerationCase(ParityCase):
    """PyTorch's logits over whole held-out texts and its greedy continuations of their first
    tokens; a variant runs the same through the runtime's Generator (the KV-cache loop)."""

    def __init__(self, task: Any, bundle: Any, reference_dir: Path, data: Any, split: str, batch_size: int, check: Any):
        import torch

        self.check, self.split, self.labels = check, split, []
        texts = load_data(data, (split,), labelled=False)[split].texts
        base = Predictor(bundle, variant="fp32").generator
        assert base is not None
        if check.perplexity_texts:
            texts = texts[: check.perplexity_texts]
        self.examples = len(texts)
        self.batches = [base.perplexity_inputs(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        self.prompts = prompts_from(base, texts, check)
        progress.info(
            f"{len(texts)} texts (perplexity) and {len(self.prompts)} prompts of {check.prompt_tokens} tokens "
            f"(greedy, {check.new_tokens} new tokens)"
        )
        model = reference_device(task.auto_model_class().from_pretrained(str(reference_dir))).eval()
        device = next(model.parameters()).device
        self.reference_logits: list[np.ndarray] = []
        ref = _Stats()
        with torch.inference_mode():
            for ids, mask in self.batches:
                logits = (
                    model(input_ids=torch.from_numpy(ids).to(device), attention_mask=torch.from_numpy(mask).to(device))
                    .logits.float()
                    .cpu()
                    .numpy()
                )
                self.reference_logits.append(logits)
                ref.add(logits, ids, mask, None)
        r = ref.result()
        self.reference_greedy = torch_greedy(
            model, self.prompts, check.new_tokens, base.eos_id, base.pad_id, tuple(getattr(base, "stop_ids", ()))
        )
        del model
        progress.info(f"pytorch   perplexity {r['perplexity']:.3f}  next-token accuracy {r['accuracy']:.4f}")
        self.reference = {
            "backend": "pytorch",
            "device": str(device),
            "perplexity": r["perplexity"],
            "accuracy": r["accuracy"],
            "tokens": r["tokens"],
            "greedy_sample": {"prompt": self.prompts[0], "continuation": self.reference_greedy[0]},
        }
        self.details = {"prompts": len(self.prompts), "prompt_tokens": check.prompt_tokens, "new_tokens": check.new_tokens}

    def score(self, predictor: Any) -> dict[str, Any]:
        gen = predictor.generator
        stats = _Stats()
        for (ids, mask), reference in zip(self.batches, self.reference_logits):
            stats.add(gen.forward(ids, mask)[0], ids, mask, reference)
        greedy = [gen.generate_ids([p], self.check.new_tokens)[0] for p in self.prompts]
        same = [g == r for g, r in zip(greedy, self.reference_greedy)]
        result: dict[str, Any] = stats.result()
        result["perplexity_ratio"] = result["perplexity"] / self.reference["perplexity"]
        result["greedy_match"] = sum(same) / len(same)
        result["greedy_mismatches"] = [
            {"prompt": p, "pytorch": r, "onnx": g} for p, r, g, ok in zip(self.prompts, self.reference_greedy, greedy, same) if not ok
        ][:3]
        return result

    def gate(self, precision: str, gates: dict[str, Any]) -> Any:
        gate = super().gate(precision, gates)
        if precision == "fp32" and gate.min_greedy_match is None:
            return with_defaults(gate, min_greedy_match=1.0)  # parity of a decoder: the same tokens, every one
        return gate

    def summary(self, r: dict[str, Any]) -> str:
        return (
            f"perplexity {r['perplexity']:.3f} (x{r['perplexity_ratio']:.4f})  greedy match {r['greedy_match']:.3f}  "
            f"next-token agreement {r['agreement']:.4f}  max |dlogit| {r['max_logit_diff']:.2e}"
        )


def parity_table(report: Any) -> str:
    ref = report["reference"]
    rows: list[list[Any]] = [["pytorch (reference)", "fp32", f"{ref['perplexity']:.3f}", None, ref["accuracy"], None, None, None, "—"]]
    for name, v in report["variants"].items():
        if "error" in v:
            rows.append([f"onnx {name}", v["precision"], None, None, None, None, None, None, f"FAIL: {v['error']}"])
            continue
        failed = [c["name"] for c in v["checks"] if not c["passed"]]
        rows.append(
            [
                f"onnx {name}",
                v["precision"],
                f"{v['perplexity']:.3f}",
                f"{v['perplexity_ratio']:.4f}",
                v["accuracy"],
                v["agreement"],
                f"{v['greedy_match']:.3f}",
                f"{v['max_logit_diff']:.2e}",
                "PASS" if v["passed"] else "FAIL: " + ", ".join(failed),
            ]
        )
    if "scored_by" in report:  # an instruction-tuned chat model
        head = (
            f"Parity on the {report['split']} split: {report['prompts']} conversations, answers of up to {report['new_tokens']} tokens "
            f"scored by exact match with the label; "
            + (
                f"perplexity of the gold answers ({ref['answer_tokens']} tokens; over the whole conversations, {ref['tokens']} "
                f"tokens: {ref['conversation_perplexity']:.3f} in PyTorch)"
                if "answer_tokens" in ref
                else f"perplexity over the conversations ({ref['tokens']} tokens)"  # reports written before answer perplexity
            )
            + "; greedy answers vs PyTorch generate(use_cache=True)\n\n"
        )
    else:
        head = (
            f"Parity on the {report['split']} split: perplexity over {report['examples']} texts ({ref['tokens']} tokens); "
            f"greedy continuations of {report['prompts']} prompts ({report['prompt_tokens']} tokens + {report['new_tokens']} new) "
            f"vs PyTorch generate(use_cache=True)\n\n"
        )
    return head + markdown_table(
        [
            "model",
            "precision",
            "perplexity",
            "ppl ratio",
            "answer acc." if "scored_by" in report else "next-token acc.",
            "next-token agreement",
            "greedy match",
            "max |Δlogit|",
            "gate",
        ],
        rows,
    )


# ---- instruction-tuned chat models -------------------------------------------------------------

COMPARED = 16  # conversations whose full logits are held to compare with each variant's (a 49k vocabulary is large)


def _right_pad(rows: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def _cut(tokens: list[int], stops: set[int]) -> list[int]:
    """A continuation up to (not including) its first end-of-turn token."""
    out = []
    for t in tokens:
        if t in stops:
            break
        out.append(t)
    return out


class InstructCase(ParityCase):
    """An instruction-tuned chat model on the held-out split: each row's prompt through the
    chat template, the answer generated greedily up to its end of turn and compared with the
    label name (exact match: `accuracy`); the same answers token for token against PyTorch's
    (`greedy_match`); the perplexity of the gold answers (answer and end of turn, given the
    prompt: what instruction tuning trains and its dev perplexity reports) and its ratio to
    PyTorch's, the gated one; the perplexity of the whole conversations (system prompt and
    review included), reported beside it; and, over the first conversations, the logits."""

    def __init__(self, task: Any, bundle: Any, reference_dir: Path, data: Any, split: str, batch_size: int, check: Any):
        import torch

        from ...core.hf import load_tokenizer
        from .instruct import end_of_turn_ids, normalize_answer, render_prompt

        self.normalize = normalize_answer
        instruct, self.batch_size = check.instruct, min(batch_size, 32)
        manifest = bundle.manifest
        self.labels, self.split = list(manifest.labels), split
        held_out = load_data(data.model_copy(update={"label_names": self.labels}), (split,))[split]
        tok = task.prepare_tokenizer(load_tokenizer(reference_dir, "reference model"))
        self.stops = set(end_of_turn_ids(tok))
        self.max_new = instruct.max_new_tokens
        self.prompts = [tok(render_prompt(tok, instruct, t), add_special_tokens=False)["input_ids"] for t in held_out.texts]
        self.gold = [self.labels[i] for i in held_out.labels]
        eot = end_of_turn_ids(tok)[0]  # the template's own end of turn: what training puts after an answer
        self.conversations = [p + tok(g, add_special_tokens=False)["input_ids"] + [eot] for p, g in zip(self.prompts, self.gold)]
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else eot
        self.examples = len(self.prompts)
        progress.info(f"{self.examples} conversations: answers up to {self.max_new} tokens, perplexity, logits over the first {COMPARED}")
        model = reference_device(task.auto_model_class().from_pretrained(str(reference_dir))).eval()
        device = next(model.parameters()).device
        ref, ref_answer = _Stats(), _Stats()  # whole conversations; the gold answers alone
        self.reference_logits: list[np.ndarray] = []
        with torch.inference_mode():
            for i, (ids, mask, answer) in enumerate(self._batches()):
                logits = (
                    model(input_ids=torch.from_numpy(ids).to(device), attention_mask=torch.from_numpy(mask).to(device))
                    .logits.float()
                    .cpu()
                    .numpy()
                )
                ref.add(logits, ids, mask, None)
                ref_answer.add(logits, ids, answer, None)
                if i * self.batch_size < COMPARED:
                    self.reference_logits.append(logits[: max(0, COMPARED - i * self.batch_size)])
            self.reference_answers = []
            for i in range(0, len(self.prompts), self.batch_size):
                rows = self.prompts[i : i + self.batch_size]
                width = max(len(r) for r in rows)
                ids = torch.tensor([[self.pad] * (width - len(r)) + r for r in rows], device=device)
                mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
                out = model.generate(
                    ids,
                    attention_mask=mask,
                    do_sample=False,
                    use_cache=True,
                    max_new_tokens=self.max_new,
                    eos_token_id=sorted(self.stops),
                    pad_token_id=self.pad,
                    num_beams=1,
                )
                self.reference_answers += [_cut(row[width:].tolist(), self.stops) for row in out]
        del model
        r = ref.result()
        accuracy = self._accuracy(tok, self.reference_answers)
        self.decode = tok.decode
        self.reference = {
            "backend": "pytorch",
            "device": str(device),
            "accuracy": accuracy,
            "perplexity": ref_answer.result()["perplexity"],
            "answer_tokens": ref_answer.tokens,
            "conversation_perplexity": r["perplexity"],
            "next_token_accuracy": r["accuracy"],
            "tokens": r["tokens"],
            "answer_sample": {"prompt": self.prompts[0], "answer": self.reference_answers[0]},
        }
        self.details = {"prompts": self.examples, "new_tokens": self.max_new, "scored_by": "exact match of the generated answer"}
        progress.info(
            f"pytorch   answer accuracy {accuracy:.4f}  answer perplexity {self.reference['perplexity']:.4f}  "
            f"conversation perplexity {r['perplexity']:.3f}"
        )

    def _batches(self) -> Any:
        for i in range(0, len(self.conversations), self.batch_size):
            rows = self.conversations[i : i + self.batch_size]
            ids, mask = _right_pad(rows, self.pad)
            answer = np.zeros_like(mask)
            for j, n in enumerate(len(p) for p in self.prompts[i : i + self.batch_size]):
                answer[j, n : len(rows[j])] = 1  # token_nll scores position k against mask[k]
            yield ids, mask, answer

    def _accuracy(self, tok: Any, answers: list[list[int]]) -> float:
        right = [self.normalize(tok.decode(a, skip_special_tokens=True)) == self.normalize(g) for a, g in zip(answers, self.gold)]
        return float(np.mean(right)) if right else 0.0

    def score(self, predictor: Any) -> dict[str, Any]:
        gen = predictor.generator
        stats, compared, answer_nll = _Stats(), _Stats(), _Stats()
        for i, (ids, mask, answer) in enumerate(self._batches()):
            logits = gen.forward(ids, mask)[0]
            stats.add(logits, ids, mask, None)
            answer_nll.add(logits, ids, answer, None)
            if i < len(self.reference_logits):
                n = len(self.reference_logits[i])
                compared.add(logits[:n], ids[:n], mask[:n], self.reference_logits[i])
        answers = []
        for i in range(0, len(self.prompts), self.batch_size):
            answers += [_cut(a, self.stops) for a in gen.generate_ids(self.prompts[i : i + self.batch_size], self.max_new)]
        result = stats.result()
        match = [a == r for a, r in zip(answers, self.reference_answers)]
        closeness = compared.result()
        result.update(
            {
                "accuracy": float(
                    np.mean(
                        [self.normalize(self.decode(a, skip_special_tokens=True)) == self.normalize(g) for a, g in zip(answers, self.gold)]
                    )
                ),
                "next_token_accuracy": result["accuracy"],
                "conversation_perplexity": result["perplexity"],
                "conversation_perplexity_ratio": result["perplexity"] / self.reference["conversation_perplexity"],
                "perplexity": answer_nll.result()["perplexity"],
                "perplexity_ratio": answer_nll.result()["perplexity"] / self.reference["perplexity"],
                "answer_tokens": answer_nll.tokens,
                "greedy_match": float(np.mean(match)),
                "agreement": closeness["agreement"],
                "max_logit_diff": closeness["max_logit_diff"],
                "mean_logit_diff": closeness["mean_logit_diff"],
                "min_cosine": closeness["min_cosine"],
                "greedy_mismatches": [
                    {"prompt": p, "pytorch": r, "onnx": a}
                    for p, r, a, ok in zip(self.prompts, self.reference_answers, answers, match)
                    if not ok
                ][:3],
            }
        )
        return result

    def gate(self, precision: str, gates: dict[str, Any]) -> Any:
        gate = super().gate(precision, gates)
        if precision == "fp32" and gate.min_greedy_match is None:
            return with_defaults(gate, min_greedy_match=1.0)
        return gate

    def summary(self, r: dict[str, Any]) -> str:
        return (
            f"answer accuracy {r['accuracy']:.4f}  answer perplexity {r['perplexity']:.4f} (x{r['perplexity_ratio']:.4f})  "
            f"greedy match {r['greedy_match']:.3f}  max |dlogit| {r['max_logit_diff']:.2e}"
        )
