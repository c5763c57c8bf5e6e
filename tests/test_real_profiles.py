"""The `colab` and `paper` profiles, rehearsed end to end on CPU through every notebook.

What a GPU run would use is replaced only where this machine cannot have it: the hub student by a
tiny random Qwen2 saved locally (the same ``from_pretrained`` path), the hub trace dataset by a
local file in s1K-1.1's schema, DeepSeek's API by the local OpenAI-compatible server, and the hub
benchmarks by the shared local copies. Everything else is the profile as shipped: the dataset and
API teachers, the LLM reflector, LoRA training (the 4-bit request falls back to full precision on
CPU with one line saying so), long CoTs left out rather than cut, the real benchmark loaders and
the three-method evaluation. Model sizes and token budgets are shrunk so that it runs in minutes.
"""
import json
import random
from pathlib import Path

import nbformat
import pytest
from conftest import build_tiny_model_dir
from helpers import FakeOpenAIServer
from helpers.openai_server import _default_answer

from orion_utils.jsonl import read_jsonl
from orion_utils.records import EvalSample, Refinement, TeacherTrace
from orion_utils.runner import NOTEBOOKS, run_pipeline
from orion_utils.teachers.prompts import CORRUPT_TEMPLATE

pytestmark = pytest.mark.slow

SHARED_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"
BENCHMARK_DIR = SHARED_BENCHMARKS if SHARED_BENCHMARKS.is_dir() else Path(__file__).parent / "fixtures" / "benchmarks"
SECRET = "sk-rehearsal-SECRET-51c0e2"

# Short stand-ins for s1K-1.1's rows (same columns); the dataset teacher's reply for the last two is wrong.
QUESTIONS = [(f"What is {a} + {b} * {c}?", a + b * c) for a, b, c in
             [(3, 4, 2), (5, 1, 6), (2, 7, 3), (9, 2, 2), (4, 4, 4), (1, 8, 5), (6, 3, 2), (7, 5, 1)]]

# Every knob a CPU can afford; everything not named here is the shipped profile's value.
SHRINK = """
seeds: [0]
student:
  model: {student}
data:
  train_dir: {train_dir}
  n_train: 8
  benchmark_dir: {benchmark_dir}
  benchmark_limit: 2
generation:
  batch_size: 16
exposure:
  k: 2
  max_new_tokens: 24
reflection:
  m: 2
  max_new_tokens: 24
training:
  max_seq_len: 1024
  max_steps: 2
  grad_accum: 1
  batch_size: 2
  save_steps: 1
evaluation:
  n_samples: 2
  max_new_tokens: 24
tailored:
  exam_samples: 2
  exam_max_new_tokens: 24
analysis:
  max_cots: 8
  judge_max_cots: 4
"""


def write_s1k_file(directory: Path) -> Path:
    rows = []
    for i, (question, answer) in enumerate(QUESTIONS):
        given = answer if i < len(QUESTIONS) - 2 else answer + 1
        rows.append({
            "solution": str(answer), "question": question, "cot_type": "math",
            "source_type": "rehearsal/arithmetic", "metadata": json.dumps({"row": i}),
            "gemini_thinking_trajectory": "", "gemini_attempt": "",
            "deepseek_thinking_trajectory": f"Multiplication first, then the addition: {question[8:-1]} = {given}.",
            "deepseek_attempt": f"The answer is $\\boxed{{{given}}}$.",
            "gemini_grade": "No", "gemini_grade_reason": "", "deepseek_grade": "Yes" if given == answer else "No",
            "deepseek_grade_reason": "",
        })
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def rehearsal_profile(tmp: Path, base: str, extra: str = "") -> Path:
    student = build_tiny_model_dir(tmp / "tiny_qwen2", architecture="qwen2", max_position_embeddings=4096)
    text = f"base: {base}\n" + SHRINK.format(
        student=student, train_dir=write_s1k_file(tmp / "s1k-1.1"), benchmark_dir=BENCHMARK_DIR
    ) + extra
    path = tmp / f"{base}_rehearsal.yaml"
    path.write_text(text)
    return path


def executed_output(run_dir: Path, notebook: str) -> str:
    nb = nbformat.read(run_dir / "notebooks" / f"{notebook}.ipynb", as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def check_common(run_dir: Path, profile: dict) -> dict:
    executed = {p.stem for p in (run_dir / "notebooks").glob("*.ipynb")}
    methods = profile["evaluation"]["methods"]
    baselines = {"05_edit": "edit", "06_tailored_learning": "tailored"}
    assert executed == set(NOTEBOOKS) - {nb for nb, m in baselines.items() if m not in methods}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    # the real benchmark loaders read every benchmark of the profile
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics) == methods
    for method, per_benchmark in metrics.items():
        assert set(per_benchmark) == set(profile["data"]["benchmarks"])
        for bench, m in per_benchmark.items():
            samples = read_jsonl(run_dir / "eval" / method / f"{bench}.jsonl", EvalSample)
            assert m["n_problems"] == 2 and len(samples) == 2 * (1 + m["n_samples"])
    # the LLM reflector ran (the random student's rewrites fail verification: the teacher CoT stands in)
    assert "reflector=llm" in executed_output(run_dir, "03_error_aware_reflection")
    assert read_jsonl(run_dir / "data" / "refinements.jsonl", Refinement)
    # LoRA training, with the 4-bit request falling back on CPU, said in one line each
    sft_out = executed_output(run_dir, "04_sft")
    assert sft_out.count("load_in_4bit needs a CUDA GPU") == (2 if profile["training"]["load_in_4bit"] else 0)
    assert sft_out.count("backend=trl") == 2 and sft_out.count("lora=True") == 2
    for method in ("sft", "orion"):
        result = json.loads((run_dir / "models" / method / "train_result.json").read_text())
        assert result["config"]["use_lora"] and result["config"]["overlong"] == "drop"
        model = run_dir / "models" / method / "model"  # LoRA: the adapter, not a merged copy (training.merge_lora)
        assert (model / "adapter_config.json").is_file() and not (model / "config.json").exists()
    assert "report.md" in {p.name for p in run_dir.iterdir()}
    return manifest


def test_colab_profile_rehearsal(tmp_path):
    run_dir = run_pipeline(str(rehearsal_profile(tmp_path, "colab")), str(tmp_path / "run"))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["student"]["model"].endswith("tiny_qwen2") and config["teacher"]["kind"] == "dataset"
    assert config["training"]["load_in_4bit"] is True  # the shipped profile's QLoRA, not overridden here
    assert config["evaluation"]["methods"] == ["base", "sft", "orion"]
    manifest = check_common(run_dir, config)
    traces = read_jsonl(run_dir / "data" / "teacher_traces.jsonl", TeacherTrace)
    assert len(traces) == 8 and sum(t.correct for t in traces) == 6  # graded against the gold, not trusted
    assert manifest["stages"]["teacher_cots"]["filter"]["questions_kept"] == 6


def r1_stand_in(messages: list):
    """The local server's arithmetic teacher, which also does what EDIT's contrastive prompt asks: a wrong
    solution between the tags the prompt names (the `paper` profile builds EDIT's dual CoTs from the teacher,
    `edit.pair_source: teacher`; a reply without the tags is rejected)."""
    asked = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    corrupt = CORRUPT_TEMPLATE.split("\n", 1)[0][:60] in asked
    thinking, solution = _default_answer(messages, corrupt, random.Random(0))
    if not corrupt:
        return thinking, solution
    return "I change one step.", (f"<rewritten_reasoning>\n{thinking}\n</rewritten_reasoning>\n"
                                  f"<rewritten_solution>\n{solution}\n</rewritten_solution>")


def test_paper_profile_rehearsal_with_the_api_teacher(tmp_path, monkeypatch):
    monkeypatch.setenv("TOGETHER_API_KEY", SECRET)  # the profile's api_key_env, inherited by the kernels
    faults = ("429", "500", "truncated", "empty")
    with FakeOpenAIServer(api_key=SECRET, latency_s=0.01, fault_rate=0.2, faults=faults, seed=3,
                          answer_fn=r1_stand_in) as server:
        extra = f"teacher:\n  base_url: {server.base_url}\n  concurrency: 4\n  timeout_s: 10.0\n  max_retries: 8\n"
        run_dir = run_pipeline(str(rehearsal_profile(tmp_path, "paper", extra)), str(tmp_path / "run"))
        sent = server.request_count
    config = json.loads((run_dir / "config.json").read_text())
    assert config["teacher"]["kind"] == "api" and config["teacher"]["model"] == "deepseek-ai/DeepSeek-R1"
    assert config["evaluation"]["methods"] == ["base", "sft", "orion", "edit", "tailored"]  # every baseline
    assert config["edit"]["pair_source"] == "teacher"
    manifest = check_common(run_dir, config)
    traces = read_jsonl(run_dir / "data" / "teacher_traces.jsonl", TeacherTrace)
    n = config["teacher"]["n_per_question"]  # 4: EDIT's wrong CoTs to rectify (none here: the server never errs)
    assert len(traces) == 8 * n and all(t.correct for t in traces)  # the local server solves the arithmetic
    usage = manifest["stages"]["teacher_cots"]["teacher_usage"]
    assert usage["requests_succeeded"] == 8 * n and usage["failures"] == 0 and usage["cost_usd"] > 0
    assert sent >= 8 * n and usage["retries"] > 0  # a fifth of the attempts were faulted, and retried
    assert manifest["stages"]["teacher_cots"]["served_model_warning"] == ""  # the server answers as the model asked
    pairs = manifest["stages"]["edit"]["pairs"]  # EDIT's pairs: counted by kind, with their key-token share
    assert pairs["kinds"]["corrupted"] > 0 and pairs["key_share"]["median"] is not None
    assert "EDIT's dual pairs" in (run_dir / "report.md").read_text()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"the key leaked into {path}"
