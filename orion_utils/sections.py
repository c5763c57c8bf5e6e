"""The stage sections of a profile: one dataclass per section, each knob with its help (``knobs.knob``).

The sections whose stage module imports ``config`` live here, below it, so that ``config.SECTIONS`` names
each class itself through a plain import: ``toy_pretrain`` (``PretrainConfig``, the toy student's
pre-training, stage 00), ``exposure`` (stage 02), ``reflection`` (stage 03), ``evaluation`` (stage 07) and
``analysis`` (stage 08), with the allowed values of their enum knobs. Each stage module imports its section
from here and keeps it importable under its own name (``exposure.ExposureConfig``, ...). The sections that
several stages share, and the training sections, are ``config``'s; ``toy_student``, ``toy_domain`` and
``long_cots`` are their own modules'. Imports nothing heavy, and no stage module.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .acceptance import Thresholds
from .knobs import SAVED_CHUNKS, knob, validate
from .measures import CONSISTENCY_KINDS, DEFAULT_BUCKETS
from .methods import METHODS as _REGISTRY

# --- toy_pretrain: the toy student's pre-training (orion_utils.toy.pretrain) -----------------------------

LR_SCHEDULES = ("wsd", "constant", "cosine")
STYLES = ("full", "terse")  # teacher CoT styles (toy.teacher)


@dataclass
class PretrainConfig:
    """Pre-training of the toy student (simple types: a profile section)."""

    max_steps: int = knob(850, "optimizer steps (the stopping rule; deterministic)", ge=1)
    time_budget_s: float = knob(
        900.0, "safety cap: stop early if a step would start after this many seconds", ge=0.0)
    batch_size: int = knob(12, "sequences per step", ge=1)
    lr: float = knob(3e-3, "peak learning rate", gt=0.0)
    lr_schedule: str = knob(
        "wsd", "wsd (ramp, constant, linear decay), constant or cosine", choices=LR_SCHEDULES)
    ramp_steps: int = knob(50, "linear learning-rate ramp from 0, in steps", ge=0)
    decay_frac: float = knob(
        0.3, "wsd: the last this fraction of the steps decays the learning rate", ge=0.0, le=1.0)
    final_lr_frac: float = knob(
        0.25, "wsd, cosine: the learning rate decays to this fraction of lr", ge=0.0, le=1.0)
    weight_decay: float = knob(0.0, "AdamW weight decay", ge=0.0)
    max_grad_norm: float = knob(1.0, "gradient clipping norm", ge=0.0)
    n_problems: int = knob(4000, "training problems generated for pre-training", ge=1)
    style: str = knob(
        "full", "teacher CoT style to pre-train on: full (with self-checks) or terse", choices=STYLES)
    # Share of pre-training CoTs with a caught slip (a wrong step, then a check in the toy reflector's
    # idiom that corrects it, as R1-style CoTs do): the base student then knows that idiom.
    caught_slip_rate: float = knob(
        0.2, "share of pre-training CoTs with a slip caught in the toy reflector's idiom (a design knob of the "
        "scratch toy: it teaches the base student the idiom the rewrites use; docs/profiles.md, the toy profile)", ge=0.0, le=1.0)
    # The student's own wording. A real student's pre-training is not its teacher's CoTs: it has seen
    # some text worded like an R1 teacher's, far more worded its own way. ``own_variant`` (a toy teacher
    # wording, 0-3; None: all pre-training CoTs in the teacher's fixed wording, as before) is the wording of
    # all pre-training CoTs but a ``teacher_wording_share`` of them, worded as the R1-style toy teacher
    # (``teacher.wording: varied``) writes: each line's wording drawn.
    own_variant: Optional[int] = knob(
        None, "the student's own wording, a toy teacher wording 0-3 (None: the teacher's fixed wording; a design "
        "knob of the scratch toy, set so the teacher's CoTs are foreign to it; docs/profiles.md, the toy profile)", ge=0, le=3)
    teacher_wording_share: float = knob(
        1.0, "with own_variant: share of CoTs worded as the varied (R1-style) toy teacher (a design knob of the "
        "scratch toy, like own_variant)", ge=0.0, le=1.0)
    max_seq_len: int = knob(384, "longest pre-training sequence, in tokens", ge=1)
    seed: int = knob(0, "pre-training seed")
    threads: int = knob(1, "torch intra-op threads (1 is fastest for a ~1M-parameter model)", ge=1)
    prompt_template: str = knob("{question}", "how a question becomes the prompt")
    log_every: int = knob(25, "log the loss every this many steps (0: never)", ge=0,
                          bookkeeping="how often the loss is printed, not what is trained")

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- exposure: stage 02 (orion_utils.exposure) ----------------------------------------------------------

EXPOSURE_SOURCES = ("base", "primed")


@dataclass
class ExposureConfig:
    source: str = knob(
        "base", "who makes the errors: base (the student as it is) or primed (after a short SFT on the teacher CoTs)", choices=EXPOSURE_SOURCES)
    k: int = knob(4, "student samples per question", ge=1)
    temperature: float = knob(0.8, "sampling temperature of the student's attempts", ge=0.0)
    top_p: float = knob(0.9, "nucleus sampling of the student's attempts", gt=0.0, le=1.0)
    max_new_tokens: int = knob(256, "longest student attempt, in tokens", ge=1)
    priming_epochs: float = knob(1.0, "source=primed only: epochs of that short SFT", gt=0.0)
    # questions per generation call; each finished chunk is saved, so a crash or a disconnect loses at most
    # one (its samples do not depend on an interruption: rundir.chunk_seed)
    chunk_questions: int = knob(32, "questions per generation call; each finished chunk is saved", ge=1,
                                bookkeeping=SAVED_CHUNKS)
    # an attempt cut off at max_new_tokens is "unfinished", counted apart from the wrong ones whatever answer
    # it states; False: it is not an error to reflect on (it shows no mistake, only that the budget ran out)
    unfinished_as_errors: bool = knob(
        False, "an attempt cut off at max_new_tokens counts as an error to reflect on")
    seed: int = knob(0, "sampling seed")

    def __post_init__(self) -> None:
        validate(self)


# --- reflection: stage 03 (orion_utils.reflection) ------------------------------------------------------

SELECTION_RULES = ("perplexity", "shortest", "first")
REFLECTORS = ("student", "rule", "llm")


@dataclass
class ReflectionConfig:
    reflector: str = knob(
        "auto", "who rewrites the teacher CoT around the error: auto (student for the toy student, llm otherwise)", choices=("auto",) + REFLECTORS)
    m: int = knob(4, "candidate rewrites per (question, wrong attempt)", ge=1)
    temperature: float = knob(0.7, "sampling temperature of the rewrites", ge=0.0)
    top_p: float = knob(0.95, "nucleus sampling of the rewrites", gt=0.0, le=1.0)
    max_new_tokens: int = knob(4096, "longest rewrite, in tokens", ge=1)
    selection: str = knob(
        "perplexity", "which accepted rewrite is kept: perplexity (lowest student NLL), shortest or first", choices=SELECTION_RULES)
    seed: int = knob(0, "sampling seed")
    # items per generation call (and per scoring call); each finished chunk is saved, so a crash or a
    # disconnect loses at most one (its samples do not depend on an interruption: rundir.chunk_seed)
    chunk_questions: int = knob(64, "questions per generation (and scoring) call; each finished chunk is saved",
                                ge=1, bookkeeping=SAVED_CHUNKS)
    # A second reflector run on the same wrong attempts, measured beside the run's own and never trained on:
    # its acceptance rate, mechanism and rewrites go to the report (``data/refinements_compare.jsonl``).
    compare: str = knob(
        "", "also run this reflector on the same errors, for the report only ('' none)", choices=("",) + REFLECTORS)
    # Take the quoted wrong step (the student's own wrong line, which the refined CoT quotes before
    # checking it) out of the SFT loss, so the student is not trained to write it again.
    mask_wrong_step: bool = knob(True, "take the quoted wrong step out of the SFT loss")
    # Acceptance beyond a verified answer (orion_utils.acceptance): the checks judge what the rewrite adds to or
    # changes in the teacher's CoT (a diff of their sentences). The measurements behind each default are in the
    # docs/lab_record.md, "Stage 03's acceptance defaults", from bench/acceptance_checks.py (real long CoTs, toy and smol runs).
    # reflects and corrects: an added region quotes a line/equation/value only the wrong attempt has within this
    # many characters of (non-negated) reflection language, and gives the teacher's right value within as many
    # characters of it (None: neither checked). Real long CoTs, inserted reflections: cue at most 60 chars from
    # the quote, right value at most 170; toy quotes: 0-59 chars
    reflect_window: Optional[int] = knob(
        200, "acceptance: characters between the quoted error and reflection language, and between it and the "
             "right value (None: not checked)", ge=0)
    # carries on to the end: share of the teacher CoT's derived numbers after the point where the rewrite departs
    # from it that the rewrite's text after that point keeps (0: off; also switches off "other problem"). Real long
    # CoTs: an inserted reflection keeps 0.864-1.0; a reflection then a cut 400 characters later median 0.20 (7 of
    # 271 above 0.8); the first half or quarter + box at most 0.5
    min_coverage: float = knob(
        0.8, "acceptance: share of the teacher CoT's derived numbers after the rewrite's first change that it "
             "keeps (0: off)", ge=0.0, le=1.0)
    # more than a copy: non-blank characters the rewrite adds to or changes in the teacher's CoT (0: off). Copies
    # and whitespace-changed copies add 0; inserted reflections on real long CoTs add 75-950 (median 120)
    min_added_chars: int = knob(
        20, "acceptance: fewest characters the rewrite must add to or change in the teacher's CoT (0: off)", ge=0)
    # not an echo of the prompt: its headings or instruction sentences (read from REFLECTION_PROMPT) or the
    # prompt's texts pasted whole, in what the rewrite adds
    reject_echoes: bool = knob(True, "acceptance: reject rewrites that repeat the reflection prompt's headings, "
                                     "instructions or texts")

    # after the rules: the profile's teacher is asked about each candidate that passed them all (rewrite_judge)
    judge: bool = knob(False, "ask the teacher whether each rewrite that passed every rule reflects on the student's "
                              "error and reasons validly; costs one request per such candidate")

    def thresholds(self):
        """The acceptance knobs, as ``acceptance.check_candidate`` takes them."""
        return Thresholds(self.reflect_window, self.min_coverage, self.min_added_chars, self.reject_echoes)

    def __post_init__(self) -> None:
        same = self.compare and self.compare == self.reflector
        validate(self, [f"compare: {self.compare!r} is the reflector itself; name another one or ''"] if same else [])


# --- evaluation: stage 07 (orion_utils.evaluation) ------------------------------------------------------

METHODS = tuple(_REGISTRY)  # every method a run can evaluate (orion_utils.methods)


@dataclass
class EvaluationConfig:
    methods: list = knob(
        factory=lambda: list(METHODS), help="methods evaluated (the registry: orion_utils.methods)", each=METHODS,
        bookkeeping="which methods a run trains and evaluates: each has its own stages, which it leaves unchanged")
    n_samples: int = knob(4, "samples per problem for pass@1 (0: greedy decoding only)", ge=0)
    temperature: float = knob(0.6, "sampling temperature for pass@1", ge=0.0)
    top_p: float = knob(0.95, "nucleus sampling for pass@1", gt=0.0, le=1.0)
    max_new_tokens: int = knob(256, "longest answer, in tokens", ge=1)
    greedy: bool = knob(True, "also decode greedily once per problem")
    seed: int = knob(0, "sampling seed")
    # methods evaluated at once, each in its own process (a CPU core each for a small student; on one
    # GPU keep 1); the samples do not depend on it
    workers: int = knob(1, "methods evaluated at once, one process each (on one GPU keep 1)", ge=1,
                        bookkeeping="how many methods at a time; each method's samples are its own")
    # questions per generation call; each finished chunk is saved (eval/<method>/<benchmark>.partial.jsonl),
    # so a crash or a disconnect loses at most one; the samples do not depend on an interruption
    chunk_questions: int = knob(64, "questions per generation call; each finished chunk is saved", ge=1,
                                bookkeeping=SAVED_CHUNKS)

    def __post_init__(self) -> None:
        nothing = ["n_samples: 0 with greedy: false decodes nothing"] if self.n_samples == 0 and not self.greedy else []
        validate(self, nothing)


# --- analysis: stage 08 (orion_utils.analysis) ----------------------------------------------------------

STEP_CONSISTENCY = ("auto", "on", "off")  # analysis.step_consistency
CLAIM_MARGIN_POINTS = 2.0  # the headline claim's margin, in points (claims.assess_claims' default)


@dataclass
class AnalysisConfig:
    """Parameters of the analysis stage (named, so a notebook can show and change them)."""

    max_cots: Optional[int] = knob(
        512, "training CoTs scored per method for cot_perplexity (None: all)", ge=1)
    batch_size: int = knob(16, "completion_nll batch size", ge=1)
    buckets: list = knob(
        factory=lambda: [list(b) for b in DEFAULT_BUCKETS], help="difficulty buckets of the base student's pass rate, [low, high] pairs")
    step_consistency: str = knob(
        "auto", "check the steps of training CoTs: auto (toy runs only), on or off", choices=STEP_CONSISTENCY)
    consistency_kinds: list = knob(
        factory=lambda: list(CONSISTENCY_KINDS), help="which step-consistency measures are computed", each=CONSISTENCY_KINDS)
    margin_points: float = knob(CLAIM_MARGIN_POINTS, "the headline claim's margin, in points", ge=0.0)
    judge: bool = knob(
        False, "real runs: the teacher judges the step consistency of training CoTs (costs calls)")
    judge_max_cots: int = knob(64, "training CoTs judged per method", ge=1)
    # intervals (every benchmark cell, and the headline's paired ORION − baseline differences)
    bootstrap_resamples: int = knob(2000, "bootstrap resamples per interval", ge=1)
    bootstrap_seed: int = knob(0, "bootstrap seed: the same run gives the same intervals")
    interval_level: float = knob(0.95, "confidence level of every interval", gt=0.0, le=1.0)
    decide_max_width_points: float = knob(
        8.0, "headline: a paired interval wider than this is too small to decide", gt=0.0)
    # (4 × the 2-point margin) cannot tell "beats by the margin" from "no difference". AIME24's 30 problems give
    #   ~15-25 points, AMC23's 40 ~15-20; MATH500 ~5, GSM-Hard ~3 (one problem: 3.3, 2.5, 0.2, 0.08 points)

    def __post_init__(self) -> None:
        validate(self)
