"""Pre-training of the toy student: from random weights to "competent but error-prone" in minutes on CPU.

This builds the toy *base model* (the stand-in for a pretrained student), it is not the
distillation SFT: a plain, fast torch loop (AdamW, length-grouped padded batches, loss on the
assistant turn only via ``chat.encode_for_training``) on the toy teacher's CoTs for in-distribution
training problems.

How it leaves room for the distillation SFT (the design): the learning rate ramps up, stays
constant, and over the last ``decay_frac`` of the steps decays linearly to ``final_lr_frac`` of its
peak, not to zero. The student stops part-way through this anneal: it reads the format, copies
most operands and does most small sums right, but still slips (a wrong operand, a wrong sum, a
wrong carried value) at various steps, which is what error exposure needs. Any later fine-tuning on
teacher CoTs with a decaying learning rate (the distillation SFT) continues the anneal and lifts
accuracy within a minute or two. Small batches and many steps work far better than large batches
here (the copy mechanism needs optimizer steps to form). A fixed step count, not a time budget,
keeps the base model the same on a fast or a busy machine; ``time_budget_s`` is only a safety cap.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from ..device import torch_threads
from ..records import Problem, format_cot
from ..sections import PretrainConfig  # the section: toy.pretrain.PretrainConfig


def _pretrain_wording(cfg: PretrainConfig, problem: Problem) -> tuple[Optional[int], Optional[str]]:
    """How a pre-training CoT is worded, as the toy teacher's ``(variant, wording)`` arguments.

    Without ``own_variant``: ``(None, None)``, the teacher's own wording. With it: the student's own,
    ``(own_variant, "fixed")``, except for a ``teacher_wording_share`` of the problems (a seeded draw
    per problem), worded as the R1-style teacher writes, ``(None, "varied")``."""
    if cfg.own_variant is None:
        return None, None
    # the seed string predates the module's name; changing it would change which CoTs are worded how
    draw = random.Random(f"warmup-wording|{cfg.seed}|{problem.id}").random()
    return (None, "varied") if draw < cfg.teacher_wording_share else (cfg.own_variant, "fixed")


def _teacher_responses(problems: Sequence[Problem], teacher, cfg: PretrainConfig) -> list[tuple[str, str]]:
    """(question, correct CoT) pairs. A toy teacher is asked directly (no grading needed: it knows
    where it slipped; ``caught_slip_rate`` of its CoTs catch a slip; the wording per
    ``_pretrain_wording``); any other teacher goes through ``collect`` and its graded ``correct`` flag."""
    pairs = []
    if hasattr(teacher, "sample"):
        for p in problems:
            variant, wording = _pretrain_wording(cfg, p)
            thinking, solution, meta = teacher.sample(p, 0, style=cfg.style, caught_slip_rate=cfg.caught_slip_rate,
                                                      variant=variant, wording=wording)
            if meta.get("slip_step") is None:
                pairs.append((p.question, format_cot(thinking, solution)))
        return pairs
    by_id = {p.id: p for p in problems}
    for trace in teacher.collect(list(problems), n=1):
        if trace.correct:
            pairs.append((by_id[trace.problem_id].question, trace.cot))
    return pairs


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.ramp_steps:
        return cfg.lr * (step + 1) / cfg.ramp_steps
    lo = cfg.lr * cfg.final_lr_frac
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "wsd":
        decay_start = cfg.max_steps - round(cfg.decay_frac * cfg.max_steps)
        if step < decay_start:
            return cfg.lr
        progress = (step - decay_start + 1) / max(1, cfg.max_steps - decay_start)
        return cfg.lr - (cfg.lr - lo) * min(1.0, progress)
    span = max(1, cfg.max_steps - cfg.ramp_steps)
    progress = min(1.0, (step - cfg.ramp_steps) / span)
    return lo + (cfg.lr - lo) * 0.5 * (1 + math.cos(math.pi * progress))


def _batches(lengths: list[int], batch_size: int, rng: random.Random, window: int = 16) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * window
    out = []
    for s in range(0, len(order), span):
        chunk = sorted(order[s:s + span], key=lambda i: lengths[i])
        out += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def pretrain_student(
    model_dir: Union[str, Path],
    out_dir: Union[str, Path],
    problems: Sequence[Problem],
    teacher,
    cfg: Optional[PretrainConfig] = None,
) -> dict:
    """Train the (randomly initialised) toy student in ``model_dir`` on the teacher's CoTs for
    ``problems`` and ``save_pretrained`` model + tokenizer into ``out_dir``.

    ``teacher``: a ``ToyTeacher`` (its CoTs in ``cfg.style``; slipped samples skipped) or any
    ``Teacher`` (``collect``, correct traces kept). Returns stats: steps, stopped_by, seconds (wall),
    cpu_seconds, final_loss (mean of the last 20 steps), loss_history, params, n_examples,
    tokens_seen, threads, config.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .student import count_parameters

    cfg = cfg or PretrainConfig()
    out_dir = Path(out_dir)
    tokenizer, rows = _training_rows(model_dir, problems, teacher, cfg)
    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        run = _train(model, rows, tokenizer.pad_token_id, cfg)
        model.eval()
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    tail = [h["loss"] for h in run["history"][-20:]]
    return {
        "steps": run["steps"],
        "stopped_by": run["stopped_by"],
        "seconds": round(run["seconds"], 1),
        "cpu_seconds": round(run["cpu_seconds"], 1),  # process CPU time: what a busy machine does not inflate
        "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "loss_history": run["history"],
        "params": count_parameters(model),
        "n_examples": len(rows),
        "tokens_seen": run["tokens_seen"],
        "threads": torch.get_num_threads() if not cfg.threads else cfg.threads,
        "config": cfg.to_dict(),
    }


def _training_rows(model_dir: Union[str, Path], problems: Sequence[Problem], teacher,
                   cfg: PretrainConfig) -> tuple[object, list[dict]]:
    """The student's tokenizer and its training rows: the teacher's correct CoTs, each encoded with the
    loss on the assistant turn (``chat.encode_for_training``), cut at ``max_seq_len``."""
    from transformers import AutoTokenizer

    from ..chat import encode_for_training

    pairs = _teacher_responses(problems, teacher, cfg)
    if not pairs:
        raise ValueError("pretrain_student: the teacher gave no correct CoT for the given problems")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    rows = [
        encode_for_training(tokenizer, q, r, template=cfg.prompt_template, max_seq_len=cfg.max_seq_len)
        for q, r in pairs
    ]
    return tokenizer, rows


def _optimizer(model, cfg: PretrainConfig):
    """AdamW, weight decay on the matrices only."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8,
    )


def _padded_batch(batch: list[int], rows: list[dict], lengths: list[int], pad_id: int):
    """``(input_ids, labels, attention_mask)`` of the rows in ``batch``, right-padded to the longest."""
    import torch

    width = max(lengths[i] for i in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for b, i in enumerate(batch):
        n = lengths[i]
        ids[b, :n] = torch.tensor(rows[i]["input_ids"])
        labels[b, :n] = torch.tensor(rows[i]["labels"])
        mask[b, :n] = 1
    return ids, labels, mask


def _train(model, rows: list[dict], pad_id: int, cfg: PretrainConfig) -> dict:
    """The loop: ``max_steps`` optimizer steps on length-grouped padded batches at ``_lr_at``'s learning
    rate (fewer if a step would start after ``time_budget_s``), the loss logged every ``log_every``.
    Returns steps, stopped_by, seconds, cpu_seconds, history (one entry per step), tokens_seen."""
    import torch

    lengths = [len(r["input_ids"]) for r in rows]
    rng = random.Random(cfg.seed)
    model.train()
    opt = _optimizer(model, cfg)
    history: list[dict] = []
    queue: list[list[int]] = []
    tokens_seen = step = 0
    t0, cpu0 = time.time(), time.process_time()
    stopped = "max_steps"
    while step < cfg.max_steps:
        if time.time() - t0 > cfg.time_budget_s:
            stopped = "time_budget"
            break
        if not queue:
            queue = _batches(lengths, cfg.batch_size, rng)
        ids, labels, mask = _padded_batch(queue.pop(), rows, lengths, pad_id)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        tokens_seen += int((labels != -100).sum())
        history.append({"step": step + 1, "loss": float(loss.detach()), "lr": _lr_at(step, cfg),
                        "seconds": round(time.time() - t0, 2)})
        step += 1
        if cfg.log_every and step % cfg.log_every == 0:
            recent = [h["loss"] for h in history[-cfg.log_every:]]
            print(f"[pretrain] step {step}/{cfg.max_steps} loss {sum(recent) / len(recent):.4f} "
                  f"{time.time() - t0:.0f}s", flush=True)
    return {"steps": step, "stopped_by": stopped, "seconds": time.time() - t0,
            "cpu_seconds": time.process_time() - cpu0, "history": history, "tokens_seen": tokens_seen}


def greedy_responses(
    model_dir: Union[str, Path],
    problems: Sequence[Problem],
    max_new_tokens: int = 256,
    batch_size: int = 64,
    prompt_template: str = "{question}",
) -> list[str]:
    """Greedy responses (left-padded batched ``model.generate``, via the generation backend)."""
    from ..generation import SamplingConfig, TransformersBackend

    gen = TransformersBackend(str(model_dir), batch_size=batch_size, progress=False)
    try:
        outs = gen.generate(
            [p.question for p in problems],
            SamplingConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens),
            prompt_template=prompt_template,
        )
    finally:
        gen.close()
    return [o[0].text for o in outs]


def quick_accuracy(
    model_dir: Union[str, Path],
    problems: Sequence[Problem],
    max_new_tokens: int = 256,
    batch_size: int = 64,
    prompt_template: str = "{question}",
) -> float:
    """Greedy accuracy of the model in ``model_dir`` on ``problems`` (graded by ``grading.grade``)."""
    from ..grading import grade

    problems = list(problems)
    if not problems:
        return float("nan")
    responses = greedy_responses(model_dir, problems, max_new_tokens, batch_size, prompt_template)
    return sum(bool(grade(r, p.answer).correct) for r, p in zip(responses, problems)) / len(problems)
