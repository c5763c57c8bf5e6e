"""The toy domain: the whole pipeline in miniature on CPU (DESIGN.md section 3).

* ``domain``: seeded arithmetic word problems (train/test/hard splits) and ``parse_steps``.
* ``teacher``: the programmatic R1-style teacher's CoTs (``orion_utils.teachers.toy.ToyTeacher``
  wraps it behind the teacher interface).
* ``tokenizer`` / ``student``: a locally built tokenizer and a tiny Llama/Qwen2 student, saved in
  Hugging Face format.
* ``warmup``: trains the student from scratch to "competent but error-prone"; ``quick_accuracy``.
* ``reflect``: the rule-based reflector used in place of an LLM reflector (say so with toy results).

Submodules are imported on demand (``tokenizer``, ``student`` and ``warmup`` pull in transformers).
"""
from .domain import SPLITS, Step, ToyDomainConfig, generate_problems, gold_steps, parse_steps, solution_steps

__all__ = ["SPLITS", "Step", "ToyDomainConfig", "generate_problems", "gold_steps", "parse_steps", "solution_steps"]
