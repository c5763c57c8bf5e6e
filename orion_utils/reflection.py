"""Stage 03, error-aware reflection: the student rewrites the teacher's CoT around its own mistake.

For each training question the student is shown the question, the teacher's correct CoT and one
of its own wrong solutions, and asked to rewrite the teacher's CoT into one it can follow: keep
the teacher's correct reasoning and, at the step where its own attempt went wrong, reflect on
that mistake explicitly and correct it. Of m candidates, those whose final answer verifies are
accepted and one is picked by a stated rule; with none accepted the teacher's CoT is kept.

A tiny toy student cannot follow such a prompt, so the toy domain uses a rule-based reflector
behind the same interface (it writes an explicit check of the diverging step into the CoT).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

from tqdm.auto import tqdm

from .config import GenerationConfig, StudentConfig
from .grading import grade
from .jsonl import read_jsonl, write_jsonl
from .records import Problem, Refinement, SFTExample, StudentAttempt
from .rundir import RunDir

SELECTION_RULES = ("perplexity", "shortest", "first")

REFLECTION_PROMPT = """You are given a math problem, an expert's worked solution, and your own earlier attempt, which reached a wrong answer.

## Problem
{question}

## Expert solution
{teacher_cot}

## Your earlier attempt (wrong)
{wrong_attempt}

Rewrite the expert solution into one you can follow step by step. Keep the expert's correct reasoning. At the step where your earlier attempt went wrong, stop and reflect explicitly on that mistake: say what you did before, why it is wrong, and what the correct step is. Then continue to the end.
Write your reasoning inside <think> </think>, then give the final solution with the answer in \\boxed{{}}."""


@dataclass
class ReflectionConfig:
    reflector: str = "auto"  # auto: rule for the toy student, llm otherwise | rule | llm
    m: int = 4  # candidates per (question, wrong attempt)
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 4096
    selection: str = "perplexity"  # perplexity (lowest student NLL: most "tailored") | shortest | first
    seed: int = 0


@dataclass
class ReflectionItem:
    problem: Problem
    teacher_cot: str
    wrong_attempt: str


class Reflector(Protocol):
    name: str

    def propose(self, items: Sequence[ReflectionItem], m: int) -> list[list[str]]:
        """Up to m candidate rewritten CoTs per item."""
        ...


class RuleReflector:
    """Toy domain: writes an explicit check of the first diverging step into the teacher's CoT."""

    name = "rule"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def propose(self, items: Sequence[ReflectionItem], m: int) -> list[list[str]]:
        from .toy.reflect import rule_reflect

        out = []
        for item in items:
            candidates = (rule_reflect(item.problem, item.teacher_cot, item.wrong_attempt, variant=v) for v in range(m))
            out.append([c for c in candidates if c])
        return out


class LLMReflector:
    """The student itself, prompted with REFLECTION_PROMPT, samples m rewrites per item."""

    name = "llm"

    def __init__(self, generator, cfg: ReflectionConfig, system: Optional[str] = None):
        self.generator, self.cfg, self.system = generator, cfg, system

    def propose(self, items: Sequence[ReflectionItem], m: int) -> list[list[str]]:
        from .generation import SamplingConfig

        messages = [
            ([{"role": "system", "content": self.system}] if self.system else [])
            + [{"role": "user", "content": REFLECTION_PROMPT.format(
                question=i.problem.question, teacher_cot=i.teacher_cot, wrong_attempt=i.wrong_attempt)}]
            for i in items
        ]
        sampling = SamplingConfig(n=m, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                  max_new_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed)
        outputs = self.generator.generate(messages, sampling, desc="reflecting")
        return [[g.text for g in gens if g.finish_reason == "stop"] for gens in outputs]


def choose_wrong_attempt(errors: Sequence[StudentAttempt], rng: random.Random) -> Optional[StudentAttempt]:
    """One of the student's wrong solutions to reflect on (seeded choice among the distinct ones)."""
    return rng.choice(list(errors)) if errors else None


def select_candidate(candidates: Sequence[str], rule: str, nll: Optional[Sequence[float]] = None) -> int:
    """Index of the accepted candidate to keep, by the stated selection rule."""
    if rule == "first":
        return 0
    if rule == "shortest":
        return min(range(len(candidates)), key=lambda i: (len(candidates[i]), i))
    if rule == "perplexity":
        if nll is None:
            raise ValueError("selection='perplexity' needs the student's NLL of each candidate")
        return min(range(len(candidates)), key=lambda i: (nll[i], i))
    raise ValueError(f"unknown selection rule {rule!r}; choose one of {SELECTION_RULES}")


def refine(
    problems: Sequence[Problem],
    teacher_cots: dict,
    errors_by_problem: dict,
    reflector: Reflector,
    cfg: ReflectionConfig,
    scorer=None,
    batch_size: int = 64,
) -> list[Refinement]:
    """ORION's refinement: candidates, acceptance by answer verification, selection, fallback.

    ``scorer(questions, completions) -> list[float]`` gives the student's NLL of each completion
    (needed for selection='perplexity').
    """
    rng = random.Random(cfg.seed)
    items, item_problems = [], []
    refinements: dict[str, Refinement] = {}
    for p in problems:
        if p.id not in teacher_cots:
            continue
        wrong = choose_wrong_attempt(errors_by_problem.get(p.id, []), rng)
        if wrong is None:  # the student already solves it: nothing to reflect on
            refinements[p.id] = Refinement(p.id, teacher_cots[p.id], teacher_cots[p.id], "", False, 0, 0,
                                           cfg.selection, reflector.name, {"reason": "no error"})
            continue
        items.append(ReflectionItem(p, teacher_cots[p.id], wrong.response))
        item_problems.append(p)
    proposals = []  # (item, distinct candidates, accepted candidates)
    verdicts = []  # per proposal: every candidate with its extracted answer and whether it verified
    for start in tqdm(range(0, len(items), batch_size), desc="reflection", unit="batch"):
        batch = items[start : start + batch_size]
        for item, candidates in zip(batch, reflector.propose(batch, cfg.m)):
            candidates = list(dict.fromkeys(candidates))  # identical rewrites count once
            graded = [(c, grade(c, item.problem.answer)) for c in candidates]
            proposals.append((item, candidates, [c for c, g in graded if g.correct]))
            verdicts.append([{"answer": g.predicted, "verified": g.correct, "text": c} for c, g in graded])
    nll_by_item = _score_all(proposals, scorer) if cfg.selection == "perplexity" else {}
    for index, (item, candidates, accepted) in enumerate(proposals):
        pid = item.problem.id
        if not accepted:
            refinements[pid] = Refinement(pid, item.teacher_cot, item.teacher_cot, item.wrong_attempt, False,
                                          len(candidates), 0, cfg.selection, reflector.name,
                                          {"reason": "no candidate verified", "candidates": verdicts[index]})
            continue
        nll = nll_by_item.get(index)
        pick = select_candidate(accepted, cfg.selection, nll)
        meta = {"reason": "accepted", "candidates": verdicts[index]}
        if nll is not None:
            meta["nll"] = float(nll[pick])
        refinements[pid] = Refinement(pid, item.teacher_cot, accepted[pick], item.wrong_attempt, True,
                                      len(candidates), len(accepted), cfg.selection, reflector.name, meta)
    return [refinements[p.id] for p in problems if p.id in refinements]


def _score_all(proposals, scorer) -> dict:
    """The student's NLL of every accepted candidate, in one batched call (one model load)."""
    if scorer is None:
        raise ValueError("selection='perplexity' needs a scorer giving the student's NLL of each candidate")
    questions, completions, owners = [], [], []
    for index, (item, _, accepted) in enumerate(proposals):
        for c in accepted:
            questions.append(item.problem.question)
            completions.append(c)
            owners.append(index)
    scores = scorer(questions, completions) if completions else []
    by_item: dict = {}
    for owner, score in zip(owners, scores):
        by_item.setdefault(owner, []).append(score)
    return by_item


def acceptance_rate(refinements: Sequence[Refinement]) -> float:
    """Share of questions with a student error whose reflection produced a verified rewrite."""
    with_error = [r for r in refinements if r.wrong_attempt]
    return sum(r.accepted for r in with_error) / len(with_error) if with_error else 0.0


def resolve_reflector_kind(cfg: ReflectionConfig, student: StudentConfig) -> str:
    if cfg.reflector == "auto":
        return "rule" if student.model == "toy" else "llm"
    if cfg.reflector not in ("rule", "llm"):
        raise ValueError(f"reflection.reflector must be auto, rule or llm, got {cfg.reflector!r}")
    return cfg.reflector


def run_reflection(
    run: RunDir,
    cfg: ReflectionConfig,
    student: Optional[StudentConfig] = None,
    generation: Optional[GenerationConfig] = None,
    force: bool = False,
) -> dict:
    """Write ``refinements.jsonl`` and the ORION training set ``sft_orion.jsonl``."""
    student, generation = student or StudentConfig(), generation or GenerationConfig()
    if cfg.selection not in SELECTION_RULES:
        raise ValueError(f"reflection.selection must be one of {SELECTION_RULES}, got {cfg.selection!r}")
    kind = resolve_reflector_kind(cfg, student)
    inputs = [run.data("train_problems.jsonl"), run.data("sft_sft.jsonl"), run.data("error_attempts.jsonl")]
    outputs = [run.data("refinements.jsonl"), run.data("sft_orion.jsonl")]

    def work() -> dict:
        from .generation import completion_nll, open_generator

        problems = read_jsonl(inputs[0], Problem)
        teacher_examples = read_jsonl(inputs[1], SFTExample)
        teacher_cots = {e.problem_id: e.response for e in teacher_examples}
        errors: dict[str, list] = {}
        for a in read_jsonl(inputs[2], StudentAttempt):
            errors.setdefault(a.problem_id, []).append(a)
        model_path = run.student_model()
        template, system = student.prompt_template, student.system_prompt or None
        generator = None
        if kind == "llm":
            generator = open_generator(model_path, generation, seed=cfg.seed)
            reflector: Reflector = LLMReflector(generator, cfg, system)
        else:
            reflector = RuleReflector(cfg.seed)
        print(f"[reflection] reflector={reflector.name} m={cfg.m} selection={cfg.selection}")

        def scorer(questions, completions):
            return completion_nll(model_path, None, questions, completions, prompt_template=template, system=system)

        try:
            refinements = refine(problems, teacher_cots, errors, reflector, cfg, scorer)
        finally:
            if generator is not None:
                generator.close()
        write_jsonl(outputs[0], refinements)
        by_id = {e.problem_id: e for e in teacher_examples}
        write_jsonl(outputs[1], [
            SFTExample(r.problem_id, by_id[r.problem_id].question, r.refined_cot,
                       "refined" if r.accepted else "teacher", {"accepted": r.accepted})
            for r in refinements
        ])
        rate = acceptance_rate(refinements)
        print(f"[reflection] acceptance rate {rate:.1%} over {sum(bool(r.wrong_attempt) for r in refinements)} "
              f"questions with a student error")
        return {"reflector": reflector.name, "acceptance_rate": rate}

    params = {"reflection": cfg, "reflector": kind, "student": student}
    return run.run_stage("reflection", params, inputs, outputs, work, force=force, stage_hint="02_error_exposure")
