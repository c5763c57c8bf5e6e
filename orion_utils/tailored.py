"""Tailored Learning baseline (Wang et al., EMNLP 2023): learn from a teacher who reads your exam.

The idea in plain words: the student sits an "exam" on the training questions, and its wrong
rationales are kept. The teacher then writes correct rationales *tailored to those mistakes*,
and the student trains on them with two losses: ordinary likelihood (weighted MLE), and a
self-reflection loss that pulls its representation of a correct rationale towards another
correct rationale of the same question and away from its own wrong one. Then it sits the exam
again, and the loop repeats for a number of rounds.

Rounds (the paper's schedule, with prompts of our own; ``run_tailored``):

- round 0, exam: the base student samples ``exam_samples`` answers per question (temperature
  1.0); its unique wrong rationales are kept.
- round 1: the teacher writes rationales for all training questions (wrong ones dropped); the
  student trains on them (negatives: the round-0 wrong rationales).
- round r ≥ 2: the round r−1 student sits the exam again; its wrong rationales go to the teacher
  with the question (``teacher.tailor``); training continues from the round r−1 checkpoint on the
  new, tailored rationales.

Loss (``TailoredTrainer``, a subclass of the project's one SFT trainer; ``tailored_loss``):
``weighted_mle_loss`` + λ · ``triplet_loss`` on a hidden state (``triplet_layer``; default the last) of
each sequence's last token. A ``NoSameQuestionBatchSampler`` never puts two rationales of one question
in one batch.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from .chat import encode_for_training
from .config import TailoredConfig, TrainingConfig
from .records import Problem, SFTExample, StudentAttempt, TeacherTrace
from .rundir import RoundDir, TailoredDir, is_saved_model, read_or_make
from .training import (
    OrionSFTTrainer,
    TrainerMethod,
    TrainResult,
    link_or_copy_tree,
    pad_rows,
    token_nll,
    train_method,
)

PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def weighted_mle_loss(logits, labels, weights):
    """Weighted MLE: Σ_t w_t·NLL_t / (number of predicted tokens), over the whole batch.

    ``labels`` are the tokens to predict (−100: none), ``weights`` their weights, both aligned
    with the input positions (the label at t is predicted from the logits at t−1). Here the
    prompt ("prefix") tokens have weight ``prefix_weight`` (paper: 0.1) and the rationale tokens 1; as in
    the authors' code, the sum is divided by the number of predicted tokens, not by Σ w.
    """
    nll = token_nll(logits, labels)
    predicted = labels[:, 1:] != -100
    return (weights[:, 1:].to(nll.dtype) * nll).sum() / predicted.sum().clamp(min=1).to(nll.dtype)


def cosine_distance(a, b):
    """d(a, b) = −cos(a, b), row-wise (float32)."""
    import torch.nn.functional as F

    return -F.cosine_similarity(a.float(), b.float(), dim=-1)


def triplet_loss(anchor, positive, negative, mask=None, margin: float = 1.0):
    """Self-reflection loss: mean over unmasked rows of max(0, d(a, p) − d(a, n) + margin), d = −cos.

    ``mask`` (1: use the row) leaves out questions lacking a positive or a negative; with no row
    left the loss is 0 (still attached to the graph).
    """
    import torch

    per_row = torch.clamp(
        cosine_distance(anchor, positive) - cosine_distance(anchor, negative) + margin, min=0.0
    )
    if mask is None:
        mask = torch.ones_like(per_row)
    mask = mask.to(per_row.dtype)
    if mask.sum() == 0:
        return (per_row * 0.0).sum()
    return (per_row * mask).sum() / mask.sum()


def last_token_hidden(hidden, attention_mask):
    """Hidden state of each row's last non-pad token (works for left and right padding)."""
    import torch

    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * (positions + 1)).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


# --------------------------------------------------------------------------------------------
# Batching: never two rationales of one question in a batch
# --------------------------------------------------------------------------------------------


class NoSameQuestionBatchSampler:
    """Batches of item indices in which no question appears twice; every item once per epoch.

    How: shuffle the items within each question and the order of the questions, lay them out
    question after question, and deal them round-robin into ``n_batches = max(⌈N / batch_size⌉,
    largest question)`` batches. A question's items are consecutive and at most ``n_batches``
    many, so they land in different batches; batch sizes differ by at most one and never exceed
    ``batch_size``. The batch order is shuffled too. ``set_epoch`` reshuffles (the Trainer calls it).
    """

    def __init__(self, question_ids: Sequence[str], batch_size: int, seed: int = 0, shuffle: bool = True):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.question_ids, self.batch_size, self.seed, self.shuffle = (
            list(question_ids),
            batch_size,
            seed,
            shuffle,
        )
        self.epoch = 0
        groups: dict[str, list[int]] = defaultdict(list)
        for i, q in enumerate(self.question_ids):
            groups[q].append(i)
        self.groups = dict(groups)
        largest = max((len(g) for g in self.groups.values()), default=0)
        self.n_batches = max(math.ceil(len(self.question_ids) / batch_size), largest)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        groups = [list(g) for g in self.groups.values()]
        if self.shuffle:
            rng.shuffle(groups)
            for g in groups:
                rng.shuffle(g)
        batches: list[list[int]] = [[] for _ in range(self.n_batches)]
        for k, idx in enumerate(i for g in groups for i in g):
            batches[k % self.n_batches].append(idx)
        if self.shuffle:
            rng.shuffle(batches)
        return [b for b in batches if b]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return self.n_batches if self.question_ids else 0


# --------------------------------------------------------------------------------------------
# Training data: anchors with a positive and a negative
# --------------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    return " ".join(text.split())


def unique_wrong_rationales(attempts: Sequence[StudentAttempt]) -> dict[str, list[str]]:
    """The student's distinct wrong rationales per question (whitespace-normalised duplicates dropped).

    An unfinished answer (cut off at ``exam_max_new_tokens`` before a final answer; exposure's rule,
    ``exposure.is_unfinished``) is not a wrong rationale: it shows the teacher no mistake to tailor to,
    and as the triplet's negative it would push the student away from reasoning that may be right."""
    out: dict[str, list[str]] = defaultdict(list)
    seen: set = set()
    for a in attempts:
        key = (a.problem_id, _normalise(a.response))
        if not a.correct and not a.unfinished and key not in seen:
            seen.add(key)
            out[a.problem_id].append(a.response)
    return dict(out)


def triplet_examples(
    problems: Sequence[Problem],
    anchors: Sequence[TeacherTrace],
    positive_pool: dict[str, list[str]],
    wrong: dict[str, list[str]],
    source: str,
    seed: int = 0,
) -> list[SFTExample]:
    """One training example per correct teacher rationale (the anchor).

    ``meta["positive"]``: another teacher rationale of the same question (from ``positive_pool``,
    never the anchor's own text), ``meta["negative"]``: one of the student's wrong rationales;
    either is ``None`` when the question has none, and then the triplet term masks it out.
    """
    rng = random.Random(seed)
    question_of = {p.id: p.question for p in problems}
    examples = []
    for t in anchors:
        if not t.correct or t.problem_id not in question_of:
            continue
        cot = t.cot
        others = [c for c in positive_pool.get(t.problem_id, []) if _normalise(c) != _normalise(cot)]
        negatives = wrong.get(t.problem_id, [])
        examples.append(
            SFTExample(
                problem_id=t.problem_id,
                question=question_of[t.problem_id],
                response=cot,
                source=source,
                meta={
                    "positive": rng.choice(others) if others else None,
                    "negative": rng.choice(negatives) if negatives else None,
                    "sample_index": t.sample_index,
                },
            )
        )
    return examples


def encode_triplet_example(
    tokenizer, ex: SFTExample, prompt_template: str = "{question}", system: Optional[str] = None
) -> dict:
    """Token ids of the anchor (with its prompt length), and of its positive and negative if any."""

    def enc(response: Optional[str]) -> Optional[dict]:
        if response is None:
            return None
        e = encode_for_training(tokenizer, ex.question, response, prompt_template, system=system)
        return {"input_ids": list(e["input_ids"]), "labels": list(e["labels"]), "prompt_len": e["prompt_len"]}

    return {
        "problem_id": ex.problem_id,
        "anchor": enc(ex.response),
        "positive": enc(ex.meta.get("positive")),
        "negative": enc(ex.meta.get("negative")),
    }


class TailoredCollator:
    """B anchors → one batch: the B anchors, then the K positives and K negatives of the anchors
    that have both (``triplet_index`` says which anchor each triplet belongs to).

    Anchor rows carry the SFT labels (the assistant turn, weight 1) and, when ``prefix_weight > 0``,
    the prompt ("prefix") tokens too, with that weight; positive/negative rows carry no labels.
    With ``prefix_weight = 0`` an anchor row is exactly an SFT row. Features are either training
    rows (``input_ids``/``labels``/``prompt_len``/``positive_input_ids``/``negative_input_ids``, see
    ``tailored_rows``) or ``encode_triplet_example`` items.
    """

    def __init__(
        self,
        pad_token_id: int,
        prefix_weight: float = 0.1,
        max_seq_len: Optional[int] = None,
        use_triplet: bool = True,
    ):
        self.pad_token_id, self.prefix_weight = pad_token_id, prefix_weight
        self.max_seq_len, self.use_triplet = max_seq_len, use_triplet

    def _cut(self, ids: list) -> list:
        return list(ids[: self.max_seq_len]) if self.max_seq_len else list(ids)

    @staticmethod
    def _row(f: dict) -> dict:
        if "anchor" not in f:
            return f
        a = f["anchor"]
        return {
            "input_ids": a["input_ids"],
            "labels": a.get("labels") or [-100] * a["prompt_len"] + list(a["input_ids"][a["prompt_len"]:]),
            "prompt_len": a["prompt_len"],
            "positive_input_ids": (f["positive"] or {}).get("input_ids") or [],
            "negative_input_ids": (f["negative"] or {}).get("input_ids") or [],
        }

    def __call__(self, features: list[dict]) -> dict:
        import torch

        features = [self._row(f) for f in features]
        rows, labels, weights = [], [], []
        for f in features:
            ids = self._cut(f["input_ids"])
            plen = f["prompt_len"]
            lab = self._cut(f["labels"])
            if self.prefix_weight > 0:  # the prompt tokens are predicted too, with weight prefix_weight
                lab = [t if i < plen else y for i, (t, y) in enumerate(zip(ids, lab))]
            rows.append(ids)
            labels.append(lab)
            weights.append([self.prefix_weight if t < plen else 1.0 for t in range(len(ids))])
        with_both = [
            i for i, f in enumerate(features)
            if self.use_triplet and f["positive_input_ids"] and f["negative_input_ids"]
        ]
        for side in ("positive_input_ids", "negative_input_ids"):
            for i in with_both:
                ids = self._cut(features[i][side])
                rows.append(ids)
                labels.append([-100] * len(ids))
                weights.append([0.0] * len(ids))
        length = max(len(r) for r in rows)
        return {
            "input_ids": torch.tensor(pad_rows(rows, self.pad_token_id, length), dtype=torch.long),
            "attention_mask": torch.tensor(pad_rows([[1] * len(r) for r in rows], 0, length), dtype=torch.long),
            "labels": torch.tensor(pad_rows(labels, -100, length), dtype=torch.long),
            "mle_weights": torch.tensor(pad_rows(weights, 0.0, length), dtype=torch.float32),
            "n_anchors": torch.tensor(len(features), dtype=torch.long),
            "triplet_index": torch.tensor(with_both, dtype=torch.long),
        }


def tailored_loss(logits, hidden, batch: dict, lam: float = 0.5, margin: float = 1.0) -> tuple[Any, dict]:
    """MLE on the anchor rows + λ · triplet loss on last-token hidden states (see ``TailoredCollator``).
    ``hidden`` may be None when the batch has no triplet."""
    n = int(batch["n_anchors"])
    index = batch["triplet_index"]
    k = index.numel()
    labels, weights = batch["labels"][:n], batch["mle_weights"][:n]
    nll = token_nll(logits[:n], labels)
    predicted = labels[:, 1:] != -100
    mle = (weights[:, 1:].to(nll.dtype) * nll).sum() / predicted.sum().clamp(min=1).to(nll.dtype)
    if k and hidden is not None:
        last = last_token_hidden(hidden, batch["attention_mask"])
        trip = triplet_loss(last[index], last[n : n + k], last[n + k : n + 2 * k], margin=margin)
    else:
        trip = (logits[:0].sum() * 0.0).float()
    loss = mle + lam * trip if lam else mle
    stats = {"mle": mle.item(), "triplet": trip.item(), "n_triplets": float(k),
             "nll_sum": float((nll.detach() * predicted).sum())}
    return loss, stats


class TailoredTrainer(OrionSFTTrainer):
    """The project's SFT trainer with ``tailored_loss`` and batches from
    ``NoSameQuestionBatchSampler``; everything else is the SFT trainer's.

    One forward pass over anchors, positives and negatives (``output_hidden_states=True``
    only when the triplet term is on); the loss is a per-batch mean, so the Trainer divides it
    by the accumulation steps."""

    loss_is_scaled_for_ga = False

    def __init__(self, *args, lam: float = 0.5, margin: float = 1.0, triplet_layer: int = -1, **kwargs):
        self.lam, self.margin, self.triplet_layer = lam, margin, triplet_layer
        super().__init__(*args, **kwargs)

    def get_train_dataloader(self):
        from torch.utils.data import DataLoader

        sampler = NoSameQuestionBatchSampler(
            list(self.train_dataset["problem_id"]),
            self.args.per_device_train_batch_size,
            seed=self.args.seed,
        )
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with_triplet = int(inputs["triplet_index"].numel()) > 0
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            output_hidden_states=with_triplet,
            use_cache=False,
        )
        hidden = outputs.hidden_states[self.triplet_layer] if with_triplet else None
        loss, stats = tailored_loss(outputs.logits, hidden, inputs, self.lam, self.margin)
        if model.training:
            n = int(inputs["n_anchors"])
            self.count_supervised(stats.pop("nll_sum"), int((inputs["labels"][:n, 1:] != -100).sum()))
            self.record_stats(stats)
        else:
            stats.pop("nll_sum")
        return (loss, outputs) if return_outputs else loss


def tailored_rows(
    tokenizer, examples: Sequence[SFTExample], cfg: TrainingConfig, prompt_template: str = "{question}",
    system: Optional[str] = None,
) -> tuple[list[dict], dict]:
    """Training rows for the SFT stack under its ``overlong`` rule: an anchor longer than
    ``max_seq_len`` is left out (``drop``) or cut by the collator (``truncate``); with ``drop`` an
    over-long positive or negative is left out (the triplet term then masks that anchor)."""
    rows = []
    stats = {"dropped": 0, "truncated": 0, "overlong_dropped": 0}
    limit = cfg.max_seq_len or None
    for ex in examples:
        it = encode_triplet_example(tokenizer, ex, prompt_template, system)
        a = it["anchor"]
        if limit and len(a["input_ids"]) > limit:
            if cfg.overlong == "drop":
                stats["overlong_dropped"] += 1
                continue
            stats["truncated"] += 1
        if all(t == -100 for t in a["labels"][1:limit]):  # nothing of the rationale within max_seq_len
            stats["dropped"] += 1
            continue

        def side(name: str) -> list:
            enc = it[name]
            if enc is None or (limit and cfg.overlong == "drop" and len(enc["input_ids"]) > limit):
                return []
            return list(enc["input_ids"])

        rows.append({
            "problem_id": ex.problem_id,
            "input_ids": list(a["input_ids"]),
            "labels": list(a["labels"]),
            "prompt_len": int(a["prompt_len"]),
            "positive_input_ids": side("positive"),
            "negative_input_ids": side("negative"),
            "length": min(len(a["input_ids"]), limit or len(a["input_ids"])),
        })
    return rows, stats


def tailored_method(cfg: TailoredConfig) -> TrainerMethod:
    """Tailored Learning's round training as a method of the SFT stack (``training.train_method``)."""
    return TrainerMethod(
        name="tailored",
        trainer_class=TailoredTrainer,
        collator=lambda tok: TailoredCollator(tok.pad_token_id, cfg.prefix_weight, cfg.max_seq_len,
                                              use_triplet=cfg.lam > 0),
        trainer_kwargs={"lam": cfg.lam, "margin": cfg.margin, "triplet_layer": cfg.triplet_layer},
        batching=lambda mode: ("no_same_question", "Tailored Learning's own batch sampler"),
        log_keys=("mle", "triplet", "n_triplets"),
    )


def train_tailored_round(
    init_model_dir: PathLike,
    examples: Sequence[SFTExample],
    output_dir: PathLike,
    cfg: TailoredConfig,
    prompt_template: str = "{question}",
    system: Optional[str] = None,
    resume: bool = True,
) -> TrainResult:
    """One round of training from ``init_model_dir`` on the one SFT training stack
    (``training.train_method``); full model saved to ``output_dir/model`` with ``loss_history.json``
    and ``train_result.json`` beside it. ``TrainResult.n_examples`` counts the anchors trained on."""
    if not examples:
        raise ValueError("Tailored Learning needs at least one training example in a round")
    if not isinstance(cfg, TailoredConfig):
        raise TypeError(f"train_tailored_round: cfg must be a TailoredConfig, got {type(cfg).__name__}")

    def rows_for(tokenizer):
        return tailored_rows(tokenizer, examples, cfg, prompt_template, system)

    return train_method(init_model_dir, output_dir, cfg, rows_for, len(examples), tailored_method(cfg),
                        prompt_template=prompt_template, system=system, resume=resume)


# --------------------------------------------------------------------------------------------
# Rounds: exam → teacher feedback → training
# --------------------------------------------------------------------------------------------


@dataclass
class RoundResult:
    """What one round did (``round_<r>/result.json``)."""

    round: int
    model_dir: str  # the student after this round (round 0: the base student)
    trained: bool
    n_exam_attempts: int = 0
    exam_accuracy: Optional[float] = None
    n_wrong_rationales: int = 0
    n_teacher_rationales: int = 0  # correct ones kept
    n_teacher_dropped: int = 0  # wrong ones dropped
    n_train: int = 0
    n_triplets: int = 0
    train_seconds: float = 0.0
    meta: dict = field(default_factory=dict)


def default_generator_factory(generation=None):
    """``model_dir → generator`` through ``generation.open_generator`` with a profile's
    ``generation`` section (a ``config.GenerationConfig``; None: its defaults)."""

    def factory(model_dir: PathLike):
        from .config import GenerationConfig
        from .generation import open_generator

        return open_generator(str(model_dir), generation or GenerationConfig())

    return factory


def _default_grader():
    from .grading import grade

    return grade


def run_exam(
    generator,
    problems: Sequence[Problem],
    cfg: TailoredConfig,
    grader: Callable,
    prompt_template: str = "{question}",
    system: Optional[str] = None,
    model_name: str = "student",
) -> list[StudentAttempt]:
    """The student answers every question ``exam_samples`` times; each answer is graded."""
    from .generation import SamplingConfig

    sampling = SamplingConfig(
        n=cfg.exam_samples,
        temperature=cfg.exam_temperature,
        top_p=cfg.exam_top_p,
        max_new_tokens=cfg.exam_max_new_tokens,
        seed=cfg.seed,
    )
    outputs = generator.generate(
        [p.question for p in problems], sampling, prompt_template=prompt_template, system=system
    )
    from .exposure import is_unfinished

    attempts = []
    for problem, generations in zip(problems, outputs):
        for i, g in enumerate(generations):
            result = grader(g.text, problem.answer)
            attempts.append(
                StudentAttempt(
                    problem_id=problem.id,
                    sample_index=i,
                    response=g.text,
                    answer=result.predicted,
                    correct=result.correct,
                    model=model_name,
                    reason=result.reason,
                    meta={"n_tokens": g.n_tokens, "finish_reason": g.finish_reason},
                    unfinished=is_unfinished(g.finish_reason, result.predicted),
                )
            )
    return attempts


def tailored_rationales(
    problems: Sequence[Problem], teacher, wrong: dict[str, list[str]], cfg: TailoredConfig
) -> list[TeacherTrace]:
    """Rounds ≥ 2: for each question the student got wrong, rationales tailored to its mistakes.

    One batched call (``teacher.tailor_many``), so the API teacher's concurrency applies; a teacher
    without it is asked question by question. A request that failed after every retry stops the
    round with one clear error (the others are cached: a re-run asks only for the failed ones)."""
    items = [(p, wrong[p.id][: cfg.max_wrong_shown]) for p in problems if wrong.get(p.id)]
    if not items:
        return []
    many = getattr(teacher, "tailor_many", None)
    if many is None:
        return [replace(teacher.tailor(p, mistakes), sample_index=s)
                for p, mistakes in items for s in range(cfg.tailor_samples)]
    from .budget import is_left_out, since, snapshot, stage_line

    before = snapshot(teacher)  # the prompt budget's counts (orion_utils.budget): this call's are shown
    groups = many(items, n=cfg.tailor_samples)
    counts = since(teacher, before, ["tailor"])
    if counts:
        print(stage_line("tailored", counts))
    # an item left out by the prompt budget gets no rationale (counted above); the others must all be there
    short = [p.id for (p, _), g in zip(items, groups) if not is_left_out(g) and len(g) < cfg.tailor_samples]
    if short:
        from .teachers.prompts import TeacherRequestFailed

        raise TeacherRequestFailed(
            f"tailor requests for {len(short)} of {len(items)} questions failed after every retry (first: "
            f"problem {short[0]!r}); they are recorded, and the next run retries only them"
        )
    return [t for g in groups if not is_left_out(g) for t in g]


def _exam_round(
    rdir: RoundDir,
    model_dir: str,
    problems,
    generator_factory,
    cfg,
    grader,
    prompt_template,
    system,
    model_name: str,
) -> list[StudentAttempt]:
    def make() -> list[StudentAttempt]:
        from .generation import release_memory

        release_memory(before=model_dir)  # the last round's trainer, before the exam's generator starts
        generator = generator_factory(model_dir)
        try:
            return run_exam(generator, problems, cfg, grader, prompt_template, system, model_name)
        finally:
            if hasattr(generator, "close"):
                generator.close()

    return read_or_make(rdir.exam, StudentAttempt, make)


def _exam_stats(attempts: Sequence[StudentAttempt]) -> dict:
    wrong = unique_wrong_rationales(attempts)
    return {
        "n_exam_attempts": len(attempts),
        "exam_accuracy": (sum(a.correct for a in attempts) / len(attempts)) if attempts else None,
        "n_wrong_rationales": sum(len(v) for v in wrong.values()),
    }


def run_tailored(
    student_dir: PathLike,
    problems: Sequence[Problem],
    teacher,
    generator_factory: Callable,
    rounds: Optional[int],
    cfg: TailoredConfig,
    out_dir: PathLike,
    *,
    grader: Optional[Callable] = None,
    prompt_template: str = "{question}",
    system: Optional[str] = None,
) -> list[RoundResult]:
    """Run the exam → feedback → training loop for ``rounds`` learning rounds (default ``cfg.rounds``).

    ``generator_factory(model_dir)`` returns a generator (``generation.load_generator``'s
    interface); ``teacher`` offers ``collect`` (round 1) and ``tailor`` (rounds ≥ 2);
    ``grader(response, gold)`` defaults to ``grading.grade``. Artefacts per round under
    ``out_dir/round_<r>/``: ``exam.jsonl``, ``teacher.jsonl``, ``train.jsonl``,
    ``loss_history.json``, ``model/``, ``result.json``; the final student at ``out_dir/model``.
    Resumable, each step through ``rundir.read_or_make``: exams and teacher outputs already on disk
    are read back, and a round whose ``result.json`` and model exist is not trained again.
    """
    from .jsonl import write_json, write_jsonl

    rounds = cfg.rounds if rounds is None else rounds
    if rounds < 1:
        raise ValueError("Tailored Learning needs at least one learning round")
    grader = grader or _default_grader()
    layout = TailoredDir(out_dir)
    model_dir = str(student_dir)

    rdir = layout.round(0)
    attempts = _exam_round(
        rdir, model_dir, problems, generator_factory, cfg, grader, prompt_template, system, "base"
    )
    wrong = unique_wrong_rationales(attempts)
    results = [RoundResult(round=0, model_dir=model_dir, trained=False, **_exam_stats(attempts))]
    write_json(rdir.result, asdict(results[0]))
    positive_pool: dict[str, list[str]] = defaultdict(list)

    for r in range(1, rounds + 1):
        rdir = layout.round(r)
        stats: dict = {}
        if r == 1:
            traces = read_or_make(
                rdir.teacher,
                TeacherTrace,
                lambda: list(teacher.collect(problems, n=cfg.teacher_samples)),
            )
            source = "teacher"
        else:
            attempts = _exam_round(
                rdir,
                model_dir,
                problems,
                generator_factory,
                cfg,
                grader,
                prompt_template,
                system,
                f"round_{r - 1}",
            )
            wrong = unique_wrong_rationales(attempts)
            stats = _exam_stats(attempts)
            traces = read_or_make(
                rdir.teacher,
                TeacherTrace,
                lambda wrong=wrong: tailored_rationales(problems, teacher, wrong, cfg),
            )
            source = "tailored"
        correct = [t for t in traces if t.correct]
        for t in correct:
            positive_pool[t.problem_id].append(t.cot)
        examples = triplet_examples(problems, correct, positive_pool, wrong, source, seed=cfg.seed + r)
        write_jsonl(rdir.train, examples)
        counts = {
            "n_teacher_rationales": len(correct),
            "n_teacher_dropped": len(traces) - len(correct),
            "n_train": len(examples),
        }
        result = read_or_make(
            rdir.result,
            RoundResult,
            lambda: _train_round(r, rdir, model_dir, examples, cfg, prompt_template, system, {**stats, **counts}),
            usable=lambda done: not done.trained or is_saved_model(done.model_dir),  # its model is still there
        )
        results.append(result)
        model_dir = result.model_dir

    final = layout.model
    if Path(model_dir).resolve() != final.resolve():
        link_or_copy_tree(Path(model_dir), final)
    write_json(layout.rounds_summary, [asdict(r) for r in results])
    return results


def _train_round(
    r: int,
    rdir: RoundDir,
    model_dir: str,
    examples: list,
    cfg: TailoredConfig,
    prompt_template: str,
    system: Optional[str],
    counts: dict,
) -> RoundResult:
    """Train round ``r`` from ``model_dir`` (``run_tailored`` reads a finished round's result back instead)."""
    if not examples:  # nothing new to learn (no mistakes, or no verified rationale): keep the student
        return RoundResult(
            round=r,
            model_dir=model_dir,
            trained=False,
            **counts,
            meta={"init_model": model_dir, "skipped": "no training examples"},
        )
    trained = train_tailored_round(model_dir, examples, rdir.root, cfg, prompt_template, system)
    n_triplets = sum(1 for ex in examples if ex.meta.get("positive") and ex.meta.get("negative"))
    return RoundResult(
        round=r,
        model_dir=trained.model_dir,
        trained=True,
        n_triplets=n_triplets,
        train_seconds=trained.train_seconds,
        **counts,
        meta={"init_model": model_dir, "n_steps": trained.n_steps, "backend": trained.backend,
              "device": trained.device, "dtype": trained.dtype, "batching": trained.batching},
    )


def look_inside(run, round_index: Optional[int] = None, show: bool = True) -> Optional[dict]:
    """One Tailored Learning triplet as ``triplet_examples`` built it: the anchor (a correct teacher
    rationale, trained on with the MLE loss), a positive (another correct rationale of the same question)
    and a negative (one of the student's wrong rationales), with their token counts from
    ``encode_triplet_example``. A triplet with both ends, from the given or the first round that has one;
    None, with a note, when this run did not run Tailored Learning."""
    from transformers import AutoTokenizer

    from .chat import run_prompt_format
    from .display import key_values, markdown
    from .jsonl import read_jsonl

    rounds_on_disk = run.tailored().rounds()
    if round_index is not None:
        rounds_on_disk = [r for r in rounds_on_disk if r.root.name == f"round_{round_index}"]
    paths = [r.train for r in rounds_on_disk if r.train.is_file()]
    rounds = [(p.parent.name, read_jsonl(p, SFTExample)) for p in paths]
    candidates = [(name, ex) for name, examples in rounds for ex in examples]
    if not candidates:
        print("Tailored Learning was not run here (is 'tailored' in evaluation.methods?): "
              "no triplets to look at.")
        return None
    full = [(n, e) for n, e in candidates if e.meta.get("positive") and e.meta.get("negative")]
    name, ex = (full or candidates)[0]
    template, system = run_prompt_format(run)
    enc = encode_triplet_example(AutoTokenizer.from_pretrained(run.student_model()), ex, template, system)
    look = {"round": name, "problem_id": ex.problem_id, "question": ex.question, "anchor": ex.response,
            "positive": ex.meta.get("positive"), "negative": ex.meta.get("negative"),
            "tokens": {k: (len(v["input_ids"]) if v else None) for k, v in enc.items() if k != "problem_id"}}
    if show:
        key_values({"round": name, "problem_id": ex.problem_id, "question": ex.question,
                    **{f"{k} tokens": v for k, v in look["tokens"].items()}}, title="one triplet")
        for part in ("anchor", "positive", "negative"):
            body = look[part] if look[part] is not None else "(none: the triplet term masks it out)"
            markdown(f"**{part}**\n\n```\n{body}\n```")
    return look


__all__ = [
    "TailoredConfig",
    "weighted_mle_loss",
    "cosine_distance",
    "triplet_loss",
    "last_token_hidden",
    "NoSameQuestionBatchSampler",
    "unique_wrong_rationales",
    "triplet_examples",
    "encode_triplet_example",
    "TailoredCollator",
    "tailored_loss",
    "tailored_rows",
    "tailored_method",
    "TailoredTrainer",
    "train_tailored_round",
    "RoundResult",
    "default_generator_factory",
    "run_exam",
    "tailored_rationales",
    "run_tailored",
    "look_inside",
]
