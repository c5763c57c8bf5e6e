"""Tailored Learning baseline (Wang et al., EMNLP 2023): learn from a teacher who reads your exam.

The idea in plain words: the student sits an "exam" on the training questions, and its wrong
rationales are kept. The teacher then writes correct rationales *tailored to those mistakes*,
and the student trains on them with two losses: ordinary likelihood (weighted MLE), and a
self-reflection loss that pulls its representation of a correct rationale towards another
correct rationale of the same question and away from its own wrong one. Then it sits the exam
again, and the loop repeats for a number of rounds.

Rounds (DESIGN.md §1.3; ``run_tailored``):

- round 0, exam: the base student samples ``exam_samples`` answers per question (temperature
  1.0); its unique wrong rationales are kept.
- round 1: the teacher writes rationales for all training questions (wrong ones dropped); the
  student trains on them (negatives: the round-0 wrong rationales).
- round r ≥ 2: the round r−1 student sits the exam again; its wrong rationales go to the teacher
  with the question (``teacher.tailor``); training continues from the round r−1 checkpoint on the
  new, tailored rationales.

Loss (``TailoredTrainer``): ``weighted_mle_loss`` + λ · ``triplet_loss`` on the last-layer
hidden state of each sequence's last token. A ``NoSameQuestionBatchSampler`` never puts two
rationales of one question in one batch.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from .chat import encode_for_training
from .edit import (
    CustomTrainResult,
    _link_or_copy_tree,
    _pad,
    _StatsMixin,
    backend_name,
    load_model_and_tokenizer,
    loss_history,
    run_trainer,
    save_full_model,
    token_nll,
    training_arguments,
)
from .records import Problem, SFTExample, StudentAttempt, TeacherTrace

PathLike = Union[str, Path]


@dataclass
class TailoredConfig:
    """Tailored Learning's knobs (the ``tailored`` section of a profile)."""

    rounds: int = 2  # learning rounds after the round-0 exam (1: teacher rationales only)
    # exam
    exam_samples: int = 4  # answers per question (paper: 4)
    exam_temperature: float = 1.0  # paper: 1.0
    exam_top_p: float = 1.0
    exam_max_new_tokens: int = 1024
    # teacher
    teacher_samples: int = 2  # round-1 rationales per question; ≥ 2 gives the triplet its positives
    tailor_samples: int = 1  # rounds ≥ 2: tailored rationales per question the student got wrong
    max_wrong_shown: int = 4  # wrong rationales shown to the teacher per question
    # loss
    prefix_weight: float = 0.1  # MLE weight of the prompt ("prefix") tokens; rationale tokens get 1
    lam: float = 0.5  # λ, weight of the self-reflection (triplet) loss
    margin: float = 1.0  # triplet margin; distance is −cosine
    # training (each round)
    learning_rate: float = 1e-5
    num_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_epochs
    batch_size: int = 4  # rationales per step, all of different questions
    grad_accum: int = 1
    max_seq_len: int = 4096
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    use_lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"
    bf16: Optional[bool] = None  # None: on when a CUDA GPU supports it
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    progress_bar: bool = False  # the Trainer's progress bar and per-log printout (False: quiet)
    seed: int = 0


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def weighted_mle_loss(logits, labels, weights):
    """Weighted MLE: Σ_t w_t·NLL_t / (number of predicted tokens), over the whole batch.

    ``labels`` are the tokens to predict (−100: none), ``weights`` their weights, both aligned
    with the input positions (the label at t is predicted from the logits at t−1). Here the
    prompt ("prefix") tokens have weight ``prefix_weight`` (0.1) and the rationale tokens 1; as in
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
    """The student's distinct wrong rationales per question (whitespace-normalised duplicates dropped)."""
    out: dict[str, list[str]] = defaultdict(list)
    seen: set = set()
    for a in attempts:
        key = (a.problem_id, _normalise(a.response))
        if not a.correct and key not in seen:
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


class _ListDataset:
    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def encode_triplet_example(
    tokenizer, ex: SFTExample, prompt_template: str = "{question}", system: Optional[str] = None
) -> dict:
    """Token ids of the anchor (with its prompt length), and of its positive and negative if any."""

    def enc(response: Optional[str]) -> Optional[dict]:
        if response is None:
            return None
        e = encode_for_training(tokenizer, ex.question, response, prompt_template, system=system)
        return {"input_ids": e["input_ids"], "prompt_len": e["prompt_len"]}

    return {
        "problem_id": ex.problem_id,
        "anchor": enc(ex.response),
        "positive": enc(ex.meta.get("positive")),
        "negative": enc(ex.meta.get("negative")),
    }


class TailoredCollator:
    """B anchors → one batch: the B anchors, then the K positives and K negatives of the anchors
    that have both (``triplet_index`` says which anchor each triplet belongs to).

    Anchor rows carry MLE labels on every token (the prompt included) with weight
    ``prefix_weight`` on the prompt and 1 on the rationale; positive/negative rows carry no labels.
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

    def __call__(self, features: list[dict]) -> dict:
        import torch

        rows, labels, weights = [], [], []
        for f in features:
            ids = self._cut(f["anchor"]["input_ids"])
            plen = f["anchor"]["prompt_len"]
            rows.append(ids)
            labels.append(list(ids))
            weights.append([self.prefix_weight if t < plen else 1.0 for t in range(len(ids))])
        with_both = [
            i for i, f in enumerate(features) if self.use_triplet and f["positive"] and f["negative"]
        ]
        for side in ("positive", "negative"):
            for i in with_both:
                ids = self._cut(features[i][side]["input_ids"])
                rows.append(ids)
                labels.append([-100] * len(ids))
                weights.append([0.0] * len(ids))
        length = max(len(r) for r in rows)
        return {
            "input_ids": torch.tensor(_pad(rows, self.pad_token_id, length), dtype=torch.long),
            "attention_mask": torch.tensor(_pad([[1] * len(r) for r in rows], 0, length), dtype=torch.long),
            "labels": torch.tensor(_pad(labels, -100, length), dtype=torch.long),
            "mle_weights": torch.tensor(_pad(weights, 0.0, length), dtype=torch.float32),
            "n_anchors": torch.tensor(len(features), dtype=torch.long),
            "triplet_index": torch.tensor(with_both, dtype=torch.long),
        }


def tailored_loss(logits, hidden, batch: dict, lam: float = 0.5, margin: float = 1.0) -> tuple[Any, dict]:
    """MLE on the anchor rows + λ · triplet loss on last-token hidden states (see ``TailoredCollator``)."""
    n = int(batch["n_anchors"])
    index = batch["triplet_index"]
    k = index.numel()
    mle = weighted_mle_loss(logits[:n], batch["labels"][:n], batch["mle_weights"][:n])
    if k:
        last = last_token_hidden(hidden, batch["attention_mask"])
        trip = triplet_loss(last[index], last[n : n + k], last[n + k : n + 2 * k], margin=margin)
    else:
        trip = (logits[:0].sum() * 0.0).float()
    loss = mle + lam * trip
    return loss, {"mle": mle.item(), "triplet": trip.item(), "n_triplets": float(k)}


@functools.cache
def make_tailored_trainer_class():
    """The ``TailoredTrainer`` class: a ``transformers.Trainer`` subclass, built on first use."""
    from transformers import Trainer

    class TailoredTrainer(_StatsMixin, Trainer):
        """A Trainer with ``tailored_loss`` and batches from ``NoSameQuestionBatchSampler``.

        One forward pass over anchors, positives and negatives (``output_hidden_states=True``);
        the loss is a per-batch mean, so the Trainer divides it by the accumulation steps.
        """

        loss_is_scaled_for_ga = False

        def __init__(self, *args, lam: float = 0.5, margin: float = 1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.lam, self.margin = lam, margin

        def get_train_dataloader(self):
            from torch.utils.data import DataLoader

            dataset = self.train_dataset
            sampler = NoSameQuestionBatchSampler(
                [it["problem_id"] for it in dataset.items],
                self.args.per_device_train_batch_size,
                seed=self.args.seed,
            )
            loader = DataLoader(
                dataset,
                batch_sampler=sampler,
                collate_fn=self.data_collator,
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
            )
            return self.accelerator.prepare(loader)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                output_hidden_states=True,
            )
            loss, stats = tailored_loss(
                outputs.logits, outputs.hidden_states[-1], inputs, self.lam, self.margin
            )
            self._record(stats)
            return (loss, outputs) if return_outputs else loss

    return TailoredTrainer


def train_tailored_round(
    init_model_dir: PathLike,
    examples: Sequence[SFTExample],
    output_dir: PathLike,
    cfg: TailoredConfig,
    prompt_template: str = "{question}",
    system: Optional[str] = None,
) -> CustomTrainResult:
    """One round of training from ``init_model_dir``; full model saved to ``output_dir/model``."""
    from transformers import set_seed

    from .jsonl import write_json

    if not examples:
        raise ValueError("Tailored Learning needs at least one training example in a round")
    output_dir = Path(output_dir)
    set_seed(cfg.seed)
    import torch

    from .training import cpu_threads, threads_for_model_dir

    threads = threads_for_model_dir(init_model_dir) if not torch.cuda.is_available() else 0
    with cpu_threads(threads):  # a tiny model on CPU trains fastest on one thread
        model, tokenizer = load_model_and_tokenizer(init_model_dir, cfg)
        items = [encode_triplet_example(tokenizer, ex, prompt_template, system) for ex in examples]
        trainer = make_tailored_trainer_class()(
            model=model,
            args=training_arguments(output_dir, cfg, len(items)),
            train_dataset=_ListDataset(items),
            data_collator=TailoredCollator(
                tokenizer.pad_token_id, cfg.prefix_weight, cfg.max_seq_len, use_triplet=cfg.lam > 0
            ),
            lam=cfg.lam,
            margin=cfg.margin,
        )
        seconds = run_trainer(trainer, "tailored", cfg, len(items))
        model_dir = save_full_model(trainer, tokenizer, output_dir / "model")
        history = loss_history(trainer)
        write_json(output_dir / "loss_history.json", history)
        n_triplets = sum(1 for it in items if it["positive"] and it["negative"])
        return CustomTrainResult(
            model_dir=model_dir,
            backend=backend_name(cfg),
            loss_history=history,
            train_seconds=seconds,
            n_examples=len(items),
            n_steps=trainer.state.global_step,
            meta={"init_model": str(init_model_dir), "n_triplets": n_triplets},
        )


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
                )
            )
    return attempts


def tailored_rationales(
    problems: Sequence[Problem], teacher, wrong: dict[str, list[str]], cfg: TailoredConfig
) -> list[TeacherTrace]:
    """Rounds ≥ 2: for each question the student got wrong, rationales tailored to its mistakes."""
    traces = []
    for problem in problems:
        mistakes = wrong.get(problem.id, [])[: cfg.max_wrong_shown]
        if not mistakes:
            continue
        for s in range(cfg.tailor_samples):
            traces.append(replace(teacher.tailor(problem, mistakes), sample_index=s))
    return traces


def _cached(path: Path, cls, make: Callable[[], list]) -> list:
    """Read ``path`` if a previous run wrote it, else make the records and write them."""
    from .jsonl import read_jsonl, write_jsonl

    if path.exists():
        return read_jsonl(path, cls)
    records = make()
    write_jsonl(path, records)
    return records


def _exam_round(
    rdir: Path,
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
        generator = generator_factory(model_dir)
        try:
            return run_exam(generator, problems, cfg, grader, prompt_template, system, model_name)
        finally:
            if hasattr(generator, "close"):
                generator.close()

    return _cached(rdir / "exam.jsonl", StudentAttempt, make)


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
    Resumable: exams and teacher outputs already on disk are read back, and a round whose
    ``result.json`` and model exist is not trained again.
    """
    from .jsonl import write_json, write_jsonl

    rounds = cfg.rounds if rounds is None else rounds
    if rounds < 1:
        raise ValueError("Tailored Learning needs at least one learning round")
    grader = grader or _default_grader()
    out_dir = Path(out_dir)
    model_dir = str(student_dir)

    rdir = out_dir / "round_0"
    attempts = _exam_round(
        rdir, model_dir, problems, generator_factory, cfg, grader, prompt_template, system, "base"
    )
    wrong = unique_wrong_rationales(attempts)
    results = [RoundResult(round=0, model_dir=model_dir, trained=False, **_exam_stats(attempts))]
    write_json(rdir / "result.json", asdict(results[0]))
    positive_pool: dict[str, list[str]] = defaultdict(list)

    for r in range(1, rounds + 1):
        rdir = out_dir / f"round_{r}"
        stats: dict = {}
        if r == 1:
            traces = _cached(
                rdir / "teacher.jsonl",
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
            traces = _cached(
                rdir / "teacher.jsonl",
                TeacherTrace,
                lambda wrong=wrong: tailored_rationales(problems, teacher, wrong, cfg),
            )
            source = "tailored"
        correct = [t for t in traces if t.correct]
        for t in correct:
            positive_pool[t.problem_id].append(t.cot)
        examples = triplet_examples(problems, correct, positive_pool, wrong, source, seed=cfg.seed + r)
        write_jsonl(rdir / "train.jsonl", examples)
        counts = {
            "n_teacher_rationales": len(correct),
            "n_teacher_dropped": len(traces) - len(correct),
            "n_train": len(examples),
        }
        result = _train_or_resume(
            r, rdir, model_dir, examples, cfg, prompt_template, system, {**stats, **counts}
        )
        write_json(rdir / "result.json", asdict(result))
        results.append(result)
        model_dir = result.model_dir

    final = out_dir / "model"
    if Path(model_dir).resolve() != final.resolve():
        _link_or_copy_tree(Path(model_dir), final)
    write_json(out_dir / "rounds.json", [asdict(r) for r in results])
    return results


def _train_or_resume(
    r: int,
    rdir: Path,
    model_dir: str,
    examples: list,
    cfg: TailoredConfig,
    prompt_template: str,
    system: Optional[str],
    counts: dict,
) -> RoundResult:
    """Train round ``r`` from ``model_dir``, unless a previous run already did (then read its result)."""
    done = rdir / "result.json"
    if done.exists():
        previous = RoundResult(**json.loads(done.read_text(encoding="utf-8")))
        if not previous.trained or (Path(previous.model_dir) / "config.json").exists():
            return previous
    if not examples:  # nothing new to learn (no mistakes, or no verified rationale): keep the student
        return RoundResult(
            round=r,
            model_dir=model_dir,
            trained=False,
            **counts,
            meta={"init_model": model_dir, "skipped": "no training examples"},
        )
    trained = train_tailored_round(model_dir, examples, rdir, cfg, prompt_template, system)
    return RoundResult(
        round=r,
        model_dir=trained.model_dir,
        trained=True,
        n_triplets=trained.meta["n_triplets"],
        train_seconds=trained.train_seconds,
        **counts,
        meta={"init_model": model_dir, "n_steps": trained.n_steps, "backend": trained.backend},
    )


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
    "make_tailored_trainer_class",
    "train_tailored_round",
    "RoundResult",
    "default_generator_factory",
    "run_exam",
    "tailored_rationales",
    "run_tailored",
]
