"""How long real long CoTs are in the student's own tokens, and which ones ``overlong: drop`` keeps.

Notebook 01 shows this for a profile that names a trace dataset in its ``long_cots`` section (the
``smol`` profile: DeepSeek-R1-Distill-Qwen-32B's 291 long CoTs on LIMO's problems, measured with the
SmolLM2 tokenizer). Lengths are counted exactly as SFT counts them: the prompt and the assistant turn
rendered by the student's chat template (``chat.encode_for_training``), so a CoT is kept by
``overlong: drop`` if and only if its length here is at most ``training.max_seq_len``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

from .chat import encode_for_training
from .knobs import knob, validate


@dataclass
class LongCotsConfig:
    source: str = knob(
        "", "a trace dataset (limo, s1k-1.1, ...) whose CoT lengths notebook 01 shows (\"\": none)")
    data_dir: str = knob("", "its local file or directory (\"\": the hub)")
    limit: int = knob(0, "rows read (0: every row)", ge=0)

    def __post_init__(self) -> None:
        validate(self)


def token_lengths(tokenizer, pairs: Sequence[tuple[str, str]], prompt_template: str = "{question}",
                  system: Optional[str] = None) -> list[int]:
    """Training-sequence length (prompt + assistant turn, in tokens) of each (question, CoT) pair."""
    return [len(encode_for_training(tokenizer, q, c, prompt_template, system=system)["input_ids"])
            for q, c in pairs]


def overlong_split(lengths: Sequence[int], max_seq_len: int) -> dict:
    """Which sequences ``overlong: drop`` keeps (length <= max_seq_len) and summary statistics."""
    ordered = sorted(lengths)
    kept = [n <= max_seq_len for n in lengths]

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] if ordered else 0

    return {"n": len(lengths), "kept": sum(kept), "dropped": len(lengths) - sum(kept), "max_seq_len": max_seq_len,
            "min": ordered[0] if ordered else 0, "median": pct(0.5), "p90": pct(0.9),
            "max": ordered[-1] if ordered else 0, "kept_mask": kept}


def long_cot_lengths(cfg: LongCotsConfig, model_path: str, prompt_template: str = "{question}",
                     system: Optional[str] = None, max_seq_len: int = 512) -> tuple[list[int], dict]:
    """Load ``cfg``'s trace dataset, measure every verified trace in the student's tokens."""
    from transformers import AutoTokenizer

    from .teachers.datasets import load_trace_dataset

    problems, traces = load_trace_dataset(cfg.source, data_dir=cfg.data_dir or None, limit=cfg.limit or None)
    questions = {p.id: p.question for p in problems}
    verified = [t for t in traces if t.correct]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    lengths = token_lengths(tokenizer, [(questions[t.problem_id], t.cot) for t in verified], prompt_template, system)
    stats = overlong_split(lengths, max_seq_len)
    stats.update(traces=len(traces), verified=len(verified),
                 kept_at={n: sum(x <= n for x in lengths) for n in (1024, 2048, 4096, 8192, 16384)})
    return lengths, stats


def plot_lengths(lengths: Sequence[int], max_seq_len: int, title: str = "long CoT lengths"):
    """Histogram of token lengths (log-spaced bins) with the ``max_seq_len`` cut marked."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = np.logspace(np.log10(max(1, min(lengths))), np.log10(max(lengths) + 1), 30) if lengths else 10
    ax.hist(lengths, bins=bins, color="#4c72b0")
    ax.set_xscale("log")
    ax.axvline(max_seq_len, color="#c44e52", linestyle="--", label=f"training.max_seq_len = {max_seq_len}")
    ax.set_xlabel("tokens (prompt + CoT, student's chat template)")
    ax.set_ylabel("traces")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def show_long_cots(long_cots, model_path: str, student, max_seq_len: int) -> Optional[dict]:
    """Notebook 01's cell: measure the profile's ``long_cots`` section, show the statistics and the
    plot; with no source, say so. Returns the statistics (None without a source). ``long_cots`` and
    ``student``: the profile's sections (``LongCotsConfig``, ``StudentConfig``) or dicts of their keys."""
    from .display import key_values

    cfg = long_cots if isinstance(long_cots, LongCotsConfig) else LongCotsConfig(**long_cots)
    if not cfg.source:
        print("no long_cots.source in this profile: nothing to measure")
        return None
    student = student if isinstance(student, dict) else dataclasses.asdict(student)
    lengths, stats = long_cot_lengths(cfg, model_path, student.get("prompt_template", "{question}"),
                                      student.get("system_prompt") or None, max_seq_len=max_seq_len)
    shown = {k: v for k, v in stats.items() if k != "kept_mask"}
    key_values(shown, title="long CoTs in the student's tokens")
    fig = plot_lengths(lengths, max_seq_len, title=f"{cfg.source}: {len(lengths)} verified traces")
    try:
        from IPython.display import display

        display(fig)
    except ImportError:
        pass
    import matplotlib.pyplot as plt

    plt.close(fig)
    return shown


__all__ = ["LongCotsConfig", "long_cot_lengths", "overlong_split", "plot_lengths", "show_long_cots", "token_lengths"]
