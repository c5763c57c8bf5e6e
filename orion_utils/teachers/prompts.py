"""Teacher prompts, and ``PromptedTeacher``: every prompt-driven teacher built on one batched call.

The prompts are ours (the papers publish their ideas, not always their exact wording); each is a
named template that a notebook can show and override:

- ``COLLECT_TEMPLATE``: the question plus "Please reason step by step, and put your final answer
  within \\boxed{}." (the same text the student sees, ``chat.DEFAULT_PROMPT_TEMPLATE``).
- ``RECTIFY_TEMPLATE``: EDIT's answer-hint prompt (D- -> D-+). The teacher is given the correct
  final answer and its own earlier wrong CoT in full (reasoning and solution) and rewrites it word for
  word with the wrong step done right, so the dual pair differs at its key steps.
- ``CORRUPT_TEMPLATE``: EDIT's contrastive prompt (D+ -> D+-). A few right/wrong demonstration
  pairs, then the teacher's correct CoT in full (reasoning and solution); the teacher copies it with
  exactly one key mistake carried through to a wrong answer.

Both replies put the rewritten CoT between ``<rewritten_reasoning>``/``<rewritten_solution>`` tags;
``rewritten_cot`` keeps that text as the trace's thinking and solution, never the teacher's own
thinking about how to rewrite (``PromptedTeacher._traces``).
- ``TAILOR_TEMPLATE``: Tailored Learning's feedback prompt: the question and the student's wrong
  rationales; the teacher writes a correct rationale that addresses those mistakes.

``PromptedTeacher`` implements ``collect``/``rectify``/``corrupt``/``tailor`` (and batched
``*_many`` forms) on top of one abstract ``_complete(requests)``; ``APITeacher`` implements it with
an OpenAI-compatible server, and a local (vLLM/transformers) teacher can implement it with a
model in memory.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional, Sequence

from ..budget import LEFT_OUT, Fitted, PromptBudget, api_budget
from ..chat import DEFAULT_PROMPT_TEMPLATE, build_messages
from ..records import Problem, TeacherTrace, as_problem
from .base import make_trace

COLLECT_TEMPLATE = DEFAULT_PROMPT_TEMPLATE

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_BOXED = BOXED_INSTRUCTION.replace("{", "{{").replace("}", "}}")  # inside str.format templates

RECTIFY_TEMPLATE = """\
Question:
{question}

The correct final answer to this question is: {answer}

An earlier solution reached a wrong answer. Its full reasoning and its final solution:
<earlier_reasoning>
{wrong_reasoning}
</earlier_reasoning>
<earlier_solution>
{wrong_solution}
</earlier_solution>

Rewrite it so that it reaches the correct final answer {answer}: copy the earlier reasoning and \
solution word for word up to the step where it went wrong, do that step correctly, and carry the \
correction through to the end. Change nothing else. Do not mention that an answer or an earlier \
solution was given to you.

Reply with the rewritten version only, in the same two parts, between these tags:
<rewritten_reasoning>
(the reasoning, the wrong step done correctly)
</rewritten_reasoning>
<rewritten_solution>
(the final solution, with the final answer within \\boxed{{}})
</rewritten_solution>"""

RECTIFY_TEMPLATE_NO_WRONG = (
    """\
Question:
{question}

The correct final answer to this question is: {answer}

Solve the question and reach the correct final answer {answer}. Write a complete, self-contained \
solution: do not mention that the answer was given to you.
"""
    + _BOXED
)

CORRUPT_TEMPLATE = """\
You help build contrastive training data for a student model. For a question and its correct \
solution (its full reasoning and its final solution), write the most likely WRONG solution: the one \
a capable but careless student would most plausibly write. Copy the correct reasoning and solution \
word for word, except for exactly one key mistake at one step (a misread quantity, a wrong \
operation, an arithmetic slip, a missed case), carried through to a wrong final answer. Change \
nothing else. Do not point out or correct the mistake.

Reply with the wrong version only, in the same two parts, between these tags:
<rewritten_reasoning>
(the reasoning, copied with the one mistake)
</rewritten_reasoning>
<rewritten_solution>
(the final solution, with the wrong final answer within \\boxed{{}})
</rewritten_solution>

{demonstrations}Question:
{question}

Correct solution:
<correct_reasoning>
{correct_reasoning}
</correct_reasoning>
<correct_solution>
{correct_solution}
</correct_solution>

Most likely wrong solution:"""

DEMONSTRATION_TEMPLATE = """\
Question:
{question}

Correct solution:
<correct_reasoning>
{correct}
</correct_reasoning>
<correct_solution>
{correct_answer}
</correct_solution>

Most likely wrong solution:
<rewritten_reasoning>
{wrong}
</rewritten_reasoning>
<rewritten_solution>
{wrong_answer}
</rewritten_solution>

"""

DEFAULT_CONTRASTIVE_DEMOS: tuple[dict, ...] = (
    {
        "question": "A shop sells pencils at 3 for $1. How much do 18 pencils cost?",
        "correct": "18 pencils are 18 / 3 = 6 groups of 3 pencils. Each group costs $1, so the "
        "total is 6 * 1 = 6 dollars. The answer is \\boxed{6}.",
        "wrong": "18 pencils are 18 * 3 = 54 groups of 3 pencils. Each group costs $1, so the "
        "total is 54 * 1 = 54 dollars. The answer is \\boxed{54}.",
    },
    {
        "question": "Tom has 12 apples. He gives a quarter of them to Ann and then buys 5 more. "
        "How many apples does Tom have now?",
        "correct": "A quarter of 12 is 12 / 4 = 3, so after giving them away Tom has 12 - 3 = 9. "
        "He buys 5 more: 9 + 5 = 14. The answer is \\boxed{14}.",
        "wrong": "A quarter of 12 is 12 / 4 = 3, so Tom has 3 left. He buys 5 more: 3 + 5 = 8. "
        "The answer is \\boxed{8}.",
    },
)

TAILOR_TEMPLATE = (
    """\
A student tried to answer the question below and got it wrong. Here are the student's attempts:

{attempts}
Question:
{question}

First work out where and why the student's reasoning went wrong. Then write a correct, \
complete, step-by-step solution tailored to this student: follow the reasoning the student can \
follow, and at the step where the student went wrong, explain briefly why that step is a \
mistake and do it correctly.
"""
    + _BOXED
)

ATTEMPT_TEMPLATE = """\
<attempt {index}>
{attempt}
</attempt {index}>
"""


# ---------------------------------------------------------------------------------------------
# prompt builders (plain chat messages; any backend can render them with its own chat template)


def _warn_on_reused_ids(problems: Sequence[Problem]) -> None:
    questions: dict[str, str] = {}
    clashes = sorted({p.id for p in problems if questions.setdefault(p.id, p.question) != p.question})
    if clashes:
        warnings.warn(
            f"{len(clashes)} problem id(s) name different questions (first: {clashes[0]!r}); their traces "
            f"share a problem_id, so give every question its own id",
            stacklevel=3,
        )


def collect_messages(
    problem: Problem, template: str = COLLECT_TEMPLATE, system: Optional[str] = None
) -> list[dict]:
    """The collection prompt: the question and the step-by-step/\\boxed{} instruction."""
    return build_messages(problem.question, template, system)


def _user(content: str, system: Optional[str]) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return messages


def rectify_messages(
    problem: Problem,
    wrong: Optional[TeacherTrace],
    template: str = RECTIFY_TEMPLATE,
    include_wrong: bool = True,
    include_wrong_thinking: bool = True,
    system: Optional[str] = None,
) -> list[dict]:
    """EDIT's answer-hint prompt. The wrong trace's full reasoning (thinking and solution) is shown, and
    the teacher rewrites it with the wrong step done right, so the rectified CoT stays a near-copy of it
    (``include_wrong_thinking=False``: its solution only)."""
    if not include_wrong or wrong is None:
        return _user(
            RECTIFY_TEMPLATE_NO_WRONG.format(question=problem.question, answer=problem.answer), system
        )
    reasoning = wrong.thinking.strip() if include_wrong_thinking else ""
    return _user(
        template.format(question=problem.question, answer=problem.answer, wrong_reasoning=reasoning,
                        wrong_solution=wrong.solution.strip()), system
    )


def _split_demo(text: str) -> tuple[str, str]:
    """A demonstration's reasoning and its final sentence ("The answer is ...")."""
    reasoning, sep, answer = text.rpartition("The answer is")
    return (reasoning.strip(), sep + answer) if sep else (text.strip(), "")


def format_demonstrations(demos: Sequence[dict]) -> str:
    out = []
    for d in demos:
        (correct, correct_answer), (wrong, wrong_answer) = _split_demo(d["correct"]), _split_demo(d["wrong"])
        out.append(DEMONSTRATION_TEMPLATE.format(question=d["question"], correct=correct, wrong=wrong,
                                                 correct_answer=correct_answer, wrong_answer=wrong_answer))
    return "".join(out)


def corrupt_messages(
    problem: Problem,
    correct: TeacherTrace,
    demos: Sequence[dict] = DEFAULT_CONTRASTIVE_DEMOS,
    template: str = CORRUPT_TEMPLATE,
    system: Optional[str] = None,
) -> list[dict]:
    """EDIT's contrastive prompt: right/wrong demonstrations, then the correct CoT to corrupt, its full
    reasoning (thinking) and its solution."""
    return _user(
        template.format(
            demonstrations=format_demonstrations(demos),
            question=problem.question,
            correct_reasoning=correct.thinking.strip(),
            correct_solution=correct.solution.strip(),
        ),
        system,
    )


_REWRITTEN = re.compile(r"<rewritten_reasoning>(.*?)(?:</rewritten_reasoning>|$)(?:.*?<rewritten_solution>(.*?)"
                        r"(?:</rewritten_solution>|$))?", re.DOTALL)


def rewritten_cot(completion: "Completion") -> tuple[str, str, str]:
    """(thinking, solution, format) of the CoT a rectify/corrupt reply rewrote: the text between its
    ``<rewritten_reasoning>``/``<rewritten_solution>`` tags in the reply's answer ("tagged"). The
    teacher's own thinking is its reasoning about how to rewrite, never part of the rewritten CoT: a
    reply without the tags keeps its answer alone as the solution ("untagged"). The tags, not
    ``<think>``, mark the parts: an API reply's ``<think>`` text is split off as the teacher's thinking."""
    match = _REWRITTEN.search(completion.solution or "")
    if match is None:
        return "", (completion.solution or "").strip(), "untagged"
    reasoning, solution = match.group(1).strip(), (match.group(2) or "").strip()
    if match.group(2) is None:  # no solution tag: what follows the reasoning
        solution = completion.solution[match.end():].strip()
    return reasoning, solution, "tagged"


def tailor_messages(
    problem: Problem,
    wrong_attempts: Sequence[str],
    template: str = TAILOR_TEMPLATE,
    max_attempts: int = 4,
    system: Optional[str] = None,
) -> list[dict]:
    """Tailored Learning's feedback prompt: the student's (unique) wrong rationales and the question."""
    unique: list[str] = []
    for attempt in wrong_attempts:
        text = attempt.strip()
        if text and text not in unique:
            unique.append(text)
    attempts = "".join(
        ATTEMPT_TEMPLATE.format(index=i + 1, attempt=a) for i, a in enumerate(unique[:max_attempts])
    )
    return _user(template.format(attempts=attempts, question=problem.question), system)


# ---------------------------------------------------------------------------------------------
# PromptedTeacher


JUDGE_TEMPLATE = """You are checking a worked solution for logical consistency.

## Problem
{question}

## Solution to check
{cot}

Go through the solution step by step. For each step decide whether it follows correctly from the problem and the steps before it: right arithmetic, no contradiction with an earlier step, no unjustified jump. Then, on the last line, write exactly:
Consistent steps: K of N
where N is the number of steps you checked and K how many of them were consistent."""

_JUDGE_SCORE = re.compile(r"consistent steps:\s*(\d+)\s*(?:of|/|out of)\s*(\d+)", re.IGNORECASE)


def judge_messages(question: str, cot: str, system: Optional[str] = None) -> list[dict]:
    """The step-consistency judge: the teacher checks a CoT and counts its consistent steps."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": JUDGE_TEMPLATE.format(question=question, cot=cot)}]


def parse_judge_score(text: str) -> Optional[float]:
    """K/N from the judge's last "Consistent steps: K of N" line; None if absent or N is 0."""
    matches = _JUDGE_SCORE.findall(text or "")
    if not matches:
        return None
    k, n = (int(x) for x in matches[-1])
    return min(k, n) / n if n else None


REWRITE_JUDGE_TEMPLATE = """A student attempted a math problem and made a mistake. It then rewrote a correct worked solution so that it reflects on its own mistake. Judge the rewrite.

## Problem
{question}

## The student's wrong attempt
{wrong_attempt}

## The rewrite to judge
{rewrite}

Answer two questions about the rewrite. Does it reflect on the student's error: does it point to the wrong step of the attempt, say why that step is wrong and give the correct step? Is its reasoning valid from start to end: right arithmetic, no contradiction, no unjustified jump, the final answer following from it?
Write <verdict>yes</verdict> if both answers are yes, else <verdict>no</verdict>, then one sentence saying why inside <reason></reason>."""

_VERDICT = re.compile(r"<verdict>\s*(yes|no)\s*</verdict>", re.IGNORECASE)
_REASON = re.compile(r"<reason>(.*?)</reason>", re.IGNORECASE | re.DOTALL)


def rewrite_judge_messages(question: str, wrong_attempt: str, rewrite: str,
                           system: Optional[str] = None) -> list[dict]:
    """The rewrite judge (``reflection.judge``): does a stage-03 rewrite reflect on the error and reason validly?"""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": REWRITE_JUDGE_TEMPLATE.format(
        question=question, wrong_attempt=wrong_attempt, rewrite=rewrite)}]


def parse_verdict(text: str) -> tuple[Optional[str], str]:
    """("yes" | "no", reason) from the judge's last verdict tag and last reason tag; (None, "") without a verdict."""
    verdicts = _VERDICT.findall(text or "")
    if not verdicts:
        return None, ""
    reasons = _REASON.findall(text or "")
    return verdicts[-1].lower(), (reasons[-1].strip() if reasons else "")


@dataclass
class CompletionRequest:
    """One chat request; ``sample_index`` makes the n samples of one prompt distinct requests."""

    messages: list[dict]
    sample_index: int = 0
    kind: str = "collect"  # collect | rectify | corrupt | tailor | judge | judge_rewrite
    problem_id: str = ""


@dataclass
class Completion:
    """A teacher's reply, split into its thinking and its final solution."""

    thinking: str
    solution: str
    usage: dict = field(default_factory=dict)
    finish_reason: Optional[str] = None
    meta: dict = field(default_factory=dict)


class TeacherRequestFailed(RuntimeError):
    """A single rectify/corrupt/tailor request failed after every retry (it will be retried next time)."""


class PromptedTeacher:
    """Teacher built on one batched completion call.

    Subclasses implement ``_complete(requests)`` returning one ``Completion`` per request, in order,
    or ``None`` where a request failed (the subclass reports and records why). Everything else —
    the prompts, n samples per problem, grading, the order of the returned traces — lives here, so
    the API teacher and a local-model teacher behave the same.
    """

    name: str = "prompted"
    prompt_template: str = COLLECT_TEMPLATE
    system_prompt: Optional[str] = None
    contrastive_demos: Sequence[dict] = DEFAULT_CONTRASTIVE_DEMOS
    rectify_include_wrong: bool = True
    max_context_tokens: int = 0  # an API teacher's context (teacher.max_context_tokens); 0: budget.API_CONTEXT_TOKENS

    # -- prompt budget (``orion_utils.budget``) ------------------------------------------------------

    def prompt_budget(self) -> PromptBudget:
        """What one prompt to this teacher may hold: an API teacher's context less ``max_tokens``,
        counted approximately; a teacher with its engine here (``LocalTeacher``) overrides it."""
        return api_budget(self.max_context_tokens, getattr(self, "max_tokens", None))

    @property
    def prompt_counts(self) -> dict:
        """Prompts built so far by kind (rectify, corrupt, tailor, judge): fit as built / cut / left out."""
        return self.__dict__.setdefault("_prompt_counts", {})

    def _fit(self, kind: str, build, parts: Sequence[str] = ()) -> Fitted:
        budget = self.__dict__.get("_budget") or self.__dict__.setdefault("_budget", self.prompt_budget())
        fitted = budget.fit(build, parts)
        self.prompt_counts.setdefault(kind, budget.counts()).add(fitted.outcome)
        return fitted

    def _fitted_traces(self, kind: str, problems: Sequence[Problem], fitted: Sequence[Fitted],
                       sample_indexes: Sequence[int], metas: Sequence[dict]) -> list:
        """Traces for the fitted prompts, in order; ``budget.LEFT_OUT`` where the prompt did not fit."""
        keep = [i for i, f in enumerate(fitted) if f.messages is not None]
        requests = [CompletionRequest(fitted[i].messages, sample_indexes[i], kind, problems[i].id) for i in keep]
        cut = [{"prompt_cut_tokens": fitted[i].cut_tokens} if fitted[i].outcome == "cut" else {} for i in keep]
        traces = self._traces([problems[i] for i in keep], requests,
                              [{**metas[i], **c} for i, c in zip(keep, cut)]) if keep else []
        out: list = [LEFT_OUT] * len(fitted)
        for i, trace in zip(keep, traces):
            out[i] = trace
        return out

    def _complete(self, requests: Sequence[CompletionRequest]) -> list[Optional[Completion]]:
        """One Completion per request, in order; None where a request failed."""
        raise NotImplementedError

    def _iter_complete(
        self, requests: Sequence[CompletionRequest]
    ) -> Iterator[tuple[int, Optional[Completion]]]:
        """(index, completion) pairs as they become available, in any order, each index once.

        The default waits for ``_complete``; a backend that streams (the API teacher) overrides it
        so that grading, done here in the caller's thread, overlaps the requests still in flight.
        """
        completions = self._complete(list(requests))
        if len(completions) != len(requests):
            raise RuntimeError(
                f"_complete returned {len(completions)} completions for {len(requests)} requests"
            )
        yield from enumerate(completions)

    # -- building blocks ---------------------------------------------------------------------

    def _traces(
        self, problems: Sequence[Problem], requests: Sequence[CompletionRequest], extra_meta: Sequence[dict]
    ) -> list[Optional[TeacherTrace]]:
        out: list[Optional[TeacherTrace]] = [None] * len(requests)
        for i, completion in self._iter_complete(list(requests)):
            if completion is None:
                continue
            request = requests[i]
            thinking, solution, shape = completion.thinking, completion.solution, {}
            if request.kind in ("rectify", "corrupt"):  # keep the rewritten CoT, not the teacher's thinking
                thinking, solution, form = rewritten_cot(completion)
                shape = {"reply_format": form, "teacher_thinking_chars": len(completion.thinking or "")}
            out[i] = make_trace(
                problems[i],
                thinking,
                solution,
                teacher=self.name,
                sample_index=request.sample_index,
                usage=completion.usage,
                meta={
                    "kind": request.kind,
                    "finish_reason": completion.finish_reason,
                    **completion.meta,
                    **shape,
                    **extra_meta[i],
                },
            )
        return out

    # -- Teacher -------------------------------------------------------------------------------

    def collect(self, problems: Sequence[Problem], n: int = 1) -> list[TeacherTrace]:
        """n traces per problem (correct or not), problem-major then sample index.

        Requests that failed after every retry are left out (and reported by the subclass); run
        ``collect`` again to retry them: everything that succeeded comes from the cache.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        problems = [as_problem(p) for p in problems]
        _warn_on_reused_ids(problems)
        pairs = [(p, i) for p in problems for i in range(n)]
        requests = [
            CompletionRequest(
                collect_messages(p, self.prompt_template, self.system_prompt), i, "collect", p.id
            )
            for p, i in pairs
        ]
        traces = self._traces([p for p, _ in pairs], requests, [{} for _ in pairs])
        return [t for t in traces if t is not None]

    # -- FeedbackTeacher -----------------------------------------------------------------------

    def rectify_many(
        self, items: Sequence[tuple[Problem, TeacherTrace]], sample_index: int = 0
    ) -> list[Optional[TeacherTrace]]:
        """EDIT's D-+ for many (problem, wrong trace) pairs; ``None`` where the request failed,
        ``budget.LEFT_OUT`` where the prompt did not fit (the wrong solution's middle is cut first)."""
        include = self.rectify_include_wrong

        def fit(p: Problem, w: TeacherTrace) -> Fitted:
            parts = [w.solution.strip()] if include and w is not None else []
            return self._fit("rectify", lambda shown: rectify_messages(
                p, replace(w, solution=shown[0]) if shown else w, include_wrong=include,
                system=self.system_prompt), parts)

        fitted = [fit(p, w) for p, w in items]
        metas = [{"source_sample_index": w.sample_index} for _, w in items]
        return self._fitted_traces("rectify", [p for p, _ in items], fitted, [sample_index] * len(items), metas)

    def corrupt_many(
        self, items: Sequence[tuple[Problem, TeacherTrace]], sample_index: int = 0
    ) -> list[Optional[TeacherTrace]]:
        """EDIT's D+- for many (problem, correct trace) pairs; a good corruption grades ``correct=False``.
        The correct solution is never cut: ``budget.LEFT_OUT`` where the prompt does not fit."""
        fitted = [self._fit("corrupt", lambda _, p=p, c=c: corrupt_messages(
            p, c, self.contrastive_demos, system=self.system_prompt)) for p, c in items]
        metas = [{"source_sample_index": c.sample_index} for _, c in items]
        return self._fitted_traces("corrupt", [p for p, _ in items], fitted, [sample_index] * len(items), metas)

    def tailor_many(
        self, items: Sequence[tuple[Problem, Sequence[str]]], n: int = 1
    ) -> list[list[TeacherTrace]]:
        """Tailored Learning: n tailored rationales per (problem, wrong attempts); failed ones left out;
        ``budget.LEFT_OUT`` in place of an item's list where its prompt does not fit (the attempts'
        middles are cut first).

        n >= 2 gives the anchor/positive pair that the self-reflection triplet loss needs.
        """
        fitted = [self._fit_tailor(p, w) for p, w in items]
        flat = [(k, i) for k in range(len(items)) for i in range(n)]
        traces = self._fitted_traces(
            "tailor", [items[k][0] for k, _ in flat], [fitted[k] for k, _ in flat], [i for _, i in flat],
            [{"n_wrong_attempts": len(items[k][1])} for k, _ in flat])
        out: list = [[] if fitted[k].messages is not None else LEFT_OUT for k in range(len(items))]
        for (k, _), trace in zip(flat, traces):
            if trace is not None and trace is not LEFT_OUT:
                out[k].append(trace)
        return out

    def _fit_tailor(self, problem: Problem, wrong_attempts: Sequence[str], max_attempts: int = 4) -> Fitted:
        unique: list[str] = []
        for attempt in wrong_attempts:
            text = attempt.strip()
            if text and text not in unique:
                unique.append(text)
        return self._fit("tailor", lambda shown: tailor_messages(problem, shown, max_attempts=max_attempts,
                                                                 system=self.system_prompt), unique[:max_attempts])

    def judge_many(self, items: Sequence[tuple[str, str]]) -> list[Optional[float]]:
        """Step-level consistency of (question, CoT) pairs as judged by the teacher: the share of
        steps it finds consistent, in [0, 1]; None where the request failed or gave no score."""
        fitted = [self._fit("judge", lambda _, q=q, cot=cot: judge_messages(q, cot, self.system_prompt))
                  for q, cot in items]  # the CoT judged is never cut: a prompt that does not fit is left out
        keep = [i for i, f in enumerate(fitted) if f.messages is not None]
        requests = [CompletionRequest(fitted[i].messages, 0, "judge") for i in keep]
        scores: list[Optional[float]] = [None] * len(items)
        for j, completion in (self._iter_complete(requests) if requests else ()):
            if completion is not None:
                score = parse_judge_score(completion.solution)
                scores[keep[j]] = score if score is not None else parse_judge_score(completion.thinking)
        return scores

    def judge_rewrites_many(self, items: Sequence[tuple[str, str, str]]) -> list[dict]:
        """The rewrite judge over (question, wrong attempt, rewrite) triples: per item ``{"verdict", "reason"}``,
        the verdict "yes" or "no" as the teacher wrote it, else "unparseable" (no verdict tag), "failed"
        (the request failed after every retry) or "left out" (the prompt does not fit the teacher's budget;
        the wrong attempt's middle is cut first, the rewrite never)."""
        fitted = [self._fit("judge_rewrite", lambda shown, q=q, r=r: rewrite_judge_messages(
            q, shown[0], r, self.system_prompt), [w]) for q, w, r in items]
        keep = [i for i, f in enumerate(fitted) if f.messages is not None]
        requests = [CompletionRequest(fitted[i].messages, 0, "judge_rewrite") for i in keep]
        out = [{"verdict": "left out", "reason": ""} for _ in items]
        for i in keep:
            out[i] = {"verdict": "failed", "reason": ""}
        for j, completion in (self._iter_complete(requests) if requests else ()):
            if completion is not None:
                verdict, reason = parse_verdict(completion.solution)
                if verdict is None:
                    verdict, reason = parse_verdict(completion.thinking)
                out[keep[j]] = {"verdict": verdict or "unparseable", "reason": reason}
        return out

    def _one(self, traces: list[Optional[TeacherTrace]], what: str, problem: Problem) -> TeacherTrace:
        if traces and traces[0] is LEFT_OUT:
            raise TeacherRequestFailed(f"{what} prompt for problem {problem.id!r} does not fit the teacher's "
                                       f"prompt budget ({self.prompt_counts[what].text()})")
        if traces and traces[0] is not None:
            return traces[0]
        raise TeacherRequestFailed(
            f"{what} request for problem {problem.id!r} failed after every retry; it is recorded and "
            "will be retried on the next call"
        )

    def rectify(self, problem: Problem, wrong: TeacherTrace, sample_index: int = 0) -> TeacherTrace:
        return self._one(self.rectify_many([(problem, wrong)], sample_index), "rectify", problem)

    def corrupt(self, problem: Problem, correct: TeacherTrace, sample_index: int = 0) -> TeacherTrace:
        return self._one(self.corrupt_many([(problem, correct)], sample_index), "corrupt", problem)

    def tailor(self, problem: Problem, wrong_attempts: Sequence[str], sample_index: int = 0) -> TeacherTrace:
        fitted = self._fit_tailor(problem, list(wrong_attempts))
        traces = self._fitted_traces("tailor", [problem], [fitted], [sample_index],
                                     [{"n_wrong_attempts": len(wrong_attempts)}])
        return self._one(traces, "tailor", problem)


# Every text above that a teacher is sent, by name: each is hashed into the fingerprint of the stages that send
# it, under the settings they send it (``stage_specs.SENDS``), so editing one reruns exactly those.
# BOXED_INSTRUCTION is part of the collect, rectify and tailor texts.
PROMPTS = {"collect": COLLECT_TEMPLATE, "rectify": RECTIFY_TEMPLATE, "rectify_no_wrong": RECTIFY_TEMPLATE_NO_WRONG,
           "corrupt": CORRUPT_TEMPLATE, "demonstration": DEMONSTRATION_TEMPLATE,
           "contrastive_demos": DEFAULT_CONTRASTIVE_DEMOS, "tailor": TAILOR_TEMPLATE, "attempt": ATTEMPT_TEMPLATE,
           "judge": JUDGE_TEMPLATE, "rewrite_judge": REWRITE_JUDGE_TEMPLATE}
