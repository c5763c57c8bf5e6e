"""The prompt the ``llm`` reflector of stage 03 sends the student (``reflection.LLMReflector``): the question,
the teacher's CoT and the student's own wrong attempt, and the request to rewrite the CoT around that mistake.
Acceptance reads its headings and instruction sentences to tell an echo of it (``acceptance.prompt_scaffolding``).
Imports nothing: the stage declarations (``stage_specs``) hash it for stage 03 when the ``llm`` reflector runs.
"""
from __future__ import annotations

REFLECTION_PROMPT = """You are given a math problem, an expert's worked solution, and your own earlier attempt, which reached a wrong answer.

## Problem
{question}

## Expert solution
{teacher_cot}

## Your earlier attempt (wrong)
{wrong_attempt}

Rewrite the expert solution into one you can follow step by step. Keep the expert's correct reasoning. At the step where your earlier attempt went wrong, stop and reflect explicitly on that mistake: say what you did before, why it is wrong, and what the correct step is. Then continue to the end.
Write your reasoning inside <think> </think>, then give the final solution with the answer in \\boxed{{}}."""

# name -> text, as ``stage_specs.SENDS`` names it
PROMPTS = {"reflection": REFLECTION_PROMPT}
