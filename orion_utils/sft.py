"""Stage 04, supervised fine-tuning: `sft` on the teacher's CoTs, `orion` on the refined CoTs.

Both start from the same base student with the same hyperparameters, so the only difference is
the training text. Each method's model, loss curve and training facts go to ``models/<method>/``.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

from .config import StudentConfig
from .jsonl import read_jsonl
from .records import SFTExample
from .rundir import RunDir

STAGE_OF_SET = {"sft": "01_teacher_cots", "orion": "03_error_aware_reflection"}


def run_sft(run: RunDir, cfg, student: Optional[StudentConfig] = None,
            methods: Sequence[str] = ("sft", "orion"), force: bool = False) -> dict:
    """Train each method on its training set; returns {method: manifest entry}."""
    from .training import train_sft

    student = student or StudentConfig()
    entries = {}
    for method in methods:
        if method not in STAGE_OF_SET:
            raise ValueError(f"no training set for method {method!r}; known: {list(STAGE_OF_SET)}")
        data_path = run.training_set(method)
        out_dir = run.model(method)
        inputs = [data_path] + ([run.toy_student] if run.toy_student.exists() else [])

        def work(method=method, data_path=data_path, out_dir=out_dir) -> dict:
            examples = read_jsonl(data_path, SFTExample)
            if not examples:
                raise ValueError(f"{data_path} is empty: no examples to train '{method}' on")
            result = train_sft(run.student_model(), examples, out_dir, cfg, prompt_template=student.prompt_template,
                               system=student.system_prompt or None)
            return {"backend": result.backend, "train_seconds": result.train_seconds,
                    "n_examples": result.n_examples, "n_tokens": result.n_tokens}

        params = {"sft": cfg, "student": student, "method": method}
        entries[method] = run.run_stage(f"sft/{method}", params, inputs, [run.trained(method).model], work, force=force,
                                        stage_hint=STAGE_OF_SET[method])
    return entries


def load_loss_history(run: RunDir, method: str) -> list[dict]:
    path = run.loss_history(method)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
