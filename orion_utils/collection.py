"""Stage 01, teacher CoT collection: long chains of thought from the teacher, kept if they verify.

One interface for every teacher (toy, API, trace dataset, local model). Every trace is saved in
``teacher_traces.jsonl``; the first correct trace per question becomes the plain long-CoT SFT
training set ``training_set_sft.jsonl``, which ORION's reflection stage starts from.
"""
from __future__ import annotations

from typing import Optional

from .config import DataConfig, TeacherConfig
from .jsonl import read_jsonl, write_jsonl
from .records import Problem, SFTExample, TeacherTrace
from .rundir import RunDir

TEACHER_KINDS = ("toy", "api", "dataset", "local")


def make_teacher(cfg: TeacherConfig, data: Optional[DataConfig] = None, cache_dir: Optional[str] = None):
    """Build the teacher a profile names."""
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
                            seed=cfg.seed, **vllm_kwargs)
    raise ValueError(f"teacher.kind must be one of {TEACHER_KINDS}, got {cfg.kind!r}")


def first_correct(problems: list[Problem], traces: list[TeacherTrace]) -> list[SFTExample]:
    """The long-CoT SFT set: one verified teacher CoT per question (questions without one drop out)."""
    chosen: dict[str, TeacherTrace] = {}
    for t in traces:
        if t.correct and t.problem_id not in chosen:
            chosen[t.problem_id] = t
    return [SFTExample(p.id, p.question, chosen[p.id].cot, "teacher", {"teacher": chosen[p.id].teacher})
            for p in problems if p.id in chosen]


def filter_stats(problems: list[Problem], traces: list[TeacherTrace], kept: list[SFTExample]) -> dict:
    return {
        "questions": len(problems),
        "traces": len(traces),
        "correct_traces": sum(t.correct for t in traces),
        "questions_kept": len(kept),
        "kept_rate": len(kept) / len(problems) if problems else 0.0,
    }


def run_collection(run: RunDir, teacher_cfg: TeacherConfig, data: Optional[DataConfig] = None,
                   force: bool = False) -> dict:
    """Write ``teacher_traces.jsonl`` (all) and ``training_set_sft.jsonl`` (verified, one per question)."""
    problems_path = run.train_problems
    traces_path, sft_path = run.teacher_traces, run.teacher_sft_set

    def work() -> dict:
        problems = read_jsonl(problems_path, Problem)
        teacher = make_teacher(teacher_cfg, data, cache_dir=str(run.teacher_cache))
        print(f"[teacher] {teacher_cfg.kind} teacher: {getattr(teacher, 'name', type(teacher).__name__)}")
        traces = teacher.collect(problems, n=teacher_cfg.n_per_question)
        kept = first_correct(problems, traces)
        if not kept:
            raise ValueError("no teacher CoT verified against its gold answer: the training set would be empty")
        write_jsonl(traces_path, traces)
        write_jsonl(sft_path, kept)
        extra = {"filter": filter_stats(problems, traces, kept)}
        if hasattr(teacher, "usage_summary"):
            extra["teacher_usage"] = teacher.usage_summary()
        return extra

    params = {"teacher": teacher_cfg, "data": data}
    return run.run_stage("teacher_cots", params, [problems_path], [traces_path, sft_path], work, force=force,
                         stage_hint="00_setup_and_data")


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
