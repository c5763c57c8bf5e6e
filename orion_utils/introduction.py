"""The report's opening paragraph: what the run is, from its student and reflector (``run_introduction``).

A scratch toy student (the rule-assisted reflector stands in: TOY_CAVEAT), a pretrained student on the toy
domain (which reflector, said), or real training data and benchmarks."""
from __future__ import annotations

TOY_CAVEAT = ("Toy profile: synthetic arithmetic word problems, a programmatic teacher, a tiny student, and a "
              "rule-assisted reflector standing in for free-form reflection (a tiny student cannot follow the "
              "reflection prompt): rules find the step where the student went wrong and phrase its check, and with "
              "`reflector: student` the student model writes the rest of the rewrite itself. Results here check the "
              "pipeline and the mechanism; they are not evidence for or against the paper.")

PRETRAINED_TOY_INTRO = ("Toy domain with a pretrained student: synthetic arithmetic word problems and a programmatic "
                        "teacher; the student is `{model}`, a pretrained model (not the toy student trained from "
                        "scratch). Reflector {reflector}.{compare} Results here check the pipeline and the mechanism "
                        "on a synthetic task; they are not evidence for or against the paper.")
REAL_INTRO = ("Real data: training questions from `{train_source}`, benchmarks {benchmarks}; the student is `{model}`, "
              "the teacher {teacher}. Reflector {reflector}.{compare} How far these numbers speak to the paper "
              "depends on the profile's sizes (`{profile}`: {description}).")
REFLECTOR_TEXT = {
    "student": "`student`: rules find the step where the student went wrong and write its check; the student "
               "model (`{model}`) writes the rest of the rewrite itself",
    "llm": "`llm`: the student model (`{model}`) writes the whole rewrite from the reflection prompt (free-form "
           "reflection, as in the paper)",
    "rule": "`rule`: rules write the whole rewrite (where the student went wrong, its check and the rest); no "
            "model writes",
}
TEACHER_TEXT = {"toy": "a programmatic toy teacher", "dataset": "the training data's own worked solutions (`dataset`)",
                "api": "the API model `{model}`", "local": "the local model `{model}`"}


def run_introduction(config: dict) -> tuple[str, str]:
    """The report's opening paragraph for a run's ``config.json`` (``Profile.to_dict()``): (which, text), which
    being ``scratch toy`` (the toy student, TOY_CAVEAT), ``pretrained toy`` (a pretrained student on the
    toy domain) or ``real`` (real training data and benchmarks). The reflector is the one the run resolves
    (``reflection.resolve_reflector_kind``)."""
    from types import SimpleNamespace

    from .reflection import resolve_reflector_kind

    student = config.get("student") or {}
    model = student.get("model", "?")
    if model == "toy":
        return "scratch toy", TOY_CAVEAT
    refl = config.get("reflection") or {}
    kind = resolve_reflector_kind(SimpleNamespace(reflector=refl.get("reflector", "auto")), SimpleNamespace(model=model))
    compare = (f" The report also measures the `{refl['compare']}` reflector on the same errors (never trained on)."
               if refl.get("compare") else "")
    fields = {"model": model, "reflector": REFLECTOR_TEXT[kind].format(model=model), "compare": compare}
    data = config.get("data") or {}
    if data.get("train_source") == "toy":
        return "pretrained toy", PRETRAINED_TOY_INTRO.format(**fields)
    teacher = config.get("teacher") or {}
    benchmarks = ", ".join(data.get("benchmarks") or []) or "?"
    return "real", REAL_INTRO.format(
        **fields, train_source=data.get("train_source", "?"), benchmarks=benchmarks,
        teacher=TEACHER_TEXT.get(teacher.get("kind"), "`{model}`").format(model=teacher.get("model") or "?"),
        profile=config.get("profile", "?"), description=config.get("description", ""))
