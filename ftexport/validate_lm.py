"""The parity gate for text-generation bundles (called by `ftexport validate`).

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
from ftexport_runtime.bundle import Bundle
from ftexport_runtime.generate import token_nll

from . import progress
from .errors import DataError
from .recipe import Gate, GenerationCheck


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


def prompts_from(generator: Any, texts: list[str], check: GenerationCheck) -> list[list[int]]:
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


def torch_greedy(model: Any, prompts: list[list[int]], new_tokens: int, eos: int, pad: int) -> list[list[int]]:
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True, max_new_tokens=new_tokens,
                                 eos_token_id=eos, pad_token_id=pad, num_beams=1)
            out.append([int(t) for t in gen[0, len(p):].tolist()])
    return out


def validate_generation(bundle: Bundle, model: Any, texts: list[str], gates: dict[str, Gate], names: list[str],
                        backends: list[str], batch_size: int, check: GenerationCheck, split: str) -> dict[str, Any]:
    """PyTorch `model` vs each variant of `bundle` on `texts`; returns the parity report."""
    import torch

    from .validate import apply_gate, each_predictor, settle

    base = Predictor(bundle, variant="fp32").generator
    assert base is not None
    if check.perplexity_texts:
        texts = texts[: check.perplexity_texts]
    batches = [base.perplexity_inputs(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    prompts = prompts_from(base, texts, check)
    progress.step(f"validate: {len(texts)} {split} texts (perplexity) and {len(prompts)} prompts of {check.prompt_tokens} tokens "
                  f"(greedy, {check.new_tokens} new tokens), PyTorch vs {', '.join(names)} on {', '.join(backends)}")

    device = next(model.parameters()).device
    model.eval()
    ref_logits: list[np.ndarray] = []
    ref = _Stats()
    with torch.inference_mode():
        for ids, mask in batches:
            logits = model(input_ids=torch.from_numpy(ids).to(device), attention_mask=torch.from_numpy(mask).to(device)).logits.float().cpu().numpy()
            ref_logits.append(logits)
            ref.add(logits, ids, mask, None)
    ref_result = ref.result()
    ref_greedy = torch_greedy(model, prompts, check.new_tokens, base.eos_id, base.pad_id)
    progress.info(f"pytorch   perplexity {ref_result['perplexity']:.3f}  next-token accuracy {ref_result['accuracy']:.4f}")
    report: dict[str, Any] = {
        "task": "text-generation",
        "split": split,
        "examples": len(texts),
        "prompts": len(prompts),
        "prompt_tokens": check.prompt_tokens,
        "new_tokens": check.new_tokens,
        "labels": [],
        "reference": {"backend": "pytorch", "device": str(device), "perplexity": ref_result["perplexity"], "accuracy": ref_result["accuracy"],
                      "tokens": ref_result["tokens"], "greedy_sample": {"prompt": prompts[0], "continuation": ref_greedy[0]}},
        "variants": {},
    }
    for key, backend, variant, predictor in each_predictor(bundle, names, backends, batch_size, report):
        gen = predictor.generator
        assert gen is not None
        stats = _Stats()
        for (ids, mask), reference in zip(batches, ref_logits):
            stats.add(gen.forward(ids, mask)[0], ids, mask, reference)
        greedy = [gen.generate_ids([p], check.new_tokens)[0] for p in prompts]
        same = [g == r for g, r in zip(greedy, ref_greedy)]
        result: dict[str, Any] = {"precision": variant.precision, "backend": backend, **stats.result()}
        result["perplexity_ratio"] = result["perplexity"] / ref_result["perplexity"]
        result["greedy_match"] = sum(same) / len(same)
        result["greedy_mismatches"] = [{"prompt": p, "pytorch": r, "onnx": g} for p, r, g, ok in zip(prompts, ref_greedy, greedy, same) if not ok][:3]
        gate = gates.get(variant.precision, Gate())
        if variant.precision == "fp32" and gate.min_greedy_match is None:
            gate = gate.model_copy(update={"min_greedy_match": 1.0})  # the definition of parity
        settle(report, key, result, apply_gate(result, ref_result["accuracy"], gate),
               f"perplexity {result['perplexity']:.3f} (x{result['perplexity_ratio']:.4f})  greedy match {result['greedy_match']:.3f}  "
               f"next-token agreement {result['agreement']:.4f}  max |dlogit| {result['max_logit_diff']:.2e}")
    report["passed"] = all(v["passed"] for v in report["variants"].values())
    return report


def parity_table(report: dict[str, Any]) -> str:
    from .report import markdown_table

    ref = report["reference"]
    rows: list[list[Any]] = [["pytorch (reference)", "fp32", f"{ref['perplexity']:.3f}", None, ref["accuracy"], None, None, None, "—"]]
    for name, v in report["variants"].items():
        if "error" in v:
            rows.append([f"onnx {name}", v["precision"], None, None, None, None, None, None, f"FAIL: {v['error']}"])
            continue
        failed = [c["name"] for c in v["checks"] if not c["passed"]]
        rows.append([f"onnx {name}", v["precision"], f"{v['perplexity']:.3f}", f"{v['perplexity_ratio']:.4f}", v["accuracy"], v["agreement"],
                     f"{v['greedy_match']:.3f}", f"{v['max_logit_diff']:.2e}", "PASS" if v["passed"] else "FAIL: " + ", ".join(failed)])
    head = (f"Parity on the {report['split']} split: perplexity over {report['examples']} texts ({ref['tokens']} tokens); greedy continuations "
            f"of {report['prompts']} prompts ({report['prompt_tokens']} tokens + {report['new_tokens']} new) vs PyTorch generate(use_cache=True)\n\n")
    return head + markdown_table(["model", "precision", "perplexity", "ppl ratio", "next-token acc.", "next-token agreement", "greedy match",
                                  "max |Δlogit|", "gate"], rows)


def model_for(reference_dir: Path) -> Any:
    from .tasks import get_task

    return get_task("text-generation").auto_model_class().from_pretrained(str(reference_dir))
