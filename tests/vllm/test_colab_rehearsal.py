"""The `colab` profile rehearsed on CPU with what a GPU run would read (configs/colab_rehearsal.yaml):
SmolLM2-135M-Instruct as the student, the 291 real long CoTs of R1-Distill-Qwen-32B on LIMO in
``../shared/data/traces`` as the teacher (the training questions are theirs), and vLLM's CPU engine with
``max_model_len: 3072``, which most of those CoTs exceed. Every notebook of the profile runs; the LLM
reflector's prompts meet the prompt budget (``orion_utils.budget``): some fit, wrong attempts beside a
long teacher CoT are cut, items whose teacher CoT alone does not fit are left out, and nothing raises.
The counts are in the stage's line, the manifest and report.md. Run by `make test-vllm` in .venv-vllm."""
import json
import re

import nbformat
import pytest

from orion_utils.jsonl import read_jsonl
from orion_utils.records import Problem, Refinement, TeacherTrace
from orion_utils.runner import NOTEBOOKS, run_pipeline

pytestmark = pytest.mark.slow

LINE = re.compile(r"^\[reflection\] prompt budget: reflect: (\d+) fit as built, (\d+) cut, (\d+) left out "
                  r"\(limit (\d+) = 3072 - 64 tokens, counted by tokenizer\)$", re.MULTILINE)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    return run_pipeline("colab_rehearsal", str(tmp_path_factory.mktemp("runs") / "colab_rehearsal"))


def _printed(run_dir, name: str) -> str:
    nb = nbformat.read(run_dir / "notebooks" / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{name}: {errors[0]}"
    assert all(c.get("execution_count") for c in code), f"{name}: a cell did not run"
    return "".join(o.get("text", "") for c in code for o in c.get("outputs", []))


def test_every_stage_finished_on_vllm(rehearsal):
    ran = sorted(p.stem for p in (rehearsal / "notebooks").glob("*.ipynb"))
    assert ran == [n for n in NOTEBOOKS if n not in ("05_edit", "06_tailored_learning")]  # colab's methods
    for name in ran:
        for line in re.findall(r"^\[generation\] .*$", _printed(rehearsal, name), re.MULTILINE):
            assert line.startswith("[generation] backend=vllm device=cpu dtype=float32 "), f"{name}: {line}"
    manifest = json.loads((rehearsal / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    assert list(json.loads((rehearsal / "metrics.json").read_text())) == ["base", "sft", "orion"]
    # the questions are the real traces' own, and the teacher's CoTs are those traces
    problems = read_jsonl(rehearsal / "data" / "train_problems.jsonl", Problem)
    traces = read_jsonl(rehearsal / "data" / "teacher_traces.jsonl", TeacherTrace)
    assert len(problems) == 4 and all(p.id.startswith("limo/") for p in problems)
    assert {t.problem_id for t in traces} == {p.id for p in problems}


def test_the_prompt_budget_cut_and_left_out_and_said_so(rehearsal):
    found = LINE.findall(_printed(rehearsal, "03_error_aware_reflection"))
    assert len(found) == 1, "the reflection stage's prompt-budget line"
    fit, cut, left_out, limit = map(int, found[0])
    assert cut > 0 and left_out > 0 and limit == 3072 - 64
    stage = json.loads((rehearsal / "manifest.json").read_text())["stages"]["reflection"]
    assert stage["prompt_budget"]["reflect"] == {"limit": limit, "context": 3072, "reserve": 64,
                                                 "counted": "tokenizer", "fit": fit, "cut": cut,
                                                 "left_out": left_out}
    refinements = read_jsonl(rehearsal / "data" / "refinements.jsonl", Refinement)
    reflected = [r for r in refinements if r.wrong_attempt]
    assert fit + cut + left_out == len(reflected)
    # a left-out item got no candidate: its teacher CoT is kept
    assert sum(r.n_candidates == 0 and r.refined_cot == r.teacher_cot for r in reflected) >= left_out
    report = (rehearsal / "report.md").read_text()
    assert "### Prompt budget" in report
    assert f"| reflection | reflect | {fit} | {cut} | {left_out} | {limit} = 3072 − 64 | tokenizer |" in report
