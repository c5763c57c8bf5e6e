"""Stage 03's optional judge (``reflection.judge``): the teacher reads each candidate rewrite that passed every
rule of ``acceptance`` and says whether it reflects on the student's error and reasons validly.

The rules are necessary, not sufficient; on a real run the profile's teacher (``collection.make_teacher``,
with the run's one teacher cache) is asked ``teachers.prompts.REWRITE_JUDGE_TEMPLATE`` with the question, the
wrong attempt and the rewrite, and answers ``<verdict>yes</verdict>`` or ``<verdict>no</verdict>`` and a
one-sentence ``<reason>``. Anything but "yes" rejects the candidate under the reason "judge" (the last of
``acceptance.REASONS``): a "no", and, counted apart, a reply without a verdict ("unparseable"), a request that
failed after every retry ("failed") or a prompt that does not fit the teacher ("left out"). Only candidates
that passed every rule are asked (one request each), inside ``refine``'s candidate step, so the verdicts are
saved with their chunk and a resumed stage asks nothing twice; the run's teacher cache answers a repeated
request. The stage's manifest entry records what the teacher was paid (``collection.teacher_usage``), which
the report's teacher bill adds up.
"""
from __future__ import annotations

from typing import Sequence

JUDGE_REASON = "judge"
VERDICTS = ("yes", "no", "unparseable", "failed", "left out")


def make_rewrite_judge(cfg, teacher_cfg, data, cache_dir: str):
    """The profile's teacher as the rewrite judge when ``cfg.judge`` is on (else None); ``cache_dir``: the
    run's teacher cache (``RunDir.teacher_cache``)."""
    if not cfg.judge:
        return None
    from .collection import make_teacher

    if teacher_cfg is None:
        raise ValueError("reflection.judge needs the profile's teacher section (teacher.kind 'api' or 'local')")
    teacher = make_teacher(teacher_cfg, data, cache_dir=cache_dir)
    if not hasattr(teacher, "judge_rewrites_many"):
        raise ValueError(f"reflection.judge needs a prompted teacher (teacher.kind 'api' or 'local'), "
                         f"not teacher.kind={teacher_cfg.kind!r}")
    return teacher


def judge_candidates(judge, items: Sequence, verdicts: Sequence[list]) -> None:
    """Ask ``judge`` about every candidate that passed every rule (``verdict["rejected"]`` None), in one call:
    ``items[k]`` (a ``reflection.ReflectionItem``) and its candidates' verdict dicts ``verdicts[k]``, which get
    ``judge`` ({"verdict", "reason"}) and, unless the verdict is "yes", ``rejected`` = "judge"."""
    asked = [(k, c) for k, vs in enumerate(verdicts) for c, v in enumerate(vs) if v["rejected"] is None]
    if not asked:
        return
    replies = judge.judge_rewrites_many([(items[k].problem.question, items[k].wrong_attempt, verdicts[k][c]["text"])
                                         for k, c in asked])
    for (k, c), reply in zip(asked, replies):
        verdict = verdicts[k][c]
        verdict["judge"] = {"verdict": reply["verdict"], "reason": reply["reason"]}
        if reply["verdict"] != "yes":
            verdict["rejected"] = JUDGE_REASON


def judge_summary(refinements) -> dict:
    """How many candidates the judge was asked about and rejected, and its verdicts by kind."""
    judged = [c["judge"] for r in refinements for c in r.meta.get("candidates", []) if "judge" in c]
    counts = {v: sum(j["verdict"] == v for j in judged) for v in VERDICTS}
    return {"judged": len(judged), "rejected": len(judged) - counts["yes"], "verdicts": counts}


def judge_line(summary: dict, on: bool) -> str:
    """The stage's line on the judge."""
    if not on:
        return "judge off (reflection.judge): no teacher request"
    v = summary["verdicts"]
    return (f"judge: {summary['judged']} candidates that passed every rule judged, {summary['rejected']} rejected "
            f"(no {v['no']}; unparseable {v['unparseable']}, failed {v['failed']}, left out {v['left out']})")
