"""Instruction tuning of a chat model: labelled rows become conversations (the text in the
user turn through the recipe's prompt, the label name as the assistant's answer), rendered by
the model's own chat template; the loss covers the answer and its end-of-turn token only."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...core.errors import ModelError, RecipeError
from ..encoder import EncodedTexts

IGNORE = -100


class InstructSection(BaseModel):
    """Instruction tuning: each labelled row is a conversation through the model's chat template."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("{text}", description="the user turn; {text} is the row's text (data.text_column)")
    system: str | None = Field(None, description="the system turn (none: the chat template's own default)")
    max_new_tokens: int = Field(8, gt=0, le=256, description="tokens generated per answer when scoring")

    @field_validator("prompt")
    @classmethod
    def _one_text(cls, v: str) -> str:
        if v.count("{text}") != 1:  # without it every conversation would be the same, and the model learns one answer
            found = ", ".join(sorted(set(re.findall(r"\{[^{}]*\}", v)))) or "none"
            raise ValueError(f"must hold {{text}} once, where the row's text goes (placeholders found: {found}); e.g. 'Review: {{text}}'")
        return v

    def user_turn(self, text: str) -> str:
        return self.prompt.replace("{text}", text)

    def messages(self, text: str, answer: str | None = None) -> list[dict[str, str]]:
        turns = ([{"role": "system", "content": self.system}] if self.system is not None else []) + [
            {"role": "user", "content": self.user_turn(text)}
        ]
        return turns + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def check_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            "recipe.instruct: the model's tokenizer has no chat template; instruction tuning renders conversations with it "
            "(use an instruct model, or leave out the instruct section to train on plain text)"
        )


def render_prompt(tokenizer: Any, section: InstructSection, text: str) -> str:
    """The conversation up to the assistant's turn, as the chat template writes it."""
    return tokenizer.apply_chat_template(section.messages(text), add_generation_prompt=True, tokenize=False)


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The tokens that close an assistant turn (ChatML's <|im_end|>, Llama 3's <|eot_id|>...):
    what the template writes right after an answer, up to the next line, plus eos."""
    probe = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "ANSWER"}]
    try:
        rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception as e:  # templates raise their own errors (jinja's TemplateError, raise_exception)
        raise ModelError(f"recipe.instruct: the chat template cannot render a conversation ({str(e).splitlines()[0][:150]})") from None
    after = rendered.split("ANSWER", 1)[1] if "ANSWER" in rendered else ""
    specials = set(tokenizer.all_special_tokens) | {t for t in tokenizer.get_vocab() if re.fullmatch(r"<\|[^|>]+\|>", t)}
    found = next((tok for tok in sorted(specials, key=len, reverse=True) if after.lstrip().startswith(tok)), None)
    ids = [tokenizer.convert_tokens_to_ids(found)] if found else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    if not ids:
        raise ModelError("recipe.instruct: cannot tell which token ends the assistant's turn (no special token after an answer, no eos)")
    return ids


def instruct_dataset(
    tokenizer: Any, section: InstructSection, texts: list[str], labels: list[int], label_names: list[str], max_length: int
) -> EncodedTexts:
    """input = prompt + answer + end of turn; labels = -100 over the prompt (answer-only loss).
    A prompt too long for max_length loses its beginning, never the answer."""
    if not label_names:
        raise RecipeError("recipe.instruct: needs labelled rows (data.label_column, data.label_names) for the answers")
    eot = end_of_turn_ids(tokenizer)[0]
    ids_out, labels_out = [], []
    for text, label in zip(texts, labels):
        prompt = tokenizer(render_prompt(tokenizer, section, text), add_special_tokens=False)["input_ids"]
        answer = tokenizer(label_names[label], add_special_tokens=False)["input_ids"] + [eot]
        prompt = prompt[-(max_length - len(answer)) :] if len(prompt) + len(answer) > max_length else prompt
        ids_out.append(prompt + answer)
        labels_out.append([IGNORE] * len(prompt) + answer)
    return EncodedTexts({"input_ids": ids_out, "attention_mask": [[1] * len(r) for r in ids_out], "labels": labels_out}, None)


def normalize_answer(text: str) -> str:
    """How an answer is compared with a label name: case, surrounding spaces and punctuation aside."""
    return re.sub(r"^[\W_]+|[\W_]+$", "", text.strip().lower())
