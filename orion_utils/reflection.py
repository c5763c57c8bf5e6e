"""Stage 03, error-aware reflection: the student rewrites the teacher's CoT around its own mistake.

For each training question the student is shown the question, the teacher's correct CoT and one
of its own wrong solutions, and asked to rewrite the teacher's CoT into one it can follow: keep
the teacher's correct reasoning and, at the step where its own attempt went wrong, reflect on
that mistake explicitly and correct it. Of m candidates, those whose final answer verifies AND that
quote the wrong attempt near reflection language AND keep the teacher's derived values AND are not
a near-copy of the teacher's CoT are accepted (``acceptance``), and one is picked by a stated rule;
with none accepted the teacher's CoT is kept.

A tiny toy student cannot follow such a prompt, so the toy domain has two stand-ins behind the same
interface. ``student`` (the toy default): rules find the step where the student's attempt diverged
and phrase an explicit check of it; the reasoning before it is the student's own attempt (or the
teacher's CoT where the attempt is not clean there), its wrong line is quoted, and the student
model itself writes the rest, m sampled continuations. ``rule``: the whole reflection is written by
rule into the teacher's CoT.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field, replace
from typing import Optional, Protocol, Sequence

from .acceptance import (
    Unfinished,
    acceptance_line,
    acceptance_summary,
    check_candidate,
    prompt_scaffolding,
    reference,
    wrong_markers,
    wrong_step_span,
)
from .config import GenerationConfig, StudentConfig, ParallelConfig
from .generation import StageModel
from .grading import grade
from .jsonl import read_jsonl, write_jsonl
from .numerics import NonFiniteError, degenerate_note
from .records import Problem, Refinement, SFTExample, StudentAttempt
from .rewrite_judge import judge_candidates, judge_line, judge_summary, make_rewrite_judge
from .reflection_prompt import REFLECTION_PROMPT
from .rundir import RunDir, chunk_seed, run_in_chunks
from .sections import REFLECTORS, SELECTION_RULES, ReflectionConfig  # the section: reflection.ReflectionConfig
from .stage_specs import fingerprint


@dataclass
class ReflectionItem:
    problem: Problem
    teacher_cot: str
    wrong_attempt: str


class Reflector(Protocol):
    name: str

    def propose(self, items: Sequence[ReflectionItem], m: int, seed: Optional[int] = None) -> list[list[str]]:
        """Up to m candidate rewritten CoTs per item; one that samples draws them with ``seed`` (None: its
        configured ``seed``), which ``refine`` makes per chunk (``rundir.chunk_seed``)."""
        ...


class RuleReflector:
    """Toy domain: writes an explicit check of the first diverging step into the teacher's CoT."""

    name = "rule"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def propose(self, items: Sequence[ReflectionItem], m: int, seed: Optional[int] = None) -> list[list[str]]:
        from .toy.reflect import rule_reflect  # written by rule: no sampling, nothing to seed

        out = []
        for item in items:
            candidates = (rule_reflect(item.problem, item.teacher_cot, item.wrong_attempt, variant=v) for v in range(m))
            out.append([c for c in candidates if c])
        return out


class StudentReflector:
    """Toy domain: the student model writes its own rewrite around its error.

    Rules (``toy.reflect.rewrite_start``) find the diverging step and write the beginning: the
    reasoning before that step (the student's own attempt where it is clean, else the teacher's),
    the student's wrong line quoted, and an explicit check of it ending on the corrected step. The
    student model then samples m continuations from there (``cfg.temperature``/``top_p``); the
    refinement stage accepts those whose answer verifies and selects one as usual.

    It samples through a generation backend (``orion_utils.generation``, transformers or vLLM, each
    with its own thread and device rules): the question in the student's template, the beginning as the
    answer's start (``assistant_prefix``), which the model continues; a continuation that does not end
    its turn within the context is kept as ``acceptance.Unfinished`` and counted among the rejections. ``generator``: an open backend (stage 03 passes the one its
    ``StageModel`` holds, which also scores), or a model path, opened on first use with the transformers
    backend and closed by ``close()``."""

    name = "student"

    def __init__(self, generator, cfg: ReflectionConfig, prompt_template: str = "{question}",
                 system: Optional[str] = None):
        owned = isinstance(generator, (str, os.PathLike))
        self.model_path = os.fspath(generator) if owned else getattr(generator, "model_path", "")
        self._generator, self._owns = (None if owned else generator), owned
        self.cfg, self.template, self.system = cfg, prompt_template, system

    def generator(self):
        if self._generator is None:
            from .generation import load_generator

            self._generator = load_generator(self.model_path, "transformers", progress=False)
        return self._generator

    def close(self) -> None:
        generator, self._generator = self._generator, None
        if generator is not None and self._owns:
            generator.close()

    def start(self, item: ReflectionItem):
        from .toy.reflect import rewrite_start

        return rewrite_start(item.problem, item.teacher_cot, item.wrong_attempt)

    def loss_mask_spans(self, item: ReflectionItem, candidate: str) -> list:
        """Character spans of ``candidate`` holding the quoted wrong step."""
        begin = self.start(item)
        if begin is None or begin.wrong_span is None or not candidate.startswith(begin.text):
            return []
        return [list(begin.wrong_span)]

    def propose(self, items: Sequence[ReflectionItem], m: int, seed: Optional[int] = None) -> list[list[str]]:
        from .generation import SamplingConfig

        starts = [(k, self.start(i)) for k, i in enumerate(items)]
        rows = [(k, items[k].problem.question, s.text) for k, s in starts if s is not None]
        out: list[list[str]] = [[] for _ in items]
        if not rows:
            return out
        gen = self.generator()
        sampling = SamplingConfig(n=m, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                  max_new_tokens=self._room(gen, rows), seed=self.cfg.seed if seed is None else seed)
        outputs = gen.generate([q for _, q, _ in rows], sampling, prompt_template=self.template, system=self.system,
                               desc="reflecting", assistant_prefix=[t for _, _, t in rows])
        for (k, _, text), gens in zip(rows, outputs):
            out[k] = [text + g.text if g.finish_reason == "stop" else Unfinished(text + g.text) for g in gens]
        return out

    def _room(self, gen, rows) -> int:
        """``cfg.max_new_tokens``, at most what the context leaves after the longest prompt."""
        from .budget import context_length
        from .generation import encode_prompts

        context = context_length(gen)
        if not context:
            return self.cfg.max_new_tokens
        encoded = encode_prompts(gen.tokenizer, [q for _, q, _ in rows], self.template, self.system,
                                 [t for _, _, t in rows])
        longest = max(len(ids) for ids in encoded)
        return max(1, min(self.cfg.max_new_tokens, context - longest))


class LLMReflector:
    """The student itself, prompted with REFLECTION_PROMPT, samples m rewrites per item.

    Each prompt is fitted to the engine first (``orion_utils.budget``: its context less
    ``cfg.max_new_tokens``): the wrong attempt's middle is cut, never its ending; an item whose question
    and teacher CoT do not fit gets no candidate (the teacher's CoT is kept). ``budget_counts`` says how
    many prompts fit as built, were cut, were left out; ``outcomes`` each item's of the last call. A rewrite cut
    off at ``max_new_tokens`` is proposed as ``acceptance.Unfinished``: counted among the rejections
    ("unfinished"), never accepted."""

    name = "llm"

    def __init__(self, generator, cfg: ReflectionConfig, system: Optional[str] = None, max_model_len: int = 0):
        self.generator, self.cfg, self.system = generator, cfg, system
        self.max_model_len, self.budget, self.budget_counts = max_model_len, None, None
        self.outcomes: list[str] = []

    def _fitting(self):
        from .budget import generator_budget

        if self.budget is None:
            self.budget = generator_budget(self.generator, self.cfg.max_new_tokens, self.max_model_len)
            self.budget_counts = self.budget.counts()
        return self.budget

    def recount(self, outcomes: Sequence[str]) -> None:
        """``budget_counts`` over these items' outcomes: the stage's every item, those of chunks an earlier
        attempt finished too (``refine`` keeps each item's outcome with its candidates)."""
        if outcomes or self.budget_counts is not None:
            self.budget_counts = self._fitting().counts()
            for outcome in outcomes:
                self.budget_counts.add(outcome)

    def _messages(self, item: ReflectionItem, wrong_attempt: str) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": REFLECTION_PROMPT.format(
                question=item.problem.question, teacher_cot=item.teacher_cot, wrong_attempt=wrong_attempt)}]

    def propose(self, items: Sequence[ReflectionItem], m: int, seed: Optional[int] = None) -> list[list[str]]:
        from .generation import SamplingConfig

        budget = self._fitting()
        fitted = [budget.fit(lambda parts, i=i: self._messages(i, parts[0]), [i.wrong_attempt]) for i in items]
        self.outcomes = [f.outcome for f in fitted]
        for f in fitted:
            self.budget_counts.add(f.outcome)
        keep = [k for k, f in enumerate(fitted) if f.messages is not None]
        sampling = SamplingConfig(n=m, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                  max_new_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed if seed is None else seed)
        outputs = self.generator.generate([fitted[k].messages for k in keep], sampling, desc="reflecting") \
            if keep else []
        out: list[list[str]] = [[] for _ in items]
        for k, gens in zip(keep, outputs):
            out[k] = [g.text if g.finish_reason == "stop" else Unfinished(g.text) for g in gens]
        return out


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
        scored = [i for i in range(len(candidates)) if nll[i] is not None and math.isfinite(nll[i])]
        if not scored:  # NaN never wins a selection (completion_nll raises before, where it scores)
            raise NonFiniteError(f"every candidate's NLL is NaN or infinite ({list(nll)}): nothing to select by")
        return min(scored, key=lambda i: (nll[i], i))
    raise ValueError(f"unknown selection rule {rule!r}; choose one of {SELECTION_RULES}")


CHUNK_STEPS = ("candidates", "selected")  # what stage 03 saves chunk by chunk (RunDir.refinements_partial)


@dataclass
class Proposal:
    """One item's distinct candidate rewrites, each one's verdict (``_check``) and how its prompt met the
    prompt budget (``LLMReflector.outcomes``; '' for the other reflectors): a finished generation chunk's
    record in stage 03's scratch."""

    problem_id: str
    candidates: list = field(default_factory=list)
    verdicts: list = field(default_factory=list)
    prompt: str = ""


def refine(
    problems: Sequence[Problem],
    teacher_cots: dict,
    errors_by_problem: dict,
    reflector: Reflector,
    cfg: ReflectionConfig,
    scorer=None,
    partials: Optional[dict] = None,
    judge=None,
) -> list[Refinement]:
    """ORION's refinement: candidates, acceptance (a verified answer and ``acceptance``'s checks, each
    candidate's statistics and first failed check in ``meta["candidates"]``), selection, fallback.

    ``scorer(questions, completions) -> list[float]`` gives the student's NLL of each completion: of every
    accepted candidate for selection='perplexity' (which needs it), else of the pick, and of the teacher CoT
    it replaces, kept in ``meta`` (``nll``, ``teacher_nll``) for ``mechanism_perplexity``.

    Two steps (``CHUNK_STEPS``), each in chunks of ``cfg.chunk_questions`` items (``rundir.run_in_chunks``):
    the candidates, sampled with ``rundir.chunk_seed(cfg.seed, "reflection", the chunk's question ids)`` and
    checked; then, once all are there (a stage that holds one model at a time switches from generating to
    scoring once), the scores and the pick. ``partials`` ({step: path}): where each finished chunk is
    appended and read back from on a retry, so the refinements are the same with or without an interruption.
    ``judge``: a teacher with ``judge_rewrites_many`` (``reflection.judge``, ``rewrite_judge``), asked in the
    candidate step about each candidate that passed every rule; None: no judge.
    """
    if cfg.selection == "perplexity" and scorer is None:
        raise ValueError("selection='perplexity' needs a scorer giving the student's NLL of each candidate")
    rng = random.Random(cfg.seed)
    items = []
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
    partials, desc = partials or {}, f"reflection/{reflector.name}"
    proposals = run_in_chunks(items, cfg.chunk_questions, lambda _, chunk: _propose(reflector, chunk, cfg, judge),
                              partial=partials.get("candidates"), cls=Proposal, per_item=1,
                              item_id=lambda item: item.problem.id, desc=desc)
    recount = getattr(reflector, "recount", None)  # a prompt budget counts every item's prompt, read back too
    if recount is not None:
        recount([p.prompt for p in proposals if p.prompt])
    picked = run_in_chunks(list(zip(items, proposals)), cfg.chunk_questions,
                           lambda _, chunk: _select(chunk, reflector, cfg, scorer), partial=partials.get("selected"),
                           cls=Refinement, per_item=1, item_id=lambda pair: pair[0].problem.id, desc=f"{desc} selection")
    refinements.update((r.problem_id, r) for r in picked)
    return [refinements[p.id] for p in problems if p.id in refinements]


def _propose(reflector: Reflector, chunk: list, cfg: ReflectionConfig, judge=None) -> list[Proposal]:
    """One chunk's candidates, sampled with the chunk's own seed, each put through ``_check``; those that pass
    every check then go to the ``judge`` when there is one (``rewrite_judge.judge_candidates``)."""
    proposed = reflector.propose(chunk, cfg.m, seed=chunk_seed(cfg.seed, "reflection", [i.problem.id for i in chunk]))
    prompts = getattr(reflector, "outcomes", None) or [""] * len(chunk)
    scaffolding, out = prompt_scaffolding(REFLECTION_PROMPT), []
    for item, candidates, prompt in zip(chunk, proposed, prompts):
        candidates = list(dict.fromkeys(candidates))  # identical rewrites count once
        ref = reference(item.teacher_cot, item.wrong_attempt, item.problem.question, scaffolding)  # once per item
        out.append(Proposal(item.problem.id, [str(c) for c in candidates], [_check(item, c, cfg, ref) for c in candidates],
                            prompt))
    if judge is not None:
        judge_candidates(judge, chunk, [p.verdicts for p in out])
    return out


def _select(pairs: list, reflector: Reflector, cfg: ReflectionConfig, scorer) -> list[Refinement]:
    """One chunk's refinements from its (item, ``Proposal``) pairs: the pick among the accepted candidates by
    ``cfg.selection``, else the teacher's CoT. With a scorer, one call scores what the rule needs (every
    accepted candidate for perplexity, else the pick) and the teacher CoT of each item with a pick."""
    accepted = [[c for c, v in zip(p.candidates, p.verdicts) if v["rejected"] is None] for _, p in pairs]
    picks = {k: select_candidate(a, cfg.selection) for k, a in enumerate(accepted) if a and cfg.selection != "perplexity"}
    scored = {k: (a if cfg.selection == "perplexity" else [a[picks[k]]]) + [pairs[k][0].teacher_cot]
              for k, a in enumerate(accepted) if a and scorer is not None}
    values = iter(scorer([pairs[k][0].problem.question for k, texts in scored.items() for _ in texts],
                         [t for texts in scored.values() for t in texts]) if scored else [])
    nll = {k: [next(values) for _ in texts] for k, texts in scored.items()}
    out = []
    for k, ((item, proposal), ok) in enumerate(zip(pairs, accepted)):
        pid, verdicts, n = item.problem.id, proposal.verdicts, len(proposal.candidates)
        if not ok:
            reason = "no candidate accepted" if any(v["verified"] for v in verdicts) else "no candidate verified"
            out.append(Refinement(pid, item.teacher_cot, item.teacher_cot, item.wrong_attempt, False, n, 0,
                                  cfg.selection, reflector.name, {"reason": reason, "candidates": verdicts}))
            continue
        if cfg.selection == "perplexity":
            picks[k] = select_candidate(ok, cfg.selection, nll[k][:-1])
        meta = {"reason": "accepted", "candidates": verdicts}
        if k in nll:
            meta["nll"] = float(nll[k][picks[k] if cfg.selection == "perplexity" else 0])
            meta["teacher_nll"] = float(nll[k][-1])
        spans = _wrong_step_spans(reflector, item, ok[picks[k]], cfg)
        out.append(Refinement(pid, item.teacher_cot, ok[picks[k]], item.wrong_attempt, True, n, len(ok),
                              cfg.selection, reflector.name, meta, wrong_step_spans=spans))
    return out


def _check(item: ReflectionItem, candidate: str, cfg: ReflectionConfig, ref=None) -> dict:
    """One candidate graded and put through the acceptance checks (``acceptance.check_candidate``; ``ref``:
    the item's ``acceptance.reference``, built once for its candidates)."""
    g = grade(candidate, item.problem.answer)
    ref = ref or reference(item.teacher_cot, item.wrong_attempt, item.problem.question)
    stats = check_candidate(candidate, g.correct, ref, cfg.thresholds())
    return {"answer": g.predicted, "verified": g.correct, **stats, "text": str(candidate)}


def _wrong_step_spans(reflector, item: ReflectionItem, text: str, cfg: ReflectionConfig) -> list:
    """Where the chosen rewrite quotes the wrong step: the reflector's own record where it keeps one
    (the toy ``student`` reflector), else the quoted wrong line/equation the "reflects" check found."""
    spans_of = getattr(reflector, "loss_mask_spans", None)
    if spans_of is not None:
        return spans_of(item, text)
    span = wrong_step_span(text, wrong_markers(item.wrong_attempt, item.teacher_cot, item.problem.question),
                           cfg.reflect_window)
    return [list(span)] if span else []


def mechanism_perplexity(refinements: Sequence[Refinement], questions: dict, scorer) -> dict:
    """ORION's mechanism, measured: the student's perplexity (exp of the mean over CoTs of the per-token
    mean NLL, as ``analysis.cot_perplexity``) of the accepted rewrites and of the teacher CoTs they
    replace, on the same questions. Lower than the teacher's = more natural to the student."""
    import math

    accepted = [r for r in refinements if r.accepted]
    if not accepted:
        return {"n": 0, "refined": None, "teacher": None}
    qs = [questions[r.problem_id] for r in accepted]
    if all("nll" in r.meta and "teacher_nll" in r.meta for r in accepted):  # ``refine`` scored both
        nll = [float(r.meta["nll"]) for r in accepted] + [float(r.meta["teacher_nll"]) for r in accepted]
    elif all("nll" in r.meta for r in accepted):  # selection by perplexity scored the picks already
        nll = [float(r.meta["nll"]) for r in accepted] + list(scorer(qs, [r.teacher_cot for r in accepted]))
    else:
        nll = list(scorer(qs + qs, [r.refined_cot for r in accepted] + [r.teacher_cot for r in accepted]))

    def ppl(values):
        finite = [v for v in values if v is not None and math.isfinite(v)]
        return math.exp(sum(finite) / len(finite)) if finite else None

    refined, teacher = ppl(nll[: len(accepted)]), ppl(nll[len(accepted):])
    return {"n": len(accepted), "refined": None if refined is None else round(refined, 4),
            "teacher": None if teacher is None else round(teacher, 4)}


def acceptance_rate(refinements: Sequence[Refinement]) -> float:
    """Share of questions with a student error whose reflection produced a verified rewrite."""
    with_error = [r for r in refinements if r.wrong_attempt]
    return sum(r.accepted for r in with_error) / len(with_error) if with_error else 0.0


def resolve_reflector_kind(cfg: ReflectionConfig, student: StudentConfig) -> str:
    if cfg.reflector == "auto":
        return "student" if student.model == "toy" else "llm"
    if cfg.reflector not in REFLECTORS:
        raise ValueError(f"reflection.reflector must be auto or one of {REFLECTORS}, got {cfg.reflector!r}")
    return cfg.reflector


def run_reflection(
    run: RunDir,
    cfg: ReflectionConfig,
    student: Optional[StudentConfig] = None,
    generation: Optional[GenerationConfig] = None,
    teacher_cfg=None,
    data=None,
    force: bool = False, parallel: Optional[ParallelConfig] = None,
) -> dict:
    """Write ``refinements.jsonl`` and the ORION training set ``training_set_orion.jsonl``. Each reflector's
    finished chunks (``refine``) are saved as the stage goes (``RunDir.refinements_partial``, its scratch):
    a crash or a disconnect loses at most one, and a re-run gives the same files. ``teacher_cfg``, ``data``:
    the profile's teacher, the judge of the rewrites when ``cfg.judge`` is on (``rewrite_judge``); read only then."""
    student, generation = student or StudentConfig(), generation or GenerationConfig()
    if cfg.selection not in SELECTION_RULES:
        raise ValueError(f"reflection.selection must be one of {SELECTION_RULES}, got {cfg.selection!r}")
    kind = resolve_reflector_kind(cfg, student)
    if cfg.compare == kind:
        raise ValueError(f"reflection.compare: {cfg.compare!r} is this run's reflector already; name another one or ''")
    judged_by = (teacher_cfg, data) if cfg.judge else (None, None)  # in the fingerprint only when asked
    # the reflector resolved: what it sends (stage_specs.SENDS), and "auto" and the kind it means are one setting
    params, models = fingerprint(run, "reflection", replace(cfg, reflector=kind), student, generation, *judged_by)
    inputs = [run.train_problems, run.teacher_sft_set, run.error_attempts, *models]
    outputs = [run.refinements, run.orion_sft_set] + ([run.reflector_comparison] if cfg.compare else [])
    partials = {k: {step: run.refinements_partial(k, step) for step in CHUNK_STEPS}
                for k in [kind] + ([cfg.compare] if cfg.compare else [])}
    scratch = [path for steps in partials.values() for path in steps.values()]

    def work() -> dict:
        problems, teacher_examples, teacher_cots, errors = _read_inputs(*inputs[:3])
        judge = make_rewrite_judge(cfg, teacher_cfg, data, str(run.teacher_cache))
        model_path = run.student_model()
        template, system = student.prompt_template, student.system_prompt or None
        # One model at a time (`generation.StageModel`): the `llm` reflector's generator, then the scorer
        # (selection, mechanism), which shares a transformers generator's model and otherwise closes the
        # engine before the student loads; the toy `student` reflector samples with the same generator.
        with StageModel(model_path, generation, seed=cfg.seed, parallel=parallel) as base:
            prompting, inputs_ = (template, system, generation.max_model_len), (problems, teacher_cots, errors)

            def scorer(questions, completions):
                return base.score(questions, completions, prompt_template=template, system=system)

            refinements, summary = _reflect(kind, base, cfg, prompting, inputs_, scorer, partials[kind], judge)
            write_jsonl(outputs[0], refinements)
            by_id = {e.problem_id: e for e in teacher_examples}
            write_jsonl(outputs[1], [
                SFTExample(r.problem_id, by_id[r.problem_id].question, r.refined_cot,
                           "refined" if r.accepted else "teacher", {"accepted": r.accepted},
                           loss_mask_spans=r.wrong_step_spans if cfg.mask_wrong_step else [])
                for r in refinements
            ])
            if cfg.compare:  # the same wrong attempts (``refine`` draws them with the same seed), never trained on
                print(f"[reflection] compare: reflector {cfg.compare} on the same wrong attempts (not trained on)")
                compared, summary["compare"] = _reflect(cfg.compare, base, cfg, prompting, inputs_, scorer,
                                                        partials[cfg.compare], judge)
                write_jsonl(outputs[2], compared)
        for path in scratch:
            path.unlink(missing_ok=True)
        if judge is not None:  # what the judge's requests cost: the report's teacher bill adds it up
            from .budget import prompt_budget
            from .collection import teacher_usage

            budgets = {**summary.get("prompt_budget", {}), **prompt_budget(judge).get("prompt_budget", {})}
            summary.update({"prompt_budget": budgets, **teacher_usage(judge)})
        return summary

    return run.run_stage("reflection", params, inputs, outputs, work, force=force, stage_hint="02_error_exposure",
                         scratch=scratch)


def _reflect(kind: str, base: StageModel, cfg: ReflectionConfig, prompting: tuple, data: tuple,
             scorer, partials: Optional[dict] = None, judge=None) -> tuple[list[Refinement], dict]:
    """One reflector of ``kind`` over the stage's wrong attempts (``data``: questions, teacher CoTs by
    question, wrong attempts by question): its refinements, and what the manifest keeps of it (name,
    acceptance rate, acceptance checks, mechanism, prompt budget), each printed as a stage line.
    ``partials``: where ``refine`` saves its finished chunks ({step: path}); ``judge``: the rewrite judge or None."""
    problems, teacher_cots, errors = data
    reflector = _make_reflector(kind, base, cfg, *prompting)
    try:
        refinements = refine(problems, teacher_cots, errors, reflector, cfg, scorer, partials, judge)
    finally:
        if isinstance(reflector, StudentReflector):
            reflector.close()
    budget = _budget_note(reflector)
    rate = acceptance_rate(refinements)
    texts = [c["text"] for r in refinements for c in r.meta.get("candidates", [])]  # numerics.is_degenerate
    print(f"[reflection] acceptance rate {rate:.1%} over {sum(bool(r.wrong_attempt) for r in refinements)} "
          f"questions with a student error; {degenerate_note(texts, 'candidate rewrites')}")
    checks = acceptance_summary(refinements, cfg.mask_wrong_step)
    print(f"[reflection] {acceptance_line(checks)}")
    print(f"[reflection] {judge_line(judge_summary(refinements), judge is not None)}")
    mechanism = mechanism_perplexity(refinements, {p.id: p.question for p in problems}, scorer)
    _print_mechanism(mechanism)
    return refinements, {"reflector": reflector.name, "acceptance_rate": rate, "mechanism": mechanism,
                         "acceptance": checks, **budget, **({"judge": judge_summary(refinements)} if judge is not None else {})}


def _read_inputs(problems_path, teacher_set_path, errors_path) -> tuple:
    """Stage 03's inputs: the training questions, the teacher's SFT examples, their CoTs by question and
    the student's wrong attempts by question."""
    problems = read_jsonl(problems_path, Problem)
    teacher_examples = read_jsonl(teacher_set_path, SFTExample)
    teacher_cots = {e.problem_id: e.response for e in teacher_examples}
    errors: dict[str, list] = {}
    for a in read_jsonl(errors_path, StudentAttempt):
        errors.setdefault(a.problem_id, []).append(a)
    return problems, teacher_examples, teacher_cots, errors


def _make_reflector(kind: str, base: StageModel, cfg: ReflectionConfig, template: str, system: Optional[str],
                    max_model_len: int) -> Reflector:
    """The reflector of ``kind``, sampling with the stage's one model (``base``); its settings printed."""
    if kind == "llm":
        reflector: Reflector = LLMReflector(base.generator(), cfg, system, max_model_len)
    elif kind == "student":
        reflector = StudentReflector(base.generator(), cfg, template, system)
    else:
        reflector = RuleReflector(cfg.seed)
    print(f"[reflection] reflector={reflector.name} m={cfg.m} selection={cfg.selection} "
          f"reflect_window={cfg.reflect_window} min_coverage={cfg.min_coverage} "
          f"min_added_chars={cfg.min_added_chars} reject_echoes={cfg.reject_echoes}")
    return reflector


def _print_mechanism(mechanism: dict) -> None:
    print(f"[reflection] base-student perplexity, refined vs teacher CoTs of the {mechanism['n']} accepted "
          f"rewrites: {mechanism['refined']} vs {mechanism['teacher']}" if mechanism["n"] else
          "[reflection] no accepted rewrite to measure")


def _budget_note(reflector) -> dict:
    """The LLM reflector's prompt-budget counts: printed as the stage's line, kept in the manifest."""
    from .budget import stage_line, summary

    counts = getattr(reflector, "budget_counts", None)
    if counts is None:
        return {}
    print(stage_line("reflection", {"reflect": counts}))
    return {"prompt_budget": summary({"reflect": counts})}


def pick_refinement(refinements: Sequence[Refinement], problem_id: Optional[str] = None) -> Refinement:
    """The refinement of ``problem_id``, else the most instructive one: an accepted rewrite chosen among
    several candidates, else any accepted one, else one whose candidates all failed, else the first."""
    if problem_id is not None:
        return next(r for r in refinements if r.problem_id == problem_id)
    for keep in (lambda r: r.accepted and r.n_candidates > 1, lambda r: r.accepted,
                 lambda r: r.meta.get("candidates"), lambda r: True):
        found = [r for r in refinements if keep(r)]
        if found:
            return found[0]
    raise ValueError("no refinements to look at")


def _after_verification(rejected: Optional[str]) -> Optional[str]:
    """The first acceptance check a candidate that verifies (now) failed: its stored reason, but for
    ``unverified``, which a regrade overrides."""
    return None if rejected == "unverified" else rejected


def look_inside(run: RunDir, problem_id: Optional[str] = None, score: bool = True, show: bool = True) -> dict:
    """ORION's refinement of one question, replayed from ``refinements.jsonl``: the m candidate rewrites,
    each graded again (``grading.grade``: does its answer verify?) with the first acceptance check it
    failed (stored), each one's mean per-token NLL under the base student (``generation.completion_nll``,
    as the selection scored them), and the candidate ``select_candidate`` picks among the accepted ones
    by the run's rule, checked against the stored pick."""
    from .chat import run_prompt_format
    from .display import key_values, markdown, table

    r = pick_refinement(read_jsonl(run.refinements, Refinement), problem_id)
    problem = {p.id: p for p in read_jsonl(run.train_problems, Problem)}[r.problem_id]
    texts = [c["text"] for c in r.meta.get("candidates", [])]
    graded = [grade(t, problem.answer) for t in texts]
    nll = [None] * len(texts)
    if score and texts:
        from .generation import completion_nll

        template, system = run_prompt_format(run)
        nll = completion_nll(run.student_model(), None, [problem.question] * len(texts), texts,
                             prompt_template=template, system=system)
    stored = r.meta.get("candidates", [])
    # acceptable: verified again, and passed the stored acceptance checks (records without them: verified)
    verified = [i for i, g in enumerate(graded) if g.correct and _after_verification(stored[i].get("rejected")) is None]
    pick = None
    if verified and (r.selection_rule != "perplexity" or score):
        chosen = select_candidate([texts[i] for i in verified], r.selection_rule, [nll[i] for i in verified])
        pick = verified[chosen]
    rows = [{"candidate": i, "answer": g.predicted, "verified": g.correct,
             "rejected": "unfinished" if stored[i].get("rejected") == "unfinished" else
             "unverified" if not g.correct else _after_verification(stored[i].get("rejected")),
             "nll": None if v is None else round(float(v), 4), "picked": i == pick, "text": t}
            for i, (t, g, v) in enumerate(zip(texts, graded, nll))]
    look = {"problem_id": r.problem_id, "question": problem.question, "gold": problem.answer,
            "wrong_attempt": r.wrong_attempt, "candidates": rows, "selection_rule": r.selection_rule,
            "outcome": r.meta.get("reason", ""), "n_candidates": r.n_candidates, "picked": pick,
            "matches_stored_pick": (texts[pick] == r.refined_cot) if pick is not None else not r.accepted,
            "refined_cot": r.refined_cot}
    if show:
        shown = ("problem_id", "question", "gold", "outcome", "n_candidates", "selection_rule", "picked",
                 "matches_stored_pick")
        key_values({k: look[k] for k in shown}, title="one question's reflection")
        if r.wrong_attempt:
            markdown(f"**The student's wrong attempt**\n\n```\n{r.wrong_attempt}\n```")
        table(rows, ["candidate", "answer", "verified", "rejected", "nll", "picked", "text"], max_chars=400,
              title=f"{len(rows)} candidate rewrites (nll: base student, lower = more natural to it)")
    return look
