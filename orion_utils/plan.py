"""`orion plan --profile P --gpu CARD`: each stage's tokens, time, peak GPU memory, disk and API cost,
before the GPU hour.

    orion plan --profile colab --gpu T4
    orion plan --profile paper --gpu H100 --doctor doctor.json   # tokens/s measured by `orion doctor --json`

Per stage (00 to 08, and each method's training) it counts the tokens to generate (expected, and the
most ``max_new_tokens`` allows) and to train, from the profile; turns them into hours with a throughput
model (``plan_model``: a roofline from the card's data sheet, or ``orion doctor``'s measured tokens/s);
gives the peak GPU memory from a memory model (weights, KV cache, activations, optimizer states, logits);
the disk the stage writes and what the run keeps; and the API requests and their price. It warns where a
stage does not fit the card's memory, the total does not fit one session (Colab: 12 h) or the disk.

Lengths the profile does not fix are assumptions, stated in ``TYPICAL`` (a teacher CoT's median length per
trace source, a base student's answer, the share of runaway generations that loop to the cap); every
generation is counted twice, at its expected length and at ``max_new_tokens``.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import plan_model as pm
from .config import Profile, load_profile, split_global_batch
from .methods import methods_to_train

# --- the assumptions --------------------------------------------------------------------------------
# Median length, in tokens, of a teacher CoT (thinking + solution) per trace source, and where it comes from.
COT_MEDIAN: dict[str, tuple[int, str]] = {
    "limo": (3723, "measured here: the 291 LIMO CoTs of R1-Distill-Qwen-32B, SmolLM2 tokens (docs/lab_record.md)"),
    "s1k-1.1": (7000, "assumed: DeepSeek-R1 on s1K's questions, chosen for long traces (s1.1 trains at 32k); "
                      "not measurable offline, about twice the LIMO median measured here"),
    "openr1-math-220k": (4000, "assumed: R1 on NuminaMath problems, about the LIMO median measured here"),
    "r1-samples": (3000, "assumed: the five DeepSeek-R1 samples of ../shared/data"),
    "toy": (157, "measured here: the toy teacher's CoTs in SmolLM2 tokens (docs/profiles.md, SmolLM2 on the toy domain)"),
}
DEFAULT_COT_MEDIAN = (2000, "assumed: an unknown trace source")


@dataclass(frozen=True)
class Typical:
    """What the plan assumes where the profile does not say (each overridable from the command line)."""

    prompt_tokens: int = 150  # a question in the prompt template, with the chat template's turns
    base_answer: int = 600  # median answer of an instruct student not yet trained on long CoTs
    base_runaway: float = 0.02  # share of its generations that loop to max_new_tokens
    trained_runaway: float = 0.10  # the same for a student distilled on long CoTs (small students loop)
    reflection_extra: int = 300  # a rewrite = the teacher's CoT + one reflection paragraph
    teacher_correct: float = 0.8  # share of teacher CoTs that verify
    error_share: float = 0.9  # share of questions on which the base student makes an error (k samples)
    judge_output: int = 2000  # tokens of a reasoning teacher's reply to a judging prompt
    api_tokens_per_s: float = 25.0  # one API stream's decode speed (DeepSeek's reasoner: 20-30)
    bytes_per_token: float = 4.0  # JSONL text: about 4 UTF-8 characters per token


TYPICAL = Typical()
BENCHMARK_SIZES = {"gsm_hard": 1319, "math500": 500, "aime24": 30, "amc23": 40, "gsm8k": 1319}  # data.BENCHMARKS' sets
# How long an answer to each benchmark runs against the training questions' (s1K, LIMO: competition level):
# assumed from R1-style students' published lengths, short on grade-school problems, long on AIME.
BENCHMARK_EFFORT = {"gsm_hard": 0.3, "gsm8k": 0.3, "math500": 0.6, "amc23": 1.0, "aime24": 1.5}
PLANNED_CARDS = {"colab": "T4", "colab_full": "T4", "paper": "H100"}  # the README's card per real profile
DEFAULT_CARD = "T4"


@dataclass
class Row:
    """One stage (or one method's training) of the plan, per seed."""

    stage: str
    what: str
    generate: float = 0.0  # tokens, expected
    generate_max: float = 0.0  # tokens at max_new_tokens
    train: float = 0.0  # tokens through the trainer
    seconds: float = 0.0  # GPU (and local) time
    api_seconds: float = 0.0
    peak_gib: Optional[float] = None
    peak_what: str = ""
    written_gb: float = 0.0
    kept_gb: float = 0.0
    kept_what: str = ""
    requests: int = 0
    cost: float = 0.0
    # paid once per run (the teacher cache serves every seed the same replies), not per seed
    requests_once: int = 0
    cost_once: float = 0.0
    api_seconds_once: float = 0.0
    disk_once: bool = False  # the row's disk is written once per run (the hub cache)
    notes: list = field(default_factory=list)


@dataclass
class Plan:
    profile: str
    card: pm.Card
    arch: Optional[pm.Arch]
    arch_source: str
    backend: str
    seeds: int
    rows: list
    warnings: list
    header: list
    disk_gb: float
    session_h: float

    def total(self, key: str, seeds: Optional[int] = None) -> float:
        """A column summed over the stages and the seeds (an API figure paid once counts once)."""
        n = self.seeds if seeds is None else seeds
        if key in ("requests", "cost", "api_seconds"):
            return sum(n * getattr(r, key) + getattr(r, f"{key}_once") for r in self.rows)
        if key in ("written_gb", "kept_gb"):
            return sum(getattr(r, key) * (1 if r.disk_once else n) for r in self.rows)
        return n * sum(getattr(r, key) for r in self.rows)

    @property
    def hours(self) -> float:
        """The whole run, every seed: GPU time plus API time (stages run one after another)."""
        return (self.total("seconds") + self.total("api_seconds")) / 3600

    @property
    def peak_gib(self) -> Optional[float]:
        peaks = [r.peak_gib for r in self.rows if r.peak_gib is not None]
        return max(peaks) if peaks else None


# --- counting -----------------------------------------------------------------------------------------
def benchmark_items(profile: Profile) -> dict[str, int]:
    """Problems evaluated per benchmark: the local copy's rows where ``data.benchmark_dir`` has it, else the
    published size, cut to ``data.benchmark_limit``."""
    from .data import BENCHMARKS

    data = profile.data
    sizes = {}
    for name in data.benchmarks:
        if name == "toy_test":
            n = data.toy_test_size
        elif name == "toy_hard":
            n = data.toy_hard_size
        else:
            n = BENCHMARK_SIZES.get(name, 0)
            spec = BENCHMARKS.get(name)
            local = Path(data.benchmark_dir) / spec.local_file if spec and data.benchmark_dir else None
            if local is not None and local.is_file():
                n = sum(1 for line in local.open(encoding="utf-8") if line.strip())
        sizes[name] = min(n, data.benchmark_limit) if data.benchmark_limit else n
    return sizes


def cot_lengths(profile: Profile, median: Optional[int] = None) -> tuple[pm.Lengths, str]:
    if median:
        return pm.Lengths(median), f"median {median} tokens (--cot-median)"
    m, source = COT_MEDIAN.get(profile.data.train_source, DEFAULT_COT_MEDIAN)
    return pm.Lengths(m), f"median {m:,} tokens ({source})"


class _Planner:
    def __init__(self, profile: Profile, card: pm.Card, measured: Optional[pm.Measured],
                 typical: Typical, cot_median: Optional[int]):
        self.p, self.card, self.measured, self.t = profile, card, measured, typical
        toy = profile.section_dict("toy_student") if "toy_student" in profile.sections else None
        self.arch, self.arch_source = pm.find_arch(profile.student.model, toy)
        self.cot, self.cot_source = cot_lengths(profile, cot_median)
        self.dtype_bytes = 4 if profile.generation.dtype in ("float32", "fp32") else 2
        self.par = profile.parallel  # N GPUs: each row's peak is one GPU's, its hours the whole node's
        self.ranks = profile.parallel.gpus
        backend = profile.generation.backend
        self.backend = "vllm" if backend in ("auto", "vllm") else "transformers"
        self.warnings: list[str] = []
        tr = profile.training
        # the questions every method trains on: a verified teacher CoT that fits training.max_seq_len
        self.fit = self.cot.share_within(tr.max_seq_len - typical.prompt_tokens) if tr.overlong == "drop" else 1.0
        n_cots = profile.data.n_train * profile.teacher.n_per_question
        self.n_kept = round(profile.data.n_train * min(1.0, typical.teacher_correct * profile.teacher.n_per_question)
                            * self.fit)
        self.n_cots = n_cots
        kept_len = self.cot.mean_within(tr.max_seq_len - typical.prompt_tokens) if tr.overlong == "drop" else \
            self.cot.expected_capped(tr.max_seq_len - typical.prompt_tokens)
        self.train_len = typical.prompt_tokens + kept_len  # mean training sequence
        self.base_len = pm.Lengths(typical.base_answer if profile.student.model != "toy" else self.cot.median)

    # -- pieces
    def gen_time(self, n_seq: float, prompt: float, expected: float, max_new: int, prefill: float,
                 group: int = 1) -> tuple:
        """(seconds, concurrency, peak bytes dict) of ``n_seq`` generations of ``expected`` tokens, ``group`` of
        them per prompt (vLLM's prefix cache holds a shared prompt's KV once)."""
        a, g = self.arch, self.p.generation
        if a is None:
            return 0.0, 0, None
        ranks, mode = self.ranks, self.par.generation
        if ranks > 1 and mode == "data":  # one engine per GPU, each with 1/N of the prompts
            seconds, batch, mem = self._gen_time_one(a, g, n_seq / ranks, prompt, expected, max_new, prefill / ranks,
                                                     group, tensor=1)
            return seconds / pm.PARALLEL_EFFICIENCY["data"], batch, mem
        tensor = ranks if ranks > 1 and mode == "tensor" else 1
        seconds, batch, mem = self._gen_time_one(a, g, n_seq, prompt, expected, max_new, prefill, group, tensor)
        return (seconds / (tensor * pm.PARALLEL_EFFICIENCY["tensor"]) if tensor > 1 else seconds), batch, mem

    def _gen_time_one(self, a, g, n_seq: float, prompt: float, expected: float, max_new: int, prefill: float,
                      group: int, tensor: int) -> tuple:
        """``gen_time`` on one engine; ``tensor`` > 1: its weights and KV cache split over that many GPUs (the
        memory is one GPU's; the seconds those of one GPU, which the caller divides)."""
        if self.backend == "vllm":
            util = g.gpu_memory_utilization or 0.9
            mem = pm.vllm_memory(a, self.card, utilization=util, dtype_bytes=self.dtype_bytes,
                                 max_model_len=g.max_model_len or (prompt + max_new), tensor=tensor)
            per_seq = prompt / max(1, group) + expected
            batch = int(min(pm.MAX_NUM_SEQS, max(1, n_seq), max(1, mem["kv_tokens"] // max(1, per_seq))))
            share = 1.0
        else:
            batch = min(g.batch_size, max(1, int(n_seq)))
            mem = pm.transformers_generation_memory(a, dtype_bytes=self.dtype_bytes, batch=batch, seq=prompt + max_new)
            share = pm.TRANSFORMERS_SHARE
        context = prompt + expected / 2
        rate = (self.measured.generate if self.measured and self.measured.generate else
                share * pm.decode_tokens_per_s(a, self.card, dtype_bytes=self.dtype_bytes, batch=batch, context=context))
        seconds = n_seq * expected / rate + pm.prefill_seconds(a, self.card, prefill, prefill / max(1, n_seq) / 2 + 1)
        return seconds, batch, mem

    def generation(self, row: Row, n_seq: float, prompt: float, lengths: pm.Lengths, max_new: int, runaway: float,
                   group: int = 1, note: bool = True) -> int:
        """``n_seq`` generations of ``lengths`` cut at ``max_new``, ``group`` per prompt (read once); returns how
        many run at once."""
        expected = lengths.expected_capped(max_new, runaway)
        row.generate += n_seq * expected
        row.generate_max += n_seq * max_new
        seconds, batch, mem = self.gen_time(n_seq, prompt, expected, max_new, n_seq / max(1, group) * prompt, group)
        row.seconds += seconds
        row.written_gb += n_seq * (expected + prompt) * self.t.bytes_per_token / pm.GB
        row.kept_gb += n_seq * (expected + prompt) * self.t.bytes_per_token / pm.GB
        if mem is not None:
            self._peak(row, mem["total"], self._gen_peak_text(mem, batch, prompt, expected))
            if self.backend == "vllm" and not mem["fits_one"]:
                self.warnings.append(
                    f"{row.stage}: vLLM's KV room ({mem['kv_tokens']:,} tokens) is below generation.max_model_len="
                    f"{self.p.generation.max_model_len}: vLLM will not start; lower max_model_len or raise "
                    f"gpu_memory_utilization")
        if note:
            row.notes.append(f"{n_seq:,.0f} generations x {expected:,.0f} tokens expected (max {max_new:,}), "
                             f"{batch} at once")
        return batch

    def _gen_peak_text(self, mem: dict, batch: int, prompt: float, expected: float) -> str:
        if self.backend == "vllm":
            return (f"vLLM reserves {mem['total'] / pm.GIB:.1f} GiB: weights {mem['weights'] / pm.GIB:.1f}, KV room "
                    f"{mem['kv_room'] / pm.GIB:.1f} GiB = {mem['kv_tokens']:,} tokens ({batch} sequences of "
                    f"{prompt + expected:,.0f})")
        return (f"transformers: weights {mem['weights'] / pm.GIB:.1f} + KV {mem['kv'] / pm.GIB:.1f} GiB "
                f"(batch {batch} at full length)")

    def _peak(self, row: Row, total: float, what: str) -> None:
        gib = total / pm.GIB
        if row.peak_gib is None or gib > row.peak_gib:
            row.peak_gib, row.peak_what = gib, what

    def scoring(self, row: Row, n_seq: float, seq: float) -> None:
        if self.arch is None or n_seq <= 0:
            return
        row.seconds += pm.prefill_seconds(self.arch, self.card, n_seq * seq, seq / 2)
        mem = pm.scoring_memory(self.arch, self.card, dtype_bytes=self.dtype_bytes, seq=int(seq))
        self._peak(row, mem["total"], f"scoring: weights {mem['weights'] / pm.GIB:.1f} + logit chunks "
                                      f"{mem['logits'] / pm.GIB:.1f} GiB (half the free memory at most)")

    def model_gb(self) -> tuple[float, str]:
        """Disk of one trained model as the training stack saves it: the LoRA adapter, or merged under
        ``training.merge_lora`` and for full fine-tuning."""
        a, tr = self.arch, self.p.training
        if a is None:
            return 0.0, "unknown size"
        if tr.use_lora and not tr.merge_lora:
            return a.lora_params(tr.lora_r, tr.lora_target_modules) * 2 / pm.GB, f"LoRA adapter r={tr.lora_r}"
        return a.params * 2 / pm.GB, "merged 16-bit model"

    def training(self, row: Row, cfg, n_examples: float, seq_mean: float, rows_per_example: int, logits: str,
                 hidden_rows: int = 0, label: str = "") -> None:
        """One trainer run: tokens, time, peak memory at ``cfg.max_seq_len``, checkpoints and the model saved."""
        a = self.arch
        seen = cfg.max_steps * cfg.batch_size * cfg.grad_accum if cfg.max_steps > 0 else n_examples * cfg.num_epochs
        tokens = seen * seq_mean * rows_per_example
        row.train += tokens
        steps = math.ceil(seen / (cfg.batch_size * cfg.grad_accum)) if seen else 0
        model_gb, model_what = self.model_gb()
        row.written_gb += model_gb
        row.kept_gb += model_gb
        row.kept_what = model_what
        if a is None:
            return
        rate = self.measured.train_rate(a, seq=seq_mean, grad_ckpt=cfg.gradient_checkpointing) if self.measured else None
        rate = rate or pm.train_tokens_per_s(a, self.card, seq=seq_mean, lora=cfg.use_lora,
                                             grad_ckpt=cfg.gradient_checkpointing)
        ranks, mode = self.ranks, self.par.training
        per_device, _accum = split_global_batch(cfg.batch_size, cfg.grad_accum, ranks)
        row.seconds += tokens / (rate * (ranks * pm.PARALLEL_EFFICIENCY[mode] if ranks > 1 else 1))
        mem = pm.training_memory(a, dtype_bytes=self.dtype_bytes, four_bit=cfg.load_in_4bit and cfg.use_lora,
                                 lora_r=cfg.lora_r if cfg.use_lora else 0, lora_targets=cfg.lora_target_modules,
                                 rows=per_device * rows_per_example, seq=cfg.max_seq_len,
                                 grad_ckpt=cfg.gradient_checkpointing, logits=logits, hidden_rows=hidden_rows)
        trainable = a.lora_params(cfg.lora_r, cfg.lora_target_modules) if cfg.use_lora else a.params
        mem = pm.shard_training_memory(mem, a, ranks=ranks, mode=mode, trainable_params=trainable,
                                       lora=cfg.use_lora, dtype_bytes=self.dtype_bytes)
        parts = ", ".join(f"{k} {v / pm.GIB:.1f}" for k, v in mem.items() if k not in ("total", "context"))
        where = f" per GPU ({mode}, {ranks} GPUs)" if ranks > 1 else ""
        self._peak(row, mem["total"], f"{label}training {per_device * rows_per_example} x {cfg.max_seq_len} "
                                      f"tokens{where}, logits {logits}: {parts} GiB")
        ckpt = (a.lora_params(cfg.lora_r, cfg.lora_target_modules) * (4 + pm.ADAMW_BYTES) if cfg.use_lora
                else a.params * (2 + pm.ADAMW_BYTES)) / pm.GB
        if cfg.save_steps >= 0 and steps:
            row.written_gb += ckpt
            if cfg.keep_checkpoints:
                row.kept_gb += ckpt
        row.notes.append(f"{label}{seen:,.0f} examples seen (x epochs) x {rows_per_example} row(s) x {seq_mean:,.0f} tokens, "
                         f"{steps} optimizer steps, peak {mem['total'] / pm.GIB:.1f} GiB")

    def sft_logits(self) -> str:
        """SFT's loss: Unsloth's fused cross-entropy (``training.backend`` auto on CUDA picks Unsloth, which the
        gpu extra installs) never holds a whole sequence's logits; TRL's loss upcasts them all to float32."""
        return "full" if self.p.training.backend == "trl" else "chunked"

    def sft_logits_note(self) -> str:
        tr, a = self.p.training, self.arch
        if a is None:
            return "logits chunked (Unsloth's fused loss)"
        full = pm.training_memory(a, dtype_bytes=self.dtype_bytes, four_bit=tr.load_in_4bit and tr.use_lora,
                                  lora_r=tr.lora_r if tr.use_lora else 0, lora_targets=tr.lora_target_modules,
                                  rows=tr.batch_size, seq=tr.max_seq_len, grad_ckpt=tr.gradient_checkpointing,
                                  logits="full")
        return (f"logits chunked: Unsloth's fused loss (training.backend={tr.backend}); without Unsloth (TRL) the "
                f"peak is {full['total'] / pm.GIB:.1f} GiB")

    def api(self, row: Row, requests: float, prompt_in: float, expected_out: float, once: bool) -> None:
        te = self.p.teacher
        requests = int(round(requests))
        cost = requests * (prompt_in * te.price_input_per_m + expected_out * te.price_output_per_m) / 1e6
        seconds = requests * expected_out / self.t.api_tokens_per_s / te.concurrency
        suffix = "_once" if once else ""
        for key, value in (("requests", requests), ("cost", cost), ("api_seconds", seconds)):
            setattr(row, key + suffix, getattr(row, key + suffix) + value)
        row.written_gb += requests * (prompt_in + expected_out) * self.t.bytes_per_token / pm.GB
        row.kept_gb += requests * (prompt_in + expected_out) * self.t.bytes_per_token / pm.GB
        row.notes.append(f"{requests:,} requests x ({prompt_in:,.0f} in + {expected_out:,.0f} out) tokens"
                         + (", paid once for every seed (the teacher cache)" if once else ", per seed"))

    def teacher_out(self) -> float:
        return self.cot.expected_capped(self.p.teacher.max_tokens)


def _stages(pl: _Planner) -> list[Row]:
    p, t = pl.p, pl.t
    n, tr = p.data.n_train, p.training
    evaluated = list(p.evaluation.methods)
    rows = []

    # 00: questions, benchmarks, the student (downloaded once into the hub cache)
    r = Row("00", "data, benchmarks, student", disk_once=True)
    if pl.arch is not None and p.student.model != "toy":
        r.written_gb = r.kept_gb = pl.arch.params * 2 / pm.GB
        r.kept_what = "the student's 16-bit weights (hub cache)"
    rows.append(r)

    # 01: teacher CoTs
    r = Row("01", f"teacher CoTs ({p.teacher.kind})")
    if p.teacher.kind == "api":
        pl.api(r, pl.n_cots, t.prompt_tokens + 100, pl.teacher_out(), once=True)
    elif p.teacher.kind == "local":
        r.notes.append("local teacher: its model is not the student; its generation time is not estimated")
    r.notes.append(f"teacher CoT {pl.cot_source}; {pl.fit:.0%} fit training.max_seq_len={tr.max_seq_len}: "
                   f"{pl.n_kept} questions kept (teacher CoTs verify {t.teacher_correct:.0%}, assumed)")
    rows.append(r)

    # 02: error exposure (+ the priming SFT)
    ex = p.exposure
    r = Row("02", f"error exposure ({ex.source})")
    if ex.source == "primed":
        pl.training(r, tr, pl.n_kept, pl.train_len, 1, pl.sft_logits(), label="priming: ")
    runaway = t.trained_runaway if ex.source == "primed" else t.base_runaway
    lengths = pl.cot if ex.source == "primed" else pl.base_len
    pl.generation(r, n * ex.k, t.prompt_tokens, lengths, ex.max_new_tokens, runaway, group=ex.k)
    rows.append(r)

    # 03: reflection over the kept questions with an error, then perplexity scoring
    rf = p.reflection
    items = pl.n_kept * t.error_share
    r = Row("03", f"reflection (m={rf.m})")
    if rf.reflector in ("llm", "auto") and p.student.model != "toy":
        wrong = pl.base_len.expected_capped(ex.max_new_tokens, t.base_runaway)
        prompt = t.prompt_tokens + pl.train_len + wrong
        pl.generation(r, items * rf.m, prompt, pm.Lengths(pl.cot.median + t.reflection_extra), rf.max_new_tokens,
                      t.base_runaway, group=rf.m)
    else:
        pl.generation(r, items * rf.m, t.prompt_tokens, pl.cot, rf.max_new_tokens, t.base_runaway, group=rf.m)
    if rf.selection == "perplexity":
        pl.scoring(r, items * (rf.m + 1), pl.train_len + t.reflection_extra)
        r.notes.append(f"scoring {items * (rf.m + 1):,.0f} CoTs (every candidate and the teacher's: the upper bound)")
    r.notes.append(f"{items:,.0f} questions with an error ({t.error_share:.0%} of the kept, assumed)")
    rows.append(r)

    # 04: each CoT method evaluated
    for method in methods_to_train("04_sft", evaluated):
        r = Row("04", f"train {method}")
        extra = t.reflection_extra * t.error_share if method == "orion" else 0
        pl.training(r, tr, pl.n_kept, pl.train_len + extra, 1, pl.sft_logits())
        if pl.sft_logits() == "chunked":
            r.notes.append(pl.sft_logits_note())
        rows.append(r)

    if "edit" in evaluated:
        rows.append(_edit_row(pl))
    if "tailored" in evaluated:
        rows.append(_tailored_row(pl))

    # 07: every evaluated method on every benchmark
    ev = p.evaluation
    sizes = benchmark_items(p)
    problems = sum(sizes.values())
    per_problem = ev.n_samples + (1 if ev.greedy else 0)
    r = Row("07", f"evaluation ({len(evaluated)} methods)")
    at_once = 0
    for method in evaluated:
        trained = method != "base"
        for bench, count in sizes.items():
            effort = BENCHMARK_EFFORT.get(bench, 1.0)
            median = (pl.cot.median if trained else pl.base_len.median) * effort
            at_once = max(at_once, pl.generation(r, count * per_problem, t.prompt_tokens, pm.Lengths(median),
                                                 ev.max_new_tokens, t.trained_runaway if trained else t.base_runaway,
                                                 group=per_problem, note=False))
    chunk_seqs = ev.chunk_questions * per_problem
    if pl.backend == "vllm" and chunk_seqs < 2 * at_once and problems > ev.chunk_questions:
        # each chunk ends in a part-full batch: a chunk of at least two full batches keeps that tail under a third
        pl.warnings.append(f"07 evaluation: a chunk of {ev.chunk_questions} questions sends {chunk_seqs} sequences, "
                           f"fewer than twice the {at_once} vLLM runs at once; evaluation.chunk_questions >= "
                           f"{-(-2 * at_once // per_problem)} keeps its batches full (a crash loses one chunk)")
    r.notes = [f"{problems:,} problems ({', '.join(f'{k} {v}' for k, v in sizes.items())}) x {per_problem} "
               f"generations x {len(evaluated)} methods, answers as long as the training CoTs x "
               f"{BENCHMARK_EFFORT} (assumed; base: {t.base_answer} tokens x the same); resumes per chunk of "
               f"{ev.chunk_questions} questions", *r.notes]
    rows.append(r)

    # 08: analysis: perplexity of each trained method's CoTs; the teacher as judge
    an = p.analysis
    r = Row("08", "analysis")
    trained = [m for m in evaluated if m != "base"]
    scored = min(pl.n_kept, an.max_cots) if an.max_cots else pl.n_kept
    pl.scoring(r, scored * len(trained), pl.train_len)
    if an.judge and p.teacher.kind == "api":
        pl.api(r, min(an.judge_max_cots, pl.n_kept) * len(trained), pl.train_len + 300, t.judge_output, once=False)
    rows.append(r)
    return rows


def _edit_row(pl: _Planner) -> Row:
    p, t, ed = pl.p, pl.t, pl.p.edit
    r = Row("05", f"EDIT ({ed.pair_source} pairs)")
    per_q = min(p.teacher.n_per_question, ed.max_pairs_per_problem or p.teacher.n_per_question)
    n_pairs = p.data.n_train * per_q * pl.fit
    if ed.pair_source == "teacher" and p.teacher.kind == "api":
        pl.api(r, p.data.n_train * per_q, pl.train_len + 500, pl.teacher_out(), once=True)
    stage1 = pl.n_kept + p.data.n_train * per_q * (1 - t.teacher_correct) * pl.fit  # D+ and the rectified D-+
    pl.training(r, p.training, stage1, pl.train_len, 1, pl.sft_logits(), label="stage 1: ")
    # stage 2: both CoTs of a pair in one forward pass; the loss over chunks of LOGIT_CHUNK positions
    pl.training(r, ed, n_pairs, pl.train_len, 2, "chunked", label="stage 2: ")
    r.notes.append(f"stage-2 logits in chunks of {pm.LOGIT_CHUNK} positions (plan_model.LOGIT_CHUNK)")
    return r


def _tailored_row(pl: _Planner) -> Row:
    p, t, ta = pl.p, pl.t, pl.p.tailored
    n = p.data.n_train
    r = Row("06", f"Tailored Learning ({ta.rounds} rounds)")
    for rnd in range(1, ta.rounds + 1):
        trained = rnd > 1
        pl.generation(r, n * ta.exam_samples, t.prompt_tokens, pl.cot if trained else pl.base_len,
                      ta.exam_max_new_tokens, t.trained_runaway if trained else t.base_runaway, group=ta.exam_samples)
        exam = (pl.cot if trained else pl.base_len).expected_capped(ta.exam_max_new_tokens)
        if rnd == 1:
            if p.teacher.kind == "api":
                pl.api(r, n * ta.teacher_samples, t.prompt_tokens + 100, pl.teacher_out(), once=True)
            examples = n * ta.teacher_samples * t.teacher_correct * pl.fit
        else:
            wrong = n * t.error_share
            if p.teacher.kind == "api":
                pl.api(r, wrong * ta.tailor_samples, t.prompt_tokens + ta.max_wrong_shown * exam, pl.teacher_out(),
                       once=False)
            examples = wrong * ta.tailor_samples * t.teacher_correct * pl.fit
        # a triplet: anchor, positive (teacher rationales) and negative (an exam answer), one forward pass
        seq = (2 * pl.train_len + t.prompt_tokens + exam) / 3
        pl.training(r, ta, examples, seq, 3, "chunked", hidden_rows=3 * ta.batch_size, label=f"round {rnd}: ")
    r.notes.append(f"exams resume per chunk; triplet rows' logits in chunks of {pm.LOGIT_CHUNK} positions, only the "
                   f"last token's hidden state kept")
    return r


def make_plan(profile_name: str, gpu: Optional[str] = None, *, overrides: Optional[dict] = None,
              doctor: Optional[str] = None, disk_gb: Optional[float] = None,
              cot_median: Optional[int] = None, typical: Typical = TYPICAL) -> Plan:
    """The plan of ``profile_name`` (a name or a YAML path) on ``gpu`` (a ``plan_model.CARDS`` name)."""
    profile = load_profile(profile_name, overrides)
    gpu = gpu or PLANNED_CARDS.get(profile.name, DEFAULT_CARD)
    if gpu not in pm.CARDS:
        raise ValueError(f"--gpu {gpu!r}: known cards are {', '.join(pm.CARDS)}")
    card = pm.CARDS[gpu]
    measured = pm.Measured.from_doctor_json(doctor) if doctor else None
    pl = _Planner(profile, card, measured, typical, cot_median)
    rows = _stages(pl)
    plan = Plan(profile.name, card, pl.arch, pl.arch_source, pl.backend, len(profile.seeds), rows, pl.warnings,
                [], disk_gb if disk_gb is not None else card.disk_gb, card.session_h)
    plan.header = _header(plan, profile, pl, measured, doctor)
    _warn(plan)
    return plan


def _header(plan: Plan, profile: Profile, pl: _Planner, measured, doctor) -> list[str]:
    a, c = plan.arch, plan.card
    shape = f"{a.name}, {a.params / 1e9:.2f}B parameters" if a else "shape unknown"
    rate = (f"tokens/s measured by orion doctor ({doctor}: {measured.gpu})" if measured else
            f"tokens/s from a roofline of the card's data sheet (bandwidth x {pm.DECODE_BANDWIDTH_SHARE}, "
            f"training MFU {pm.T4_TRAIN_MFU if c.name == 'T4' else pm.TRAIN_MFU}; plan_model)")
    par = profile.parallel
    cards = (f"{par.gpus} x {c.name} (parallel: training {par.training}, generation {par.generation}; peak GiB "
             f"per GPU, hours of the whole node, speed-ups assumed: plan_model.PARALLEL_EFFICIENCY)"
             if par.gpus > 1 else c.name)
    return [f"orion plan: profile {plan.profile} on {cards} ({c.memory_gib:.1f} GiB, disk {plan.disk_gb:.0f} GB"
            f"{f', {c.session_h:.0f} h session' if c.session_h else ''}), {plan.seeds} seed(s)",
            f"student {profile.student.model} ({shape}; {plan.arch_source}); generation {plan.backend}; {rate}",
            f"models kept as: {pl.model_gb()[1]} (training.merge_lora)"]


def _warn(plan: Plan) -> None:
    c = plan.card
    for r in plan.rows:
        if r.peak_gib is not None and r.peak_gib > c.memory_gib:
            plan.warnings.append(f"{r.stage} {r.what}: peak {r.peak_gib:.1f} GiB > the {c.name}'s {c.memory_gib:.1f} "
                                 f"GiB ({r.peak_what})")
    if plan.session_h and plan.hours > plan.session_h:
        plan.warnings.append(f"the run takes {plan.hours:.1f} h > one {plan.session_h:.0f} h session: "
                             f"{math.ceil(plan.hours / plan.session_h)} sessions, each `orion run` again after a "
                             f"disconnect (stages resume from their last chunk or checkpoint)")
    disk = plan.total("written_gb")
    if disk > plan.disk_gb:
        plan.warnings.append(f"the run writes {disk:.0f} GB > {plan.disk_gb:.0f} GB of disk (--disk-gb)")
    if plan.arch is None:
        plan.warnings.append(plan.arch_source)


# --- the table ----------------------------------------------------------------------------------------
def _tokens(x: float) -> str:
    if x <= 0:
        return "-"
    return f"{x / 1e6:.1f}M" if x >= 1e5 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def format_plan(plan: Plan) -> str:
    head = ("stage", "what", "generate (exp / max)", "train", "hours", "peak GiB", "disk GB written / kept",
            "API req", "API $")
    body = []
    for r in plan.rows:
        requests, cost = r.requests + r.requests_once, r.cost + r.cost_once
        body.append((r.stage, r.what, f"{_tokens(r.generate)} / {_tokens(r.generate_max)}" if r.generate else "-",
                     _tokens(r.train), f"{(r.seconds + r.api_seconds + r.api_seconds_once) / 3600:.2f}",
                     "-" if r.peak_gib is None else f"{r.peak_gib:.1f}",
                     f"{r.written_gb:.1f} / {r.kept_gb:.1f}" if r.written_gb else "-",
                     f"{requests:,}" if requests else "-", f"{cost:.2f}" if cost else "-"))
    for seeds, label in ([(1, "one seed")] if plan.seeds > 1 else []) + [(plan.seeds, f"run ({plan.seeds} seed(s))")]:
        gen, gmax = plan.total("generate", seeds), plan.total("generate_max", seeds)
        hours = (plan.total("seconds", seeds) + plan.total("api_seconds", seeds)) / 3600
        body.append(("total", label, f"{_tokens(gen)} / {_tokens(gmax)}", _tokens(plan.total("train", seeds)),
                     f"{hours:.2f}", "-" if plan.peak_gib is None else f"{plan.peak_gib:.1f}",
                     f"{plan.total('written_gb', seeds):.1f} / {plan.total('kept_gb', seeds):.1f}",
                     f"{plan.total('requests', seeds):,.0f}", f"{plan.total('cost', seeds):.2f}"))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]

    def line(cells):
        return "| " + " | ".join(f"{str(c):<{w}}" for c, w in zip(cells, widths)) + " |"

    out = [*plan.header, "", line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body), ""]
    for r in plan.rows:
        details = [*r.notes] + ([f"peak: {r.peak_what}"] if r.peak_what else []) + (
            [f"keeps: {r.kept_what}"] if r.kept_what else [])
        if details:
            out.append(f"{r.stage} {r.what}: " + "; ".join(details))
    out.append("")
    out += [f"WARNING: {w}" for w in plan.warnings] or ["no warnings: every stage fits the card, the session and the disk"]
    return "\n".join(out)


def main_plan(args: argparse.Namespace, overrides: dict) -> int:
    """The ``orion plan`` subcommand (argparse namespace from ``runner.main``)."""
    plan = make_plan(args.profile, args.gpu, overrides=overrides, doctor=args.doctor, disk_gb=args.disk_gb,
                     cot_median=args.cot_median)
    print(format_plan(plan))
    return 0
