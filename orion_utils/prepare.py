"""Stage 00, setup: the training questions, the benchmarks and the base student.

Toy profile: synthetic arithmetic word problems (a training split, an in-distribution test split
and a harder split) and a tiny student built and pre-trained locally. Real profiles: training
questions from a trace dataset, benchmarks from the hub or a local directory, the student a hub
id or a local path (loaded later by the generation and training backends).
"""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Optional

from .config import DataConfig, GenerationConfig, StudentConfig
from .jsonl import read_jsonl, write_json, write_jsonl
from .records import Problem
from .rundir import RunDir, package_versions
from .stage_specs import fingerprint

TOY_BENCHMARKS = {"toy_test": "test", "toy_hard": "hard"}


def environment_report(generation: Optional[GenerationConfig] = None) -> dict:
    """Versions, device and the backends that `auto` would choose here."""
    import torch

    from .device import resolve_device
    from .generation import select_backend
    from .training import select_training_backend

    gen_name, gen_reason = select_backend((generation or GenerationConfig()).backend)
    train_name, train_reason = select_training_backend("auto")
    device = resolve_device("auto")
    return {
        "python": platform.python_version(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "generation_backend": f"{gen_name} ({gen_reason})",
        "training_backend": f"{train_name} ({train_reason})",
        **{k: v for k, v in package_versions().items() if k != "python"},
    }


def load_training_problems(data: DataConfig, toy_domain=None) -> list[Problem]:
    if data.train_source == "toy":
        from .toy.domain import ToyDomainConfig, generate_problems

        return generate_problems(data.n_train, toy_domain or ToyDomainConfig(), seed=data.seed, split="train")
    from .teachers.datasets import load_trace_entries

    entries = load_trace_entries(data.train_source, data_dir=data.train_dir or None, limit=data.n_train)
    return [e.problem for e in entries]


def load_benchmark_problems(data: DataConfig, toy_domain=None) -> dict:
    from .data import load_benchmark

    out = {}
    for name in data.benchmarks:
        if name in TOY_BENCHMARKS:
            from .toy.domain import ToyDomainConfig, generate_problems

            size = data.toy_test_size if name == "toy_test" else data.toy_hard_size
            out[name] = generate_problems(size, toy_domain or ToyDomainConfig(), seed=data.seed, split=TOY_BENCHMARKS[name])
        else:
            out[name] = load_benchmark(name, data_dir=data.benchmark_dir or None, limit=data.benchmark_limit or None)
    return out


def run_prepare_data(run: RunDir, data: DataConfig, toy_domain=None, force: bool = False) -> dict:
    """Write ``data/train_problems.jsonl`` and ``data/benchmarks/<name>.jsonl``."""
    train_path = run.train_problems
    bench_dir = run.benchmarks_dir

    def work() -> dict:
        problems = load_training_problems(data, toy_domain)
        if not problems:
            raise ValueError(f"the training set is empty (data.train_source={data.train_source!r}, "
                             f"data.n_train={data.n_train}); nothing to distil")
        benchmarks = load_benchmark_problems(data, toy_domain)
        for stale in run.benchmark_files():
            if stale.stem not in benchmarks:
                stale.unlink()
        for name, items in benchmarks.items():
            write_jsonl(run.benchmark(name), items)
        write_jsonl(train_path, problems)
        return {"n_train": len(problems), "benchmarks": {k: len(v) for k, v in benchmarks.items()}}

    params, _ = fingerprint(run, "prepare_data", data, toy_domain if data.train_source == "toy" else None)
    return run.run_stage("prepare_data", params, [], [train_path, bench_dir], work, force=force)


def run_prepare_student(
    run: RunDir,
    student: StudentConfig,
    toy_student=None,
    toy_pretrain=None,
    toy_domain=None,
    data: Optional[DataConfig] = None,
    force: bool = False,
) -> dict:
    """Record the base student in ``data/student.json``; for the toy profile build and pre-train it."""
    info_path = run.student_info
    if student.model != "toy":
        from .students import needs_conversion, resolve_student

        def work_real() -> dict:
            if needs_conversion(student.model):  # a packaged GGUF student or a .gguf file: converted once
                model = resolve_student(student.model)
                write_json(info_path, {"model": model, "in_run_dir": False, "kind": "converted",
                                       "reference": student.model})
                print(f"[student] {student.model} -> {model}")
                return {"converted": model}
            _check_model_reference(student.model)
            write_json(info_path, {"model": student.model, "in_run_dir": False, "kind": "pretrained"})
            return {}

        if needs_conversion(student.model) and info_path.exists() and not force:
            recorded = json.loads(info_path.read_text(encoding="utf-8")).get("model", "")
            force = not Path(recorded).exists()  # the converted checkpoint was removed from the cache
        params, _ = fingerprint(run, "prepare_student", student)
        return run.run_stage("prepare_student", params, [], [info_path], work_real, force=force)

    from .teachers.toy import ToyTeacher
    from .toy.domain import ToyDomainConfig, generate_problems
    from .toy.student import ToyStudentConfig, build_toy_student
    from .toy.pretrain import PretrainConfig, pretrain_student

    toy_student, toy_pretrain = toy_student or ToyStudentConfig(), toy_pretrain or PretrainConfig()
    toy_domain, data = toy_domain or ToyDomainConfig(), data or DataConfig()
    base_dir = run.toy_student

    def work_toy() -> dict:
        scratch = run.toy_student_init
        build_toy_student(scratch, toy_student, seed=data.seed)
        # Pre-training questions come from their own seed, apart from the training questions.
        problems = generate_problems(toy_pretrain.n_problems, toy_domain, seed=data.seed + 1, split="train")
        stats = pretrain_student(scratch, base_dir, problems, ToyTeacher(error_rate=0.0, seed=data.seed), toy_pretrain)
        _rmtree(scratch)
        write_json(info_path, {"model": run.relative(base_dir), "in_run_dir": True, "kind": "toy", "pretrain": stats})
        return {"pretrain": stats}

    params, _ = fingerprint(run, "prepare_student", student, toy_student, toy_pretrain, toy_domain, data)
    return run.run_stage("prepare_student", params, [], [info_path, base_dir], work_toy, force=force)


def _check_model_reference(model: str) -> None:
    """A local-looking path must exist; a hub id is checked when it is loaded."""
    from .training import looks_like_local_path

    if looks_like_local_path(model) and not Path(model).expanduser().exists():
        raise FileNotFoundError(f"student.model points at {model!r}, which does not exist")


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def load_student_info(run: RunDir) -> dict:
    run.require(run.student_info, stage_hint="00_setup_and_data")
    return json.loads(run.student_info.read_text(encoding="utf-8"))


def load_training_set(run: RunDir) -> list[Problem]:
    return read_jsonl(run.train_problems, Problem)


def look_inside(run: RunDir, problem_id: Optional[str] = None, n_tokens: int = 48, show: bool = True) -> dict:
    """One training question as the later stages see it: the question and gold answer, its gold steps
    and a teacher CoT for it (toy domain: the problem generator knows the computations), and how the
    base student's tokenizer splits that CoT (the units SFT and perplexity are counted in)."""
    from transformers import AutoTokenizer

    from .display import key_values, markdown
    from .records import format_cot

    problems = load_training_set(run)
    problem = next((p for p in problems if p.id == problem_id), problems[0]) if problem_id else problems[0]
    look: dict = {"problem_id": problem.id, "question": problem.question, "answer": problem.answer}
    text = problem.question
    if isinstance(problem.meta, dict) and "steps" in problem.meta:
        from .toy.domain import gold_steps
        from .toy.teacher import write_cot

        look["gold_steps"] = [f"{s.a} {s.op} {s.b} = {s.result}" for s in gold_steps(problem)]
        text = format_cot(*write_cot(problem))
        look["teacher_cot"] = text
    tokenizer = AutoTokenizer.from_pretrained(run.student_model())
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    what = "teacher CoT" if "teacher_cot" in look else "question (no toy teacher for this data)"
    look.update(tokenized=what, n_tokens=len(ids), tokens=[tokenizer.decode([t]) for t in ids[:n_tokens]])
    if show:
        key_values({k: v for k, v in look.items() if k not in ("teacher_cot", "tokens")},
                   title="one training question")
        if "teacher_cot" in look:
            markdown(f"**A teacher CoT for it**\n\n```\n{look['teacher_cot']}\n```")
        markdown(f"**The base student's first {len(look['tokens'])} tokens of the {look['tokenized']}** "
                 f"(| between tokens)\n\n```\n{'|'.join(look['tokens'])}\n```")
    return look
