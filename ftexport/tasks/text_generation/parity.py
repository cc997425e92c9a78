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


def torch_greedy(model: Any, prompts: list[list[int]], new_tokens: int, eos: int, pad: int) -> list[list[int]]:
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
                eos_token_id=eos,
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
        self.reference_greedy = torch_greedy(model, self.prompts, check.new_tokens, base.eos_id, base.pad_id)
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
    head = (
        f"Parity on the {report['split']} split: perplexity over {report['examples']} texts ({ref['tokens']} tokens); greedy continuations "
        f"of {report['prompts']} prompts ({report['prompt_tokens']} tokens + {report['new_tokens']} new) vs PyTorch "
        f"generate(use_cache=True)\n\n"
    )
    return head + markdown_table(
        [
            "model",
            "precision",
            "perplexity",
            "ppl ratio",
            "next-token acc.",
            "next-token agreement",
            "greedy match",
            "max |Δlogit|",
            "gate",
        ],
        rows,
    )
