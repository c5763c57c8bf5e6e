"""Tailored Learning's training (Wang et al., EMNLP 2023) on the project's one SFT stack: its losses
(weighted MLE + λ · triplet loss on last-token hidden states), its batch sampler (never two rationales
of one question in a batch), its training data (each correct teacher rationale an anchor, with a
positive and the student's wrong rationale as negative), collator and trainer, and one round's training
(``train_tailored_round``). The rounds themselves (exam → teacher → training) are in ``tailored``."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .chat import encode_for_training
from .config import TailoredConfig, TrainingConfig
from .records import Problem, SFTExample, StudentAttempt, TeacherTrace, text_key
from .training import OrionSFTTrainer, TrainerMethod, TrainResult, pad_rows, token_nll, train_method

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


class WholeBatches:
    """A batch sampler's batches as batches of any length (``batch_size`` None), so that accelerate deals them
    whole to the data-parallel ranks, round-robin: it holds back a round whose last batch is short of a
    ``batch_size`` it knows (``NoSameQuestionBatchSampler``'s batches differ by one)."""

    batch_size = None

    def __init__(self, sampler):
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


# --------------------------------------------------------------------------------------------
# Training data: anchors with a positive and a negative
# --------------------------------------------------------------------------------------------


def unique_wrong_rationales(attempts: Sequence[StudentAttempt]) -> dict[str, list[str]]:
    """The student's distinct wrong rationales per question (whitespace-normalised duplicates dropped).

    An unfinished answer (cut off at ``exam_max_new_tokens``, whatever answer it states: the one rule,
    ``sampling.is_unfinished``) is not a wrong rationale: it shows the teacher no mistake to tailor to,
    and as the triplet's negative it would push the student away from reasoning that may be right."""
    from .exposure import dedupe_errors

    out: dict[str, list[str]] = defaultdict(list)
    for a in dedupe_errors(list(attempts)):
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
        others = [c for c in positive_pool.get(t.problem_id, []) if text_key(c) != text_key(cot)]
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
    """``tailored_loss_from_nll`` on the per-token NLL of the anchor rows' ``logits`` (``token_nll``): the
    loss from logits already made. ``TailoredTrainer`` computes the NLL in bounded memory instead."""
    n = int(batch["n_anchors"])
    return tailored_loss_from_nll(token_nll(logits[:n], batch["labels"][:n]), hidden, batch, lam, margin)


def tailored_loss_from_nll(nll, hidden, batch: dict, lam: float = 0.5, margin: float = 1.0) -> tuple[Any, dict]:
    """MLE on the anchor rows + λ · triplet loss on last-token hidden states (see ``TailoredCollator``),
    from the anchor rows' per-token NLL (``nll``: [n_anchors, T-1], float32, 0 where the label is -100).
    ``hidden`` ([rows, T, H], every row of the batch) may be None when the batch has no triplet."""
    n = int(batch["n_anchors"])
    index = batch["triplet_index"]
    k = index.numel()
    labels, weights = batch["labels"][:n], batch["mle_weights"][:n]
    nll = nll[:n]
    predicted = labels[:, 1:] != -100
    mle = (weights[:, 1:].to(nll.dtype) * nll).sum() / predicted.sum().clamp(min=1).to(nll.dtype)
    if k and hidden is not None:
        last = last_token_hidden(hidden, batch["attention_mask"])
        trip = triplet_loss(last[index], last[n : n + k], last[n + k : n + 2 * k], margin=margin)
    else:
        trip = nll[:0].sum() * 0.0  # attached to the graph
    loss = mle + lam * trip if lam else mle
    stats = {"mle": mle.item(), "triplet": trip.item(), "n_triplets": float(k),
             "nll_sum": float((nll.detach() * predicted).sum())}
    return loss, stats


class TailoredTrainer(OrionSFTTrainer):
    """The project's SFT trainer with ``tailored_loss`` and batches from
    ``NoSameQuestionBatchSampler``; everything else is the SFT trainer's.

    One forward pass over anchors, positives and negatives (``labelled_nll``): the LM head and the
    cross-entropy run on the anchors' labelled tokens only, in bounded memory, and the triplet term
    reads the hidden state ``triplet_layer`` (the last: the backbone's output, already there) only when
    the batch has triplets. The loss is a per-batch mean, so the Trainer divides it by the accumulation
    steps."""

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
            batch_sampler=sampler if self.args.world_size == 1 else WholeBatches(sampler),
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with_triplet = int(inputs["triplet_index"].numel()) > 0
        nll, hidden = self.labelled_nll(model, inputs, hidden_layer=self.triplet_layer if with_triplet else None)
        loss, stats = tailored_loss_from_nll(nll, hidden, inputs, self.lam, self.margin)
        if model.training:
            n = int(inputs["n_anchors"])
            self.count_supervised(stats.pop("nll_sum"), int((inputs["labels"][:n, 1:] != -100).sum()))
            self.record_stats(stats)
        else:
            stats.pop("nll_sum")
        return (loss, {"token_nll": nll}) if return_outputs else loss


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


def _tailored_batching(mode: str) -> tuple[str, str]:
    return "no_same_question", "Tailored Learning's own batch sampler"


def _tailored_collator(tokenizer, cfg: TailoredConfig) -> TailoredCollator:
    return TailoredCollator(tokenizer.pad_token_id, cfg.prefix_weight, cfg.max_seq_len, use_triplet=cfg.lam > 0)


def tailored_method(cfg: TailoredConfig) -> TrainerMethod:
    """Tailored Learning's round training as a method of the SFT stack (``training.train_method``); module-level
    callables only (it pickles for the ranks of a data-parallel run). On N ranks each takes whole batches of its
    sampler, ``grad_accum / N`` of them a step; a batch is never cut (its triplet term is a mean over the batch)."""
    return TrainerMethod(
        name="tailored",
        trainer_class=TailoredTrainer,
        collator=partial(_tailored_collator, cfg=cfg),
        trainer_kwargs={"lam": cfg.lam, "margin": cfg.margin, "triplet_layer": cfg.triplet_layer},
        batching=_tailored_batching,
        log_keys=("mle", "triplet", "n_triplets"),
        refuse_batch_split="Tailored Learning's batches (no two rationales of a question together, a triplet term "
                           "averaged over the batch) are not cut between ranks",
    )


def train_tailored_round(
    init_model_dir: PathLike,
    examples: Sequence[SFTExample],
    output_dir: PathLike,
    cfg: TailoredConfig,
    prompt_template: str = "{question}",
    system: Optional[str] = None,
    resume: bool = True,
    parallel=None,
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
                        prompt_template=prompt_template, system=system, resume=resume, parallel=parallel)
