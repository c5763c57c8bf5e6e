"""Stage 01, teacher CoT collection: long chains of thought from the teacher, kept if they verify.

One interface for every teacher (toy, API, trace dataset, local model). Every trace is saved in
``teacher_traces.jsonl``; the first correct trace per question becomes the plain long-CoT SFT
training set ``training_set_sft.jsonl``, which ORION's reflection stage starts from.

**The question set** (``data/question_set.json``, ``RunDir.question_set``) is decided here, once, for
every CoT-trained method (``sft``, ``orion``, ``edit``, ``tailored``). The rule, with
``training.same_questions`` on (the default): a training question is in every method's training set
when it has a verified teacher CoT that the student can be trained on whole, i.e. that fits
``training.max_seq_len`` in the student's tokens (prompt + assistant turn, as training counts it)
when ``training.overlong`` is ``drop`` (with ``truncate`` every verified CoT is trained on, cut); the
SFT set's CoT of a question is its first verified CoT that fits. Every other question is in no
method's set, and the file says why. Each method's builder keeps to it: ORION's rewrites cover the
SFT set's questions, and a rewrite longer than ``max_seq_len`` is replaced by the question's teacher
CoT when stage 04 trains (``fit_to_question_set``), so the question stays; EDIT and Tailored Learning
take only these questions, and a question for which Tailored Learning's teacher gives no verified
rationale that fits gets the stage-01 CoT instead (``QuestionSetTeacher``). ``same_questions: false``
lets each method keep what its own data gives (the report's training-set table says what differs).
"""
from __future__ import annotations

import json
from typing import Callable, Optional

from .config import TEACHER_KINDS, DataConfig, StudentConfig, TeacherConfig, TrainingConfig, ParallelConfig
from .jsonl import read_jsonl, write_json, write_jsonl
from .records import Problem, SFTExample, TeacherTrace
from .rundir import RunDir
from .stage_specs import fingerprint


def make_teacher(cfg: TeacherConfig, data: Optional[DataConfig] = None, cache_dir: Optional[str] = None,
                 parallel: Optional[ParallelConfig] = None):
    """Build the teacher a profile names (``parallel``: the devices a local teacher generates on)."""
    if cfg.kind == "toy":
        from .teachers.toy import ToyTeacher

        return ToyTeacher(error_rate=cfg.error_rate, seed=cfg.seed, wording=cfg.wording)
    if cfg.kind == "api":
        from .teachers.api import APITeacher

        if not cfg.base_url or not cfg.model:
            raise ValueError("teacher.kind='api' needs teacher.base_url and teacher.model")
        teacher = APITeacher(
            base_url=cfg.base_url, model=cfg.model, api_key_env=cfg.api_key_env or None,
            concurrency=cfg.concurrency, cache_dir=cache_dir, timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries, temperature=cfg.temperature, top_p=cfg.top_p,
            max_tokens=cfg.max_tokens, price_input_per_m=cfg.price_input_per_m,
            price_output_per_m=cfg.price_output_per_m,
            key_seed=cfg.seed if cfg.samples_per_seed else None,  # the cache is shared by the run's seeds
        )
        teacher.max_context_tokens = cfg.max_context_tokens  # its prompt budget (orion_utils.budget)
        return teacher
    if cfg.kind == "dataset":
        from .teachers.datasets import DatasetTeacher

        data = data or DataConfig()
        return DatasetTeacher.from_dataset(data.train_source, data_dir=data.train_dir or None, limit=data.n_train)
    if cfg.kind == "local":
        from .teachers.local import LocalTeacher

        vllm_kwargs = {k: v for k, v in (("gpu_memory_utilization", cfg.gpu_memory_utilization),
                                         ("max_model_len", cfg.max_model_len)) if v}
        return LocalTeacher(cfg.model, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                            seed=cfg.seed, parallel=parallel, **vllm_kwargs)
    raise ValueError(f"teacher.kind must be one of {TEACHER_KINDS}, got {cfg.kind!r}")


def teacher_usage(teacher) -> dict:
    """``{"teacher_usage": ...}`` for a stage's manifest entry: what a paid teacher sent and what the run's
    cache answered (``usage_summary``; the report adds them up, ``report.teacher_bill_lines``); {} for a free one."""
    return {"teacher_usage": teacher.usage_summary()} if hasattr(teacher, "usage_summary") else {}


def first_correct(problems: list[Problem], traces: list[TeacherTrace]) -> list[SFTExample]:
    """The long-CoT SFT set: one verified teacher CoT per question (questions without one drop out)."""
    chosen: dict[str, TeacherTrace] = {}
    for t in traces:
        if t.correct and t.problem_id not in chosen:
            chosen[t.problem_id] = t
    return [SFTExample(p.id, p.question, chosen[p.id].cot, "teacher", {"teacher": chosen[p.id].teacher})
            for p in problems if p.id in chosen]


def first_correct_that_fits(problems: list[Problem], traces: list[TeacherTrace],
                            fits: Callable[[str, str], bool]) -> tuple[list[SFTExample], dict]:
    """The SFT set under the question-set rule: per question its first verified CoT that ``fits(question,
    cot)``; returns it and ``{problem id: why it is left out}`` for the other questions."""
    question_of = {p.id: p.question for p in problems}
    verified: dict[str, list[TeacherTrace]] = {}
    for t in traces:
        if t.correct and t.problem_id in question_of:
            verified.setdefault(t.problem_id, []).append(t)
    kept, left_out = [], {}
    for p in problems:
        if p.id not in verified:
            left_out[p.id] = "no verified teacher CoT"
            continue
        trace = next((t for t in verified[p.id] if fits(p.question, t.cot)), None)
        if trace is None:
            left_out[p.id] = "teacher CoT longer than max_seq_len"
            continue
        kept.append(SFTExample(p.id, p.question, trace.cot, "teacher", {"teacher": trace.teacher}))
    return kept, left_out


class TokenCounter:
    """Length in the student's tokens of a (question, response) training example: prompt + assistant
    turn in the student's chat template, exactly as ``training.build_sft_rows`` counts it."""

    def __init__(self, model_path: str, prompt_template: str = "{question}", system: Optional[str] = None):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.template, self.system = prompt_template, system

    def __call__(self, question: str, response: str) -> int:
        from .chat import encode_for_training

        return len(encode_for_training(self.tokenizer, question, response, self.template,
                                       system=self.system)["input_ids"])


def length_rule_applies(training: Optional[TrainingConfig]) -> bool:
    """Whether a CoT's length decides if a question can be trained on (``overlong: drop``)."""
    return training is not None and training.overlong == "drop" and bool(training.max_seq_len)


def fitter(count: Callable[[str, str], int], max_seq_len: int) -> Callable[[str, str], bool]:
    return lambda question, response: count(question, response) <= max_seq_len


def read_question_set(run: RunDir) -> Optional[dict]:
    """``data/question_set.json`` when the question-set rule holds for the run (``same_questions`` on),
    else None (no file: a run made before the rule; or the option off)."""
    path = run.question_set
    if not path.is_file():
        return None
    qs = json.loads(path.read_text(encoding="utf-8"))
    return qs if qs.get("same_questions") else None


def question_set_problems(run: RunDir, problems: list[Problem]) -> list[Problem]:
    """The training questions a method may use: the question set's, or all when the rule is off."""
    qs = read_question_set(run)
    if qs is None:
        return problems
    keep = set(qs["questions"])
    return [p for p in problems if p.id in keep]


def question_set_inputs(run: RunDir) -> list:
    """The question-set file as a stage input (so that a changed set reruns the stage), when it exists."""
    return [run.question_set] if run.question_set.is_file() else []


def kept_to_question_set(run: RunDir, method: str) -> bool:
    """Stage 04's rule (``sft.run_sft``): under the question set, a method's set of CoTs other than the
    teacher's own is cut to the set's questions, a too-long example replaced by the teacher CoT
    (``fit_to_question_set``); EDIT and Tailored Learning keep to it in their own stages."""
    from .methods import cot_methods

    return (method in cot_methods() and bool(question_set_inputs(run))
            and run.training_set(method) != run.teacher_sft_set)


def fit_to_question_set(examples: list[SFTExample], teacher_examples: list[SFTExample], qs: Optional[dict],
                        count: Optional[Callable[[str, str], int]] = None) -> tuple[list[SFTExample], dict]:
    """A method's examples kept to the question set: only its questions, and (``overlong: drop``) an
    example longer than the set's ``max_seq_len`` replaced by the question's teacher CoT (which fits:
    the set was decided on it), so that the question stays. Returns the examples and counts
    ``{"outside_question_set", "replaced_by_teacher_cot"}``. ``qs`` None: the examples unchanged."""
    stats = {"outside_question_set": 0, "replaced_by_teacher_cot": 0}
    if qs is None:
        return list(examples), stats
    keep, teacher = set(qs["questions"]), {e.problem_id: e for e in teacher_examples}
    limit = qs.get("max_seq_len") if qs.get("overlong") == "drop" else None
    out = []
    for e in examples:
        if e.problem_id not in keep:
            stats["outside_question_set"] += 1
            continue
        if limit and count is not None and e.problem_id in teacher and count(e.question, e.response) > limit:
            stats["replaced_by_teacher_cot"] += 1
            t = teacher[e.problem_id]
            e = SFTExample(e.problem_id, e.question, t.response, "teacher",
                           {**(e.meta or {}), "replaced": f"{e.source} longer than max_seq_len={limit}"})
        out.append(e)
    return out, stats


class QuestionSetTeacher:
    """A teacher for Tailored Learning kept to the question set: its ``collect`` returns the teacher's
    rationales plus, for a question with no verified rationale that ``fits``, the question's stage-01
    CoT (a verified trace that fits), so every question of the set stays in the method's training set.
    Everything else is the wrapped teacher's."""

    def __init__(self, teacher, fallback: dict, fits: Optional[Callable[[str, str], bool]] = None):
        self._teacher, self._fallback, self._fits = teacher, fallback, fits

    def __getattr__(self, name: str):
        return getattr(self._teacher, name)

    def collect(self, problems, n: int = 1) -> list[TeacherTrace]:
        traces = list(self._teacher.collect(problems, n=n))
        question_of = {p.id: p.question for p in problems}
        ok = {t.problem_id for t in traces
              if t.correct and (self._fits is None or self._fits(question_of.get(t.problem_id, ""), t.cot))}
        for p in problems:
            if p.id not in ok and p.id in self._fallback:
                f = self._fallback[p.id]
                traces.append(TeacherTrace(f.problem_id, f.thinking, f.solution, f.answer, True, f.teacher,
                                           n, dict(f.usage), {**f.meta, "fallback": "stage-01 teacher CoT"}))
        return traces


def stage01_traces(run: RunDir) -> dict:
    """{problem id: the stage-01 trace behind the SFT set's CoT of that question}."""
    cots = {e.problem_id: e.response for e in read_jsonl(run.teacher_sft_set, SFTExample)}
    out: dict = {}
    for t in read_jsonl(run.teacher_traces, TeacherTrace):
        if t.correct and cots.get(t.problem_id) == t.cot and t.problem_id not in out:
            out[t.problem_id] = t
    return out


def filter_stats(problems: list[Problem], traces: list[TeacherTrace], kept: list[SFTExample]) -> dict:
    return {
        "questions": len(problems),
        "traces": len(traces),
        "correct_traces": sum(t.correct for t in traces),
        "questions_kept": len(kept),
        "kept_rate": len(kept) / len(problems) if problems else 0.0,
    }


def run_collection(run: RunDir, teacher_cfg: TeacherConfig, data: Optional[DataConfig] = None,
                   training: Optional[TrainingConfig] = None, student: Optional[StudentConfig] = None,
                   force: bool = False, parallel: Optional[ParallelConfig] = None) -> dict:
    """Write ``teacher_traces.jsonl`` (all), ``training_set_sft.jsonl`` (verified, one per question) and
    ``question_set.json`` (the questions every method trains on, and why the others are left out; see the
    module's docstring). ``training``: its ``same_questions``, ``max_seq_len`` and ``overlong`` decide the
    question set (None: every question with a verified CoT, as before the rule)."""
    student = student or StudentConfig()
    problems_path = run.train_problems
    traces_path, sft_path, qs_path = run.teacher_traces, run.teacher_sft_set, run.question_set
    same = training is None or training.same_questions
    by_length = same and length_rule_applies(training)

    def work() -> dict:
        problems = read_jsonl(problems_path, Problem)
        teacher = make_teacher(teacher_cfg, data, cache_dir=str(run.teacher_cache), parallel=parallel)
        print(f"[teacher] {teacher_cfg.kind} teacher: {getattr(teacher, 'name', type(teacher).__name__)}")
        traces = teacher.collect(problems, n=teacher_cfg.n_per_question)
        if by_length:
            count = TokenCounter(run.student_model(), student.prompt_template, student.system_prompt or None)
            kept, left_out = first_correct_that_fits(problems, traces, fitter(count, training.max_seq_len))
        else:
            kept = first_correct(problems, traces)
            left_out = {p.id: "no verified teacher CoT" for p in problems if p.id not in {e.problem_id for e in kept}}
        if not kept:
            raise ValueError("no teacher CoT verified against its gold answer"
                             + (f" and fits max_seq_len={training.max_seq_len}" if by_length else "")
                             + ": the training set would be empty")
        write_jsonl(traces_path, traces)
        write_jsonl(sft_path, kept)
        write_json(qs_path, {
            "same_questions": same,
            "rule": QUESTION_SET_RULE if same else "off (training.same_questions: false): each method keeps "
                                                   "the questions its own data gives",
            "max_seq_len": training.max_seq_len if training is not None else None,
            "overlong": training.overlong if training is not None else None,
            "questions": [e.problem_id for e in kept], "left_out": left_out})
        reasons: dict = {}
        for why in left_out.values():
            reasons[why] = reasons.get(why, 0) + 1
        print(f"[teacher] question set: {len(kept)} of {len(problems)} questions for every method"
              + (f"; left out: {', '.join(f'{n} {why}' for why, n in reasons.items())}" if reasons else "")
              + ("" if same else " (same_questions off: each method keeps its own)"))
        extra = {"filter": filter_stats(problems, traces, kept), "question_set": {"n": len(kept), "left_out": reasons}}
        if teacher_cfg.kind == "api":
            extra.update(served_models(teacher_cfg, traces))
        return {**extra, **teacher_usage(teacher)}

    # the student's tokenizer and chat format measure the CoTs only under the length rule
    params, models = fingerprint(run, "teacher_cots", teacher_cfg, data, training, student if by_length else None)
    inputs = [problems_path] + models
    return run.run_stage("teacher_cots", params, inputs, [traces_path, sft_path, qs_path], work, force=force,
                         stage_hint="00_setup_and_data")


def served_models(teacher_cfg: TeacherConfig, traces: list[TeacherTrace]) -> dict:
    """The models the API server says served the CoTs (``served_models``: replies per model), and a
    ``served_model_warning`` (printed as the stage's line, shown by the report) when one is not
    ``teacher.model``."""
    from .teachers.api.replies import served_model_check

    served, warning = served_model_check(teacher_cfg.model, (t.meta for t in traces))
    if warning:
        print(f"[teacher] {warning}")
    return {"served_models": served, "served_model_warning": warning, "configured_model": teacher_cfg.model}


QUESTION_SET_RULE = ("a question is in every CoT-trained method's training set (sft, orion, edit, tailored) when it "
                     "has a verified teacher CoT that fits training.max_seq_len in the student's tokens (with "
                     "overlong: drop; with truncate, any verified CoT), else in none")


def look_inside(run: RunDir, problem_id: Optional[str] = None, show: bool = True) -> dict:
    """One teacher trace taken apart: its thinking (``<think>…</think>``) and final solution, the answer
    the grader extracts from the solution and its verdict against the gold answer (graded again here,
    with the same ``grading.grade`` the correctness filter used)."""
    from .display import key_values, markdown
    from .grading import grade

    problems = {p.id: p for p in read_jsonl(run.train_problems, Problem)}
    traces = read_jsonl(run.teacher_traces, TeacherTrace)
    trace = next((t for t in traces if t.problem_id == problem_id), traces[0]) if problem_id else traces[0]
    gold = problems[trace.problem_id].answer
    verdict = grade(trace.solution, gold)
    look = {"problem_id": trace.problem_id, "question": problems[trace.problem_id].question, "gold": gold,
            "thinking": trace.thinking, "solution": trace.solution, "extracted answer": verdict.predicted,
            "verdict": verdict.reason, "kept": verdict.correct, "stored verdict": trace.correct}
    if show:
        markdown(f"**Question.** {look['question']}\n\n**Thinking**\n\n```\n{trace.thinking}\n```\n\n"
                 f"**Solution**\n\n```\n{trace.solution}\n```")
        key_values({k: look[k] for k in ("gold", "extracted answer", "verdict", "kept", "stored verdict")},
                   title="the grader on this trace")
    return look
