"""The toy domain: the whole pipeline in miniature on CPU, with no GPU and no model hub.

Synthetic arithmetic word problems, a programmatic teacher and a tiny student of a real architecture
stand in for real data, a reasoning teacher and a pretrained student, through the same code paths.

* ``domain``: seeded arithmetic word problems (train/test/hard splits) and ``parse_steps``.
* ``teacher``: the programmatic R1-style teacher's CoTs (``orion_utils.teachers.toy.ToyTeacher``
  wraps it behind the teacher interface).
* ``tokenizer`` / ``student``: a locally built tokenizer and a tiny Llama/Qwen2 student, saved in
  Hugging Face format.
* ``pretrain``: trains the student from scratch to "competent but error-prone"; ``quick_accuracy``.
* ``reflect``: the reflection rules behind the ``student`` and ``rule`` reflectors that stand in for the
  LLM reflector (a tiny student cannot follow a reflection prompt; say so with toy results).

Submodules are imported on demand (``tokenizer``, ``student`` and ``pretrain`` pull in transformers).
"""
from .domain import SPLITS, Step, ToyDomainConfig, generate_problems, gold_steps, parse_steps, solution_steps

__all__ = ["SPLITS", "Step", "ToyDomainConfig", "generate_problems", "gold_steps", "parse_steps", "solution_steps"]
