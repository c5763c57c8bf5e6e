"""How a question becomes a prompt, and how a (question, response) pair becomes training tokens.

One place for this so that generation, SFT, EDIT and Tailored Learning all see the same text:
the student's own chat template, with loss on the assistant turn only.
"""
from __future__ import annotations

import re
from typing import Optional

DEFAULT_PROMPT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{question\}")


def fill_template(template: str, question: str) -> str:
    """The user turn: ``{question}`` replaced by the question. Every other brace is literal, so a
    profile can write ``\\boxed{}`` as it is; ``{{``/``}}`` still read as one brace (``str.format``'s
    escapes), so templates written for ``str.format`` give the same text."""
    if "{question}" not in template.replace("{{", "").replace("}}", ""):
        raise ValueError(f"the prompt template must contain {{question}}, got {template!r}")
    return _TEMPLATE_TOKEN.sub(lambda m: question if m.group() == "{question}" else m.group()[0], template)


def build_messages(question: str, template: str = "{question}", system: Optional[str] = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": fill_template(template, question)})
    return messages


def prompt_text(tokenizer, question: str, template: str = "{question}", system: Optional[str] = None) -> str:
    """The exact text the model sees before it starts its answer."""
    return tokenizer.apply_chat_template(
        build_messages(question, template, system), tokenize=False, add_generation_prompt=True
    )


def encode_for_training(
    tokenizer,
    question: str,
    response: str,
    template: str = "{question}",
    max_seq_len: Optional[int] = None,
    system: Optional[str] = None,
) -> dict:
    """Token ids of prompt + assistant turn, with labels -100 on the prompt (loss on the answer only).

    The assistant turn is rendered by the chat template, so it ends the way the model should
    stop (its end-of-turn token), and generation's EOS matches training.
    """
    messages = build_messages(question, template, system)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
    check_reasoning_kept(tokenizer, response, full[len(prompt):])
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    input_ids = prompt_ids + answer_ids
    labels = [-100] * len(prompt_ids) + list(answer_ids)
    if max_seq_len is not None and len(input_ids) > max_seq_len:
        input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
    return {"input_ids": input_ids, "labels": labels, "prompt_len": len(prompt_ids)}


_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def check_reasoning_kept(tokenizer, response: str, rendered_answer: str) -> None:
    """Stop when the chat template drops the response's ``<think>...</think>`` block from the assistant
    turn (DeepSeek-R1-distill and Qwen3 templates strip it from past assistant turns, keeping only what
    follows ``</think>``): training on that text would teach final answers only, silently."""
    if "</think>" not in response:
        return
    m = _THINK.search(response)
    reasoning = (m.group(1) if m else response.split("</think>")[0]).strip()
    if reasoning and reasoning not in rendered_answer:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"the chat template of {name!r} strips <think>...</think> from assistant turns (R1-distill/Qwen3 "
            "style: it keeps only the text after </think>), so training would see final answers without their "
            "reasoning. Use a student whose template keeps the assistant's reasoning, or give the tokenizer "
            "such a template (tokenizer.chat_template) before training"
        )


def run_prompt_format(run) -> tuple[str, Optional[str]]:
    """The (prompt template, system prompt) a run's student was prompted with, from the run's
    ``config.json`` (``student`` section); ``("{question}", None)`` where the run has none."""
    student = (run.config() or {}).get("student") or {}
    return student.get("prompt_template") or "{question}", student.get("system_prompt") or None
