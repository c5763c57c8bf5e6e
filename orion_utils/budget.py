"""Prompt budgets: every prompt built from variable-length text fits the model that reads it.

Four prompts hold texts of any length: the LLM reflector's (question, teacher CoT, the student's wrong
attempt), EDIT's rectify (question, the teacher's wrong solution) and corrupt (question, the correct
solution), Tailored Learning's tailoring prompt (question, the student's wrong attempts) and the
step-consistency judge's (question, the CoT judged). An engine refuses a prompt longer than its
context, so each is fitted here first, by one rule:

- **What fits**: ``limit = context - reserve``, where ``context`` is the reading engine's context length
  (vLLM's ``max_model_len``; on transformers the smaller of ``max_model_len`` and the model's own) and
  ``reserve`` its ``max_new_tokens``: the student's
  generation section for the reflector, a local teacher's engine and ``teacher.max_tokens`` for a
  teacher. An API teacher has no tokenizer here: its context is ``teacher.max_context_tokens``
  (default ``API_CONTEXT_TOKENS``, deepseek-reasoner's 128K), and tokens are counted approximately as
  one per ``APPROX_CHARS_PER_TOKEN`` characters of every message plus ``APPROX_TOKENS_PER_MESSAGE``, an
  over-count for English, LaTeX and code.
- **How it is counted**: the whole prompt as the engine sees it, rendered with the reading model's
  chat template and tokenized with its tokenizer (``generation.render_prompt``).
- **What may be cut**: only the *wrong* texts (the reflector's wrong attempt, EDIT's wrong solution,
  Tailored Learning's wrong attempts). Each keeps its ending whole (``ending``: from the line holding
  its last ``\\boxed{}``, else its last ``ENDING_LINES`` lines, at most ``ENDING_MAX_TOKENS`` tokens), so
  its final answer survives; its middle is cut, keeping the first third and the last two thirds of
  what fits, with ``CUT_MARKER`` saying how many tokens went. Several wrong texts share the room
  equally (a text shorter than its share keeps it whole and passes the rest on).
- **What is never cut**: the question, the teacher's CoT, the correct solution to corrupt, the CoT
  judged, the fixed instructions. When they (with the wrong texts' endings) do not fit, the item is
  **left out**: no request is sent; the stage goes on without it.

Each prompt is counted as ``fit`` (as built), ``cut`` or ``left_out`` (``BudgetCounts``); stages show the
counts in their line (``stage_line``) and the manifest/analysis, and ``report.budget_lines`` in the report.
Nothing here raises on a long text.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

APPROX_CHARS_PER_TOKEN = 3.0
APPROX_TOKENS_PER_MESSAGE = 8
API_CONTEXT_TOKENS = 131072  # deepseek-reasoner: 128K tokens of context (prompt + reasoning + answer)
API_MAX_OUTPUT_TOKENS = 32768  # deepseek-reasoner's default output limit, when teacher.max_tokens is unset
ENDING_LINES = 3
ENDING_MAX_TOKENS = 256
HEAD_SHARE = 1 / 3  # of a cut middle's room, the share kept from its start (the rest from its end)
CUT_MARKER = "\n[... {n} tokens cut ...]\n"
OUTCOMES = ("fit", "cut", "left_out")


class LeftOut:
    """What a teacher's ``*_many`` call returns for an item whose prompt does not fit (no request sent)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "LEFT_OUT"


LEFT_OUT = LeftOut()


def is_left_out(value: Any) -> bool:
    return value is LEFT_OUT


# ---------------------------------------------------------------------------------------------
# counting


class TokenCounter:
    """Tokens of a chat prompt as the reading engine sees it: its tokenizer, or approximately without one."""

    def __init__(self, tokenizer=None, chars_per_token: float = APPROX_CHARS_PER_TOKEN):
        self.tokenizer, self.chars_per_token = tokenizer, float(chars_per_token)

    @property
    def how(self) -> str:
        return "tokenizer" if self.tokenizer is not None else f"~{self.chars_per_token:g} chars/token"

    def count_messages(self, messages: Sequence[dict]) -> int:
        if self.tokenizer is None:
            return sum(self.count_text(m.get("content") or "") + APPROX_TOKENS_PER_MESSAGE for m in messages)
        from .generation import render_prompt

        return len(self.encode(render_prompt(self.tokenizer, list(messages))))

    def encode(self, text: str) -> list:
        if self.tokenizer is None:  # one "token" per chars_per_token characters
            step = max(1, int(self.chars_per_token))
            return [text[i: i + step] for i in range(0, len(text), step)]
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, tokens: Sequence) -> str:
        if self.tokenizer is None:
            return "".join(tokens)
        return self.tokenizer.decode(list(tokens), skip_special_tokens=False)

    def count_text(self, text: str) -> int:
        if self.tokenizer is None:
            return math.ceil(len(text) / self.chars_per_token)
        return len(self.encode(text))


# ---------------------------------------------------------------------------------------------
# the rule


def ending(text: str, counter: TokenCounter) -> tuple[str, str]:
    """``(middle, ending)`` of a wrong text: the ending holds its final answer and is never cut."""
    lines = text.splitlines(keepends=True)
    boxed = [i for i, line in enumerate(lines) if "\\boxed" in line or "\\fbox" in line]
    nonempty = [i for i, line in enumerate(lines) if line.strip()]
    start = boxed[-1] if boxed else (nonempty[-ENDING_LINES] if len(nonempty) >= ENDING_LINES else 0)
    middle, end = "".join(lines[:start]), "".join(lines[start:])
    tokens = counter.encode(end)
    if len(tokens) > ENDING_MAX_TOKENS:  # a long last stretch: only its last tokens are kept whole
        kept = counter.decode(tokens[-ENDING_MAX_TOKENS:])
        lead = end[: len(end) - len(kept)] if end.endswith(kept) else counter.decode(tokens[:-ENDING_MAX_TOKENS])
        middle, end = middle + lead, kept
    return middle, end


def share(lengths: Sequence[int], room: int) -> list[int]:
    """Tokens each text may keep: equal shares of ``room``, a shorter text passing its rest on."""
    alloc = [0] * len(lengths)
    left, order = max(0, int(room)), sorted(range(len(lengths)), key=lambda i: lengths[i])
    for k, i in enumerate(order):
        alloc[i] = min(lengths[i], left // (len(order) - k))
        left -= alloc[i]
    return alloc


def cut_middle(tokens: Sequence, keep: int, counter: TokenCounter) -> str:
    """The middle's first ``HEAD_SHARE`` and last part of ``keep`` tokens, the marker between."""
    if keep >= len(tokens):
        return counter.decode(tokens)
    head = int(keep * HEAD_SHARE)
    tail = keep - head
    return (counter.decode(tokens[:head]) + CUT_MARKER.format(n=len(tokens) - keep)
            + (counter.decode(tokens[len(tokens) - tail:]) if tail else ""))


@dataclass
class Fitted:
    messages: list | None  # None: left out
    outcome: str  # fit | cut | left_out
    n_tokens: int  # the prompt's tokens (as built, for a left-out one)
    cut_tokens: int = 0


@dataclass
class BudgetCounts:
    """How many prompts of one kind fit as built, were cut, were left out; and the limit they met."""

    limit: int = 0
    context: int = 0
    reserve: int = 0
    counted: str = ""
    fit: int = 0
    cut: int = 0
    left_out: int = 0

    def add(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    @property
    def total(self) -> int:
        return self.fit + self.cut + self.left_out

    def minus(self, before: BudgetCounts | None) -> BudgetCounts:
        if before is None:
            return BudgetCounts(**self.to_dict())
        return BudgetCounts(self.limit, self.context, self.reserve, self.counted, self.fit - before.fit,
                            self.cut - before.cut, self.left_out - before.left_out)

    def to_dict(self) -> dict:
        return {"limit": self.limit, "context": self.context, "reserve": self.reserve, "counted": self.counted,
                "fit": self.fit, "cut": self.cut, "left_out": self.left_out}

    def text(self) -> str:
        return (f"{self.fit} fit as built, {self.cut} cut, {self.left_out} left out "
                f"(limit {self.limit} = {self.context} - {self.reserve} tokens, counted by {self.counted})")


@dataclass
class PromptBudget:
    """What a prompt to one engine may hold: ``context - reserve`` tokens, counted by ``counter``."""

    context: int
    reserve: int
    counter: TokenCounter = field(default_factory=TokenCounter)
    retries: int = 4

    @property
    def limit(self) -> int:
        return int(self.context) - int(self.reserve)

    def counts(self) -> BudgetCounts:
        return BudgetCounts(self.limit, int(self.context), int(self.reserve), self.counter.how)

    def fit(self, build: Callable[[list[str]], list[dict]], parts: Sequence[str] = ()) -> Fitted:
        """``build(parts)``'s messages within the limit: as built, with ``parts`` (the wrong texts) cut in
        their middles, or left out (``messages=None``) when even their endings do not fit. Never raises."""
        parts = list(parts)
        messages = build(parts)
        n = self.counter.count_messages(messages)
        if n <= self.limit:
            return Fitted(messages, "fit", n)
        if not parts:
            return Fitted(None, "left_out", n)
        split = [ending(p, self.counter) for p in parts]
        middles = [self.counter.encode(m) for m, _ in split]
        floor_parts = [(CUT_MARKER.format(n=len(t)) if t else "") + e for t, (_, e) in zip(middles, split)]
        floor = self.counter.count_messages(build(floor_parts))
        if floor > self.limit:
            return Fitted(None, "left_out", n)
        room = self.limit - floor
        for _ in range(self.retries):
            alloc = share([len(t) for t in middles], room)
            cut = [cut_middle(t, a, self.counter) + e for t, a, (_, e) in zip(middles, alloc, split)]
            built = build(cut)
            count = self.counter.count_messages(built)
            if count <= self.limit:
                return Fitted(built, "cut", count, sum(len(t) - a for t, a in zip(middles, alloc)))
            room -= count - self.limit + 8  # token boundaries at the cuts: try again with less
            if room <= 0:
                break
        return Fitted(build(floor_parts), "cut", floor, sum(len(t) for t in middles))


# ---------------------------------------------------------------------------------------------
# where the numbers come from


def context_length(generator, max_model_len: int = 0) -> int:
    """The context of an open generation backend: vLLM's engine (what it enforces), else the smaller of
    ``max_model_len`` and the model's ``max_position_embeddings`` that are known (0 when neither is). A
    data-parallel generator (``parallel_generation``) answers for its workers' backend (``sampling.context_facts``)."""
    from .sampling import context_facts

    engine, positions = context_facts(generator)
    if engine:
        return engine
    known = [int(n) for n in (max_model_len, positions) if n]
    return min(known) if known else 0


def generator_budget(generator, reserve: int, max_model_len: int = 0) -> PromptBudget:
    """The budget of prompts an open generator reads: its context less ``reserve`` new tokens, counted
    with its tokenizer."""
    return PromptBudget(context_length(generator, max_model_len), int(reserve),
                        TokenCounter(getattr(generator, "tokenizer", None)))


def api_budget(max_context_tokens: int = 0, max_tokens: int | None = None) -> PromptBudget:
    """An API teacher's budget, counted approximately (no tokenizer here)."""
    return PromptBudget(int(max_context_tokens or API_CONTEXT_TOKENS), int(max_tokens or API_MAX_OUTPUT_TOKENS))


def snapshot(teacher) -> dict:
    """A copy of a prompted teacher's counts by kind (``PromptedTeacher.prompt_counts``); {} for others."""
    return {k: BudgetCounts(**v.to_dict()) for k, v in getattr(teacher, "prompt_counts", {}).items()}


def since(teacher, before: dict, kinds: Sequence[str] | None = None) -> dict:
    """The teacher's counts by kind since ``snapshot`` gave ``before`` (of ``kinds``, else every kind)."""
    diff = {k: v.minus(before.get(k)) for k, v in snapshot(teacher).items() if kinds is None or k in kinds}
    return {k: v for k, v in diff.items() if v.total}


def prompt_budget(teacher) -> dict:
    """``{"prompt_budget": counts by kind}`` of a prompted teacher for a stage's manifest entry; {} if none."""
    counts = snapshot(teacher)
    return {"prompt_budget": summary(counts)} if counts else {}


def stage_line(stage: str, counts: dict) -> str:
    """``[stage] prompt budget: <kind>: 3 fit as built, 1 cut, 2 left out (limit ...)``; counts by kind."""
    shown = "; ".join(f"{kind}: {BudgetCounts(**c).text() if isinstance(c, dict) else c.text()}"
                      for kind, c in counts.items())
    return f"[{stage}] prompt budget: {shown or 'no prompt built'}"


def summary(counts: dict) -> dict:
    """Counts by kind as plain dicts (for the manifest and analysis.json)."""
    return {kind: (c.to_dict() if isinstance(c, BudgetCounts) else dict(c)) for kind, c in counts.items()}
