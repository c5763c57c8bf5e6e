"""EDIT baseline (Dai et al., ACL 2025): learn the *key* tokens of a reasoning chain.

The idea in plain words: a correct chain of thought and a wrong one for the same question are
mostly the same text. The few tokens where they differ are the reasoning steps that decide the
answer. EDIT finds those tokens with an edit-distance alignment and trains the student to make
them likelier in the correct chain and less likely in the wrong one.

Pipeline (the paper's two stages, with prompts of our own; ``run_edit``):

1. **Dual pairs** (``build_dual_pairs``, in ``edit_pairs``), from one of two sources (``"auto"``, the
   default: the teacher wherever it can be asked, ``resolve_pair_source``):

   - ``"teacher"``: the teacher interface. Wrong teacher CoTs are *rectified* (answer-hint
     prompt → D−+), correct ones are *corrupted* (contrastive prompt → D+−). Pairs:
     (CoT+, CoT+−) and (CoT−+, CoT−).
   - ``"exposure"``: ORION's error exposure already gives natural pairs, the teacher's correct
     CoT against the student's own wrong attempts. Not the default: a long teacher CoT and a short
     student attempt share little text, so the alignment marks most of the teacher's tokens as key
     (``bench/edit_pairs.py`` measures it) and stage 2 becomes reweighted SFT.

2. **Key tokens** (``key_token_ops`` / ``weights_from_ops`` / ``key_token_weights``): a
   token-level Levenshtein alignment of the two responses *in the student's tokenizer*, after
   stripping their common prefix. The edit operations are stored (``DualPair.meta["key_ops"]``),
   not the weights, so α and β can change without re-aligning.

3. **Stage 1** SFT on D+ ∪ D−+ (``stage1_examples`` → ``training.train_sft``).

4. **Stage 2** key-reasoning-step learning from the stage-1 model (``train_edit_stage2``):
   α-weighted NLL of the chosen CoT's key tokens minus β-weighted NLL of the rejected CoT's key
   tokens, each normalised by its response length, with a guard on the unlikelihood term; both
   sequences of a pair go through one forward pass (``EditTrainer``, ``edit_loss``), the LM head and the
   cross-entropy on their labelled tokens only, in bounded memory (``lm_loss``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .chat import encode_for_training
from .config import DataConfig, EditConfig, StudentConfig, TeacherConfig, TrainingConfig, ParallelConfig
from .edit_pairs import build_dual_pairs, stage1_examples
from .layouts import EditDir, KeyStepDir
from .records import DualPair, Problem, SFTExample, StudentAttempt, TeacherTrace
from .rundir import RunDir, SavedModel, read_or_make
from .stage_specs import fingerprint
from .training import (
    OrionSFTTrainer,
    TrainerMethod,
    TrainResult,
    link_or_copy_tree,
    pad_rows,
    token_nll,
    train_method,
    train_sft,
)

PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------------
# Key tokens: Levenshtein alignment on token ids
# --------------------------------------------------------------------------------------------


@dataclass
class KeyOps:
    """The edit operations that turn the chosen (correct) token sequence into the rejected one.

    ``ops`` holds the non-equal spans as ``[tag, chosen_start, chosen_end, rejected_start,
    rejected_end]`` in coordinates of the *full* sequences (the common prefix already added
    back), with ``tag`` one of ``"replace"``, ``"delete"`` (chosen tokens absent from the
    rejected sequence) and ``"insert"`` (rejected tokens absent from the chosen sequence).
    JSON-serialisable: this, not the weights, is what gets stored.
    """

    prefix_len: int
    len_chosen: int
    len_rejected: int
    ops: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "prefix_len": self.prefix_len,
            "len_chosen": self.len_chosen,
            "len_rejected": self.len_rejected,
            "ops": [list(op) for op in self.ops],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "KeyOps":
        return cls(
            int(d["prefix_len"]),
            int(d["len_chosen"]),
            int(d["len_rejected"]),
            [[str(t), int(a), int(b), int(c), int(e)] for t, a, b, c, e in d["ops"]],
        )

    @property
    def n_key_chosen(self) -> int:
        return sum(e - s for tag, s, e, _, _ in self.ops if tag in ("replace", "delete"))

    @property
    def n_key_rejected(self) -> int:
        return sum(e - s for tag, _, _, s, e in self.ops if tag in ("replace", "insert"))


def _as_int_list(ids) -> list[int]:
    if hasattr(ids, "tolist"):  # numpy array / torch tensor
        ids = ids.tolist()
    return [int(i) for i in ids]


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def key_token_ops(chosen_ids, rejected_ids) -> KeyOps:
    """Align two token sequences and return their edit operations (see ``KeyOps``).

    The common prefix is stripped first, so everything before the first divergence is never
    marked. The rest is a minimal Levenshtein alignment (unit costs for insert, delete and
    replace) computed by rapidfuzz in C; where several minimal alignments exist, rapidfuzz's
    deterministic choice is used. Two 4,000-token sequences take a few milliseconds.
    """
    from rapidfuzz.distance import Levenshtein

    chosen, rejected = _as_int_list(chosen_ids), _as_int_list(rejected_ids)
    p = common_prefix_len(chosen, rejected)
    ops = [
        [op.tag, op.src_start + p, op.src_end + p, op.dest_start + p, op.dest_end + p]
        for op in Levenshtein.opcodes(chosen[p:], rejected[p:])
        if op.tag != "equal"
    ]
    return KeyOps(prefix_len=p, len_chosen=len(chosen), len_rejected=len(rejected), ops=ops)


def weights_from_ops(
    ops: Union[KeyOps, dict],
    len_chosen: Optional[int] = None,
    len_rejected: Optional[int] = None,
    alpha: float = 1.0,
    beta: float = 0.025,
) -> tuple[list[float], list[float]]:
    """Per-token weights of both sequences from stored edit operations.

    Chosen tokens that are replaced or deleted (relative to the rejected sequence) get α;
    rejected tokens that are replaced or inserted (i.e. replaced or deleted relative to the
    chosen sequence) get β; every other token, the common prefix included, gets 0.
    Lengths default to the ones stored in ``ops``.
    """
    if isinstance(ops, dict):
        ops = KeyOps.from_dict(ops)
    len_chosen = ops.len_chosen if len_chosen is None else len_chosen
    len_rejected = ops.len_rejected if len_rejected is None else len_rejected
    w_chosen, w_rejected = [0.0] * len_chosen, [0.0] * len_rejected
    for tag, c0, c1, r0, r1 in ops.ops:
        if tag in ("replace", "delete"):
            w_chosen[c0:c1] = [float(alpha)] * (c1 - c0)
        if tag in ("replace", "insert"):
            w_rejected[r0:r1] = [float(beta)] * (r1 - r0)
    return w_chosen[:len_chosen], w_rejected[:len_rejected]


def key_token_weights(
    chosen_ids, rejected_ids, alpha: float = 1.0, beta: float = 0.025
) -> tuple[list[float], list[float]]:
    """EDIT's key-token weights of a (correct, wrong) pair of token sequences; see ``key_token_ops``."""
    return weights_from_ops(key_token_ops(chosen_ids, rejected_ids), alpha=alpha, beta=beta)


# --------------------------------------------------------------------------------------------
# Tokenising pairs and storing their key operations
# --------------------------------------------------------------------------------------------


def _encode(tokenizer, question: str, response: str, template: str, system: Optional[str]) -> dict:
    return encode_for_training(tokenizer, question, response, template, max_seq_len=None, system=system)


def encode_pair(
    tokenizer, pair: DualPair, prompt_template: str = "{question}", system: Optional[str] = None
) -> dict:
    """Token ids of both sides with the key operations of their *responses*.

    Operations stored in ``pair.meta["key_ops"]`` are reused when their lengths fit these responses."""
    chosen = _encode(tokenizer, pair.question, pair.chosen, prompt_template, system)
    rejected = _encode(tokenizer, pair.question, pair.rejected, prompt_template, system)
    resp_c = chosen["input_ids"][chosen["prompt_len"] :]
    resp_r = rejected["input_ids"][rejected["prompt_len"] :]
    stored = pair.meta.get("key_ops")
    ops = KeyOps.from_dict(stored) if stored else None
    if ops is None or (ops.len_chosen, ops.len_rejected) != (len(resp_c), len(resp_r)):
        ops = key_token_ops(resp_c, resp_r)  # missing, or aligned with another tokenizer/template
    return {"chosen": chosen, "rejected": rejected, "key_ops": ops.to_dict()}


def measure_key_shares(tokenizer, pairs: Sequence[DualPair], prompt_template: str = "{question}",
                       system: Optional[str] = None) -> list[DualPair]:
    """The pairs with their key operations in this tokenizer (``meta["key_ops"]``, the alignment stage 2
    uses: ``encode_pair``) and the share of each side's response tokens marked key: ``meta["key_share"]``
    (the correct CoT's, weighted α in stage 2) and ``meta["key_share_rejected"]`` (the wrong CoT's)."""
    out = []
    for p in pairs:
        ops = KeyOps.from_dict(encode_pair(tokenizer, p, prompt_template, system)["key_ops"])
        out.append(replace(p, meta={**p.meta, "key_ops": ops.to_dict(),
                                    "key_share": round(ops.n_key_chosen / max(1, ops.len_chosen), 6),
                                    "key_share_rejected": round(ops.n_key_rejected / max(1, ops.len_rejected), 6)}))
    return out


# --------------------------------------------------------------------------------------------
# Stage 2: the loss, the collator and the Trainer
# --------------------------------------------------------------------------------------------


def edit_loss(
    logits, labels, weights_chosen, weights_rejected, nll_guard: Optional[float] = 5.0
) -> tuple[Any, dict]:
    """``edit_loss_from_nll`` on the per-token NLL of ``logits`` (``token_nll``): the loss from logits
    already made. ``EditTrainer`` computes the NLL in bounded memory instead (``labelled_nll``)."""
    return edit_loss_from_nll(token_nll(logits, labels), labels, weights_chosen, weights_rejected, nll_guard)


def edit_loss_from_nll(
    nll, labels, weights_chosen, weights_rejected, nll_guard: Optional[float] = 5.0
) -> tuple[Any, dict]:
    """EDIT's stage-2 loss for B pairs in one batch of 2B sequences, from their per-token NLL
    (``nll``: [2B, T-1], float32, the NLL of ``labels[:, 1:]``, 0 where the label is -100).

    Rows ``0..B-1`` of ``nll``/``labels`` are the chosen CoTs, rows ``B..2B-1`` the rejected
    ones (same pair order). ``weights_*`` are ``[B, T]`` per-token weights aligned with
    ``labels`` (already α/β-scaled: ``weights_from_ops``), 0 on the prompt and on padding.

        loss = mean_pairs[ Σ_t w⁺_t·NLL⁺_t / |resp⁺|  −  Σ_t w⁻_t·NLL⁻_t·g_t / |resp⁻| ]

    with |resp| the number of label tokens of the sequence and the guard g_t = [NLL⁻_t ≤
    nll_guard] (detached): a rejected token that is already unlikely gets no further push, so the
    unlikelihood term cannot run away. ``nll_guard=None`` disables the guard.
    Returns ``(loss, stats)``; ``stats`` holds detached floats for logging.
    """
    import torch

    n_pairs = weights_chosen.shape[0]
    resp_len = (labels[:, 1:] != -100).sum(dim=1).clamp(min=1).to(nll.dtype)
    w_c = weights_chosen[:, 1:].to(nll.dtype)
    w_r = weights_rejected[:, 1:].to(nll.dtype)
    nll_c, nll_r = nll[:n_pairs], nll[n_pairs:]
    guard = torch.ones_like(nll_r) if nll_guard is None else (nll_r.detach() <= nll_guard).to(nll.dtype)
    chosen_term = (w_c * nll_c).sum(dim=1) / resp_len[:n_pairs]
    rejected_term = (w_r * nll_r * guard).sum(dim=1) / resp_len[n_pairs:]
    loss = (chosen_term - rejected_term).mean()
    with torch.no_grad():
        key_c, key_r = (w_c > 0), (w_r > 0)
        stats = {
            "chosen_nll_sum": nll_c.sum().item(),  # all supervised chosen tokens (the trainer's counters)
            "chosen_term": chosen_term.mean().item(),
            "rejected_term": rejected_term.mean().item(),
            "chosen_key_nll": (nll_c[key_c].mean().item() if key_c.any() else float("nan")),
            "rejected_key_nll": (nll_r[key_r].mean().item() if key_r.any() else float("nan")),
            "guard_kept": (guard[key_r].mean().item() if key_r.any() else float("nan")),
        }
    return loss, stats


class EditCollator:
    """B encoded pairs → one padded batch of 2B sequences (chosen first, then rejected).

    Key-token weights are made here from the stored operations, so α and β are a collator
    setting. Sequences are cut at ``max_seq_len`` (weights and labels with them).
    """

    def __init__(self, pad_token_id: int, alpha: float, beta: float, max_seq_len: Optional[int] = None):
        self.pad_token_id, self.alpha, self.beta, self.max_seq_len = pad_token_id, alpha, beta, max_seq_len

    def _side(self, enc: dict, resp_weights: list[float]) -> tuple[list, list, list]:
        ids, labels = list(enc["input_ids"]), list(enc["labels"])
        weights = [0.0] * enc["prompt_len"] + list(resp_weights)
        if self.max_seq_len:
            ids, labels, weights = (
                ids[: self.max_seq_len],
                labels[: self.max_seq_len],
                weights[: self.max_seq_len],
            )
        return ids, labels, weights

    def __call__(self, features: list[dict]) -> dict:
        import torch

        rows = {"chosen": [], "rejected": []}
        for f in features:
            if "chosen" not in f:  # a training row (``pair_rows``): the chosen side is input_ids/labels
                f = {
                    "chosen": {"input_ids": f["input_ids"], "labels": f["labels"], "prompt_len": f["prompt_len"]},
                    "rejected": {"input_ids": f["rejected_input_ids"], "labels": f["rejected_labels"],
                                 "prompt_len": f["rejected_prompt_len"]},
                    "key_ops": f["key_ops"],
                }
            ops = json.loads(f["key_ops"]) if isinstance(f["key_ops"], str) else f["key_ops"]
            w_c, w_r = weights_from_ops(ops, alpha=self.alpha, beta=self.beta)
            rows["chosen"].append(self._side(f["chosen"], w_c))
            rows["rejected"].append(self._side(f["rejected"], w_r))
        seqs = rows["chosen"] + rows["rejected"]
        length = max(len(ids) for ids, _, _ in seqs)
        ids = pad_rows([s[0] for s in seqs], self.pad_token_id, length)
        mask = pad_rows([[1] * len(s[0]) for s in seqs], 0, length)
        labels = pad_rows([s[1] for s in seqs], -100, length)
        weights = pad_rows([s[2] for s in seqs], 0.0, length)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "key_weights": torch.tensor(weights, dtype=torch.float32),
        }


class EditTrainer(OrionSFTTrainer):
    """The project's SFT trainer with EDIT's stage-2 loss (``edit_loss``) over ``EditCollator``
    batches; everything else (sampler, precision, checkpoints, counters) is the SFT trainer's.

    The loss is a per-batch mean, so the Trainer divides it by the accumulation steps
    (``loss_is_scaled_for_ga = False``)."""

    loss_is_scaled_for_ga = False

    def __init__(self, *args, nll_guard: Optional[float] = 5.0, **kwargs):
        self.nll_guard = nll_guard
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels, key_weights = inputs["labels"], inputs["key_weights"]
        nll, _ = self.labelled_nll(model, inputs)  # both rows of every pair, labelled positions only
        n_pairs = labels.shape[0] // 2
        loss, stats = edit_loss_from_nll(
            nll, labels, key_weights[:n_pairs], key_weights[n_pairs:], nll_guard=self.nll_guard
        )
        nll_sum = stats.pop("chosen_nll_sum")
        if model.training:
            self.record_stats(stats)
            self.count_supervised(nll_sum, int((labels[:n_pairs, 1:] != -100).sum()))
        return (loss, {"token_nll": nll}) if return_outputs else loss


def pair_rows(tokenizer, pairs: Sequence[DualPair], cfg: TrainingConfig, prompt_template: str = "{question}",
              system: Optional[str] = None) -> tuple[list[dict], dict, list[DualPair]]:
    """Training rows of the pairs for the SFT stack, under its ``overlong`` rule: a pair with a side
    longer than ``max_seq_len`` is left out (``drop``) or cut by the collator (``truncate``).

    Returns ``(rows, stats, annotated_pairs)``; a row holds the chosen side as ``input_ids``/``labels``,
    the rejected side, the key operations (JSON) and ``length`` (the longer side, for length grouping)."""
    rows, annotated = [], []
    stats = {"dropped": 0, "truncated": 0, "overlong_dropped": 0}
    for p in pairs:
        it = encode_pair(tokenizer, p, prompt_template, system)
        annotated.append(replace(p, meta={**p.meta, "key_ops": it["key_ops"]}))
        c, r = it["chosen"], it["rejected"]
        length = max(len(c["input_ids"]), len(r["input_ids"]))
        if cfg.max_seq_len and length > cfg.max_seq_len:
            if cfg.overlong == "drop":
                stats["overlong_dropped"] += 1
                continue
            stats["truncated"] += 1
        if all(t == -100 for t in c["labels"][1 : cfg.max_seq_len or None]):
            stats["dropped"] += 1
            continue
        rows.append({
            "input_ids": list(c["input_ids"]), "labels": list(c["labels"]), "prompt_len": int(c["prompt_len"]),
            "rejected_input_ids": list(r["input_ids"]), "rejected_labels": list(r["labels"]),
            "rejected_prompt_len": int(r["prompt_len"]), "key_ops": json.dumps(it["key_ops"]),
            "length": min(length, cfg.max_seq_len or length),
        })
    return rows, stats, annotated


def _edit_batching(mode: str) -> tuple[str, str]:
    if mode == "padding_free":  # a pair's two sides must stay separate rows of one padded batch
        return "length_grouped", "EDIT pairs are padded batches"
    return mode, "as sft"


def _edit_collator(tokenizer, cfg: EditConfig) -> "EditCollator":
    return EditCollator(tokenizer.pad_token_id, cfg.alpha, cfg.beta, cfg.max_seq_len)


def edit_method(cfg: EditConfig) -> TrainerMethod:
    """EDIT stage 2 as a method of the SFT stack (``training.train_method``); module-level callables only, so
    that it pickles for the ranks of a data-parallel run."""
    return TrainerMethod(
        name="edit stage 2",
        trainer_class=EditTrainer,
        collator=partial(_edit_collator, cfg=cfg),
        trainer_kwargs={"nll_guard": cfg.nll_guard},
        batching=_edit_batching,
        log_keys=("chosen_term", "rejected_term", "chosen_key_nll", "rejected_key_nll", "guard_kept"),
    )


def train_edit_stage2(
    stage1_model_dir: PathLike,
    pairs: Sequence[DualPair],
    output_dir: PathLike,
    cfg: EditConfig,
    prompt_template: str = "{question}",
    system: Optional[str] = None,
    resume: bool = True,
    parallel: Optional[ParallelConfig] = None,
) -> TrainResult:
    """Stage 2: key-reasoning-step learning from the stage-1 model, on the one SFT training stack
    (``training.train_method``: same backend, precision, resume and files as ``sft``); full model
    saved to ``output_dir/model``, with ``loss_history.json`` and ``train_result.json`` beside it.

    Also writes ``output_dir/pairs_with_ops.jsonl`` (the pairs with their stored key operations in
    this tokenizer).
    """
    from .jsonl import write_jsonl

    if not pairs:
        raise ValueError("EDIT stage 2 needs at least one dual pair")
    if not isinstance(cfg, EditConfig):
        raise TypeError(f"train_edit_stage2: cfg must be an EditConfig, got {type(cfg).__name__}")
    output_dir = Path(output_dir)

    def rows_for(tokenizer):
        rows, stats, annotated = pair_rows(tokenizer, pairs, cfg, prompt_template, system)
        write_jsonl(KeyStepDir(output_dir).pairs_with_ops, annotated)
        return rows, stats

    return train_method(stage1_model_dir, output_dir, cfg, rows_for, len(pairs), edit_method(cfg),
                        prompt_template=prompt_template, system=system, resume=resume, parallel=parallel)


# --------------------------------------------------------------------------------------------
# The whole method
# --------------------------------------------------------------------------------------------


def run_edit(
    student_dir: PathLike,
    problems: Sequence[Problem],
    traces: Sequence[TeacherTrace],
    out_dir: PathLike,
    cfg: EditConfig,
    sft_cfg=None,
    *,
    teacher=None,
    attempts: Optional[Sequence[StudentAttempt]] = None,
    prompt_template: str = "{question}",
    system: Optional[str] = None,
    stage1_model_dir: Optional[PathLike] = None,
    positives: Optional[Sequence[SFTExample]] = None,
    parallel: Optional[ParallelConfig] = None,
) -> dict:
    """Dual pairs → stage 1 (``training.train_sft`` on D+ ∪ D−+) → stage 2; final model at ``out_dir/model``.

    The pairs are measured in the student's tokenizer (``measure_key_shares``) and those whose correct CoT
    is more than ``cfg.max_key_share`` key are dropped (kept in ``pairs.jsonl``, marked); their numbers,
    with the teacher's replies rejected, are in ``out_dir/pairs_summary.json`` and the stage's line.
    ``positives``: stage 1's D+ (``stage1_examples``; the ``sft`` baseline's set in a run).

    Resumable, each step through ``rundir.read_or_make``: the pairs are read back from
    ``out_dir/pairs.jsonl``, stage 1 is skipped when ``out_dir/stage1/model`` is saved (or
    ``stage1_model_dir`` is given, e.g. the ``sft`` baseline's model when the pairs come from error
    exposure), stage 2 when ``out_dir/model`` is.
    """
    from .edit_pairs import key_share_summary, mark_key_share_drops, summary_line
    from .jsonl import write_json, write_jsonl

    layout = EditDir(out_dir)
    replies: dict = {}
    made: list[bool] = []

    def make_pairs() -> list[DualPair]:
        from transformers import AutoTokenizer

        built = build_dual_pairs(cfg.pair_source, problems, traces, teacher=teacher, attempts=attempts,
                                 max_pairs_per_problem=cfg.max_pairs_per_problem, counts=replies)
        tokenizer = AutoTokenizer.from_pretrained(str(student_dir))
        made.append(True)
        return mark_key_share_drops(measure_key_shares(tokenizer, built, prompt_template, system), cfg.max_key_share)

    all_pairs = read_or_make(layout.pairs, DualPair, make_pairs)
    if made or not layout.pair_summary.exists():  # made now; a resumed stage reads its summary back
        write_json(layout.pair_summary, key_share_summary(all_pairs, cfg.max_key_share, replies or None))
    pair_summary = json.loads(layout.pair_summary.read_text(encoding="utf-8"))
    print(summary_line(pair_summary))
    pairs = [p for p in all_pairs if not p.meta.get("dropped")]
    if all_pairs and not pairs:
        raise ValueError(f"every one of the {len(all_pairs)} dual pairs has more than edit.max_key_share = "
                         f"{cfg.max_key_share} of its correct CoT marked key ({layout.pair_summary}): they are no "
                         "near-copies, so stage 2 would be SFT reweighted; use pair_source: teacher, or raise the knob")
    summary: dict[str, Any] = {
        "n_pairs": len(pairs),
        "pair_source": cfg.pair_source,
        "pair_kinds": dict(_count(p.meta.get("kind", "") for p in pairs)),
        "pairs": pair_summary,
    }

    def train_stage1() -> None:
        examples = stage1_examples(problems, traces, pairs, positives)
        write_jsonl(layout.stage1_examples, examples)
        train_sft(
            student_dir,
            examples,
            layout.stage1.root,
            sft_cfg or TrainingConfig(),
            prompt_template=prompt_template,
            system=system,
            parallel=parallel,
        )
        summary["n_stage1_examples"] = len(examples)

    def train_stage2() -> None:
        stage2 = train_edit_stage2(stage1_model_dir, pairs, layout.stage2.root, cfg, prompt_template, system,
                                   parallel=parallel)
        link_or_copy_tree(Path(stage2.model_dir), layout.model)

    if stage1_model_dir is None:
        stage1_model_dir = read_or_make(layout.stage1.model, SavedModel, train_stage1)
    summary["stage1_model_dir"] = str(stage1_model_dir)
    summary["model_dir"] = str(read_or_make(layout.model, SavedModel, train_stage2))
    return summary


def show_key_tokens(student_dir: PathLike, pair: DualPair, alpha: float = 1.0, beta: float = 0.025) -> str:
    """Print both CoTs of a pair with their key tokens [bracketed]; returns the text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(student_dir))
    chosen = tokenizer(pair.chosen, add_special_tokens=False)["input_ids"]
    rejected = tokenizer(pair.rejected, add_special_tokens=False)["input_ids"]
    w_chosen, w_rejected = key_token_weights(chosen, rejected, alpha, beta)

    def render(ids, weights):
        pieces = [tokenizer.decode([t]) for t in ids]
        return "".join(f"[{p}]" if w > 0 else p for p, w in zip(pieces, weights))

    text = (f"correct CoT ({sum(w > 0 for w in w_chosen)} key tokens, weight {alpha}):\n{render(chosen, w_chosen)}\n\n"
            f"wrong CoT ({sum(w > 0 for w in w_rejected)} key tokens, weight {beta}):\n{render(rejected, w_rejected)}")
    print(text)
    return text


def _count(values) -> dict:
    counts: dict = defaultdict(int)
    for v in values:
        counts[v] += 1
    return counts


def look_inside(run, index: int = 0, alpha: float = 1.0, beta: float = 0.025,
                show: bool = True) -> Optional[dict]:
    """One EDIT dual pair (correct and wrong CoT of one question) and the tokens ``key_token_weights``
    marks as key reasoning steps (weight ``alpha`` in the correct CoT, ``beta`` in the wrong one), in
    the base student's tokens. None, with a note, when this run did not run EDIT."""
    from .jsonl import read_jsonl

    path = run.edit().pairs
    pairs = read_jsonl(path, DualPair) if path.exists() else []
    if not pairs:
        print("EDIT was not run here (is 'edit' in evaluation.methods?): no dual pairs to look at.")
        return None
    pair = pairs[min(index, len(pairs) - 1)]
    text = show_key_tokens(run.student_model(), pair, alpha, beta) if show else ""
    return {"n_pairs": len(pairs), "problem_id": pair.problem_id, "source": pair.source,
            "question": pair.question, "chosen": pair.chosen, "rejected": pair.rejected, "marked": text}


__all__ = [
    "EditConfig",
    "KeyOps",
    "key_token_ops",
    "weights_from_ops",
    "key_token_weights",
    "show_key_tokens",
    "common_prefix_len",
    "build_dual_pairs",
    "stage1_examples",
    "encode_pair",
    "measure_key_shares",
    "edit_loss",
    "edit_loss_from_nll",
    "EditCollator",
    "EditTrainer",
    "pair_rows",
    "edit_method",
    "train_edit_stage2",
    "run_edit",
    "look_inside",
]


# --------------------------------------------------------------------------------------------
# Stage 05: EDIT on the run's data
# --------------------------------------------------------------------------------------------


def run_edit_stage(run: RunDir, cfg: EditConfig, training_cfg: TrainingConfig,
                   teacher_cfg: Optional[TeacherConfig] = None, data: Optional[DataConfig] = None,
                   student: Optional[StudentConfig] = None, force: bool = False, parallel: Optional[ParallelConfig] = None) -> dict:
    """Stage 05, EDIT on the run's data: dual CoT pairs → stage-1 SFT on correct + rectified CoTs →
    key-reasoning-step learning. Starts from the same base student, training questions and teacher CoTs as
    the stage-04 methods; the model lands in ``models/edit/model``."""
    from .budget import prompt_budget
    from .collection import make_teacher, question_set_inputs, question_set_problems, teacher_usage
    from .edit_pairs import resolve_pair_source
    from .jsonl import read_jsonl
    from .training_sets import join_phase_losses, write_method_training_set

    student, teacher_cfg = student or StudentConfig(), teacher_cfg or TeacherConfig()
    folder = run.trained("edit")
    cfg_source, source = cfg.pair_source, resolve_pair_source(cfg.pair_source, teacher_cfg.kind)
    cfg = replace(cfg, pair_source=source)
    params, models = fingerprint(run, "edit", cfg, training_cfg, teacher_cfg, data, student)
    inputs = [run.train_problems, run.teacher_traces] + ([run.error_attempts] if source == "exposure" else [])
    inputs += question_set_inputs(run) + [run.teacher_sft_set] + models  # the sft set: stage 1's D+

    def work() -> dict:
        print(f"[edit] dual pairs: {source} (edit.pair_source={cfg_source}, teacher.kind={teacher_cfg.kind})")
        problems = question_set_problems(run, read_jsonl(inputs[0], Problem))  # the question set (stage 01)
        attempts = read_jsonl(inputs[2], StudentAttempt) if source == "exposure" else None
        teacher = make_teacher(teacher_cfg, data, cache_dir=str(run.teacher_cache))
        traces = read_jsonl(inputs[1], TeacherTrace)
        result = run_edit(run.student_model(), problems, traces, folder.root, cfg, training_cfg,
                          teacher=teacher, attempts=attempts, prompt_template=student.prompt_template,
                          system=student.system_prompt or None,
                          positives=read_jsonl(run.teacher_sft_set, SFTExample), parallel=parallel)
        join_phase_losses(folder)
        write_method_training_set(run, "edit")
        facts = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
        return {"edit": facts, "pairs": result["pairs"], **prompt_budget(teacher), **teacher_usage(teacher)}

    # run_edit resumes from what it finds in its folder: kept only for a re-run with the same settings
    return run.run_stage("edit", params, inputs, [folder.model], work, force=force, scratch=[folder.root],
                         stage_hint="02_error_exposure")
