"""Generation backends: batched transformers generation, backend selection, vLLM mapping, completion NLL."""
from __future__ import annotations

import io
import re
import sys
import types

import pytest
import torch

from orion_utils import device, generation, sampling
from orion_utils.chat import build_messages, encode_for_training, prompt_text
from orion_utils.generation import (
    Generation,
    SamplingConfig,
    TransformersBackend,
    VLLMBackend,
    completion_nll,
    load_generator,
    select_backend,
)

QUESTIONS = [
    "Hi",
    "What is 12 + 30?",
    "Tom has 3 apples and buys 4 more bags of 5 apples each. How many apples does he have now?",
    "2*3?",
    "A train leaves at 9 and arrives at 11. How long is the trip?",
]


@pytest.fixture(autouse=True)
def one_thread():
    """The reference computations here run a 0.1 M-parameter model: one thread is much faster (see
    ``device.cpu_threads_for``), and the caller's setting is restored afterwards."""
    with device.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def gen(tiny_model_dir):
    g = TransformersBackend(tiny_model_dir, batch_size=4, progress=False)
    yield g
    g.close()


def hf_greedy(model, tokenizer, text: str, max_new_tokens: int, eos_ids) -> list[int]:
    """Reference: plain, unbatched Hugging Face greedy generate for one prompt."""
    enc = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **enc, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, enc["input_ids"].shape[1]:].tolist()


def as_generation(tokens: list[int], tokenizer, eos_ids) -> Generation:
    stopped = bool(tokens) and tokens[-1] in eos_ids
    return Generation(tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), "stop" if stopped else "length")


def test_greedy_batched_equals_unbatched_hf_and_is_deterministic(gen):
    cfg = SamplingConfig(max_new_tokens=24)
    batched = gen.generate(QUESTIONS, cfg)  # batch_size 4: prompts of different lengths, left-padded
    assert [len(r) for r in batched] == [1] * len(QUESTIONS)
    for q, got in zip(QUESTIONS, batched):
        ref = hf_greedy(gen.model, gen.tokenizer, prompt_text(gen.tokenizer, q), 24, gen.eos_token_ids)
        assert got[0] == as_generation(ref, gen.tokenizer, gen.eos_token_ids), q
    gen.batch_size = 2  # other batch compositions give the same greedy output
    try:
        assert gen.generate(QUESTIONS, cfg) == batched
    finally:
        gen.batch_size = 4
    assert gen.generate(QUESTIONS, cfg) == batched


def test_n_samples_per_prompt_in_input_order(gen):
    greedy = gen.generate(QUESTIONS, SamplingConfig(max_new_tokens=8))
    out = gen.generate(QUESTIONS, SamplingConfig(n=3, max_new_tokens=8))  # greedy: one run, copied
    assert [len(r) for r in out] == [3] * len(QUESTIONS)
    assert all(r == [g[0]] * 3 for r, g in zip(out, greedy))
    assert out[0][0] is not out[0][1]
    # sampled path (3 rows per prompt, split across batches of 4): at a vanishing temperature every
    # sample is the greedy one, which pins each row to its prompt
    cold = gen.generate(QUESTIONS, SamplingConfig(n=3, temperature=1e-4, max_new_tokens=8))
    assert [[s.text for s in r] for r in cold] == [[g[0].text] * 3 for g in greedy]
    hot = gen.generate(QUESTIONS, SamplingConfig(n=3, temperature=1.0, max_new_tokens=8))
    assert [len(r) for r in hot] == [3] * len(QUESTIONS)
    assert any(len({s.text for s in r}) > 1 for r in hot)


def _count_batches(lengths: list[int], per_prompt: int, batch_size: int) -> list[list[tuple]]:
    """The batches before token budgets: longest prompt first, cut every ``batch_size`` rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows = [(i, j) for i in order for j in range(per_prompt)]
    return [rows[k: k + batch_size] for k in range(0, len(rows), batch_size)]


def test_batches_are_bounded_by_tokens_as_well_as_sequences(gen, tiny_model_dir):
    # a row costs its batch's longest prompt (left padding) + max_new_tokens
    gen.batch_size, gen.batch_tokens = 8, 200
    try:
        plan = gen.batch_plan([10, 50, 30], 2, 20)
        assert plan == [[(1, 0), (1, 1)], [(2, 0), (2, 1), (0, 0), (0, 1)]]  # 2 x 70 <= 200 < 3 x 70; 4 x 50 <= 200
        assert gen.batch_plan([300, 5], 1, 20) == [[(0, 0)], [(1, 0)]]  # over the budget alone: its own batch
        lengths = [7, 93, 41, 41, 12, 60, 3, 88, 25]
        for per_prompt, new in ((1, 16), (3, 40), (2, 120)):
            plan = gen.batch_plan(lengths, per_prompt, new)
            assert sorted(r for b in plan for r in b) == sorted((i, j) for i in range(len(lengths)) for j in range(per_prompt))
            for b in plan:
                assert len(b) <= 8 and (len(b) == 1 or len(b) * (max(lengths[i] for i, _ in b) + new) <= 200)
        # the same greedy output whatever the batches; the same samples on a rerun with the same budget
        greedy = SamplingConfig(max_new_tokens=16)
        gen.batch_tokens = 10 ** 9
        wide = gen.generate(QUESTIONS, greedy)
        gen.batch_tokens = 60
        lengths = [len(e) for e in generation.encode_prompts(gen.tokenizer, QUESTIONS)]
        assert len(gen.batch_plan(lengths, 1, 16)) > 1  # one batch under the wide budget, several here
        assert gen.generate(QUESTIONS, greedy) == wide
        hot = SamplingConfig(n=2, temperature=1.0, max_new_tokens=16, seed=3)
        assert gen.generate(QUESTIONS, hot) == gen.generate(QUESTIONS, hot)
    finally:
        gen.batch_size, gen.batch_tokens = 4, 4 * TransformersBackend.ROW_TOKENS


def test_the_default_token_budget_keeps_the_batches_calls_under_row_tokens_had(tiny_model_dir):
    """batch_tokens 0 is batch_size x ROW_TOKENS: a call whose longest prompt + max_new_tokens fits
    ROW_TOKENS (every call of the toy, smoke and smol profiles: prompts of a few hundred tokens, at most
    256 new) is batched as before token budgets, so its samples do not change."""
    from orion_utils.config import GenerationConfig, load_profile

    g = generation.open_generator(tiny_model_dir, GenerationConfig(batch_size=6), progress=False)
    try:
        assert g.batch_tokens == 6 * TransformersBackend.ROW_TOKENS
        lengths = [5, 400, 120, 120, 33, 700, 1, 250, 80, 64, 300, 2]
        for per_prompt in (1, 2, 4):
            for new in (24, 256, 2048 - 700):
                assert g.batch_plan(lengths, per_prompt, new) == _count_batches(lengths, per_prompt, 6)
        assert g.batch_plan(lengths, 1, 2048) != _count_batches(lengths, 1, 6)  # past it, tokens bound
    finally:
        g.close()
    g = generation.open_generator(tiny_model_dir, GenerationConfig(batch_size=6, batch_tokens=1000), progress=False)
    assert g.batch_tokens == 1000
    g.close()
    for name in ("toy", "smoke", "smol", "smol_toy"):
        p = load_profile(name)
        exams = [p.tailored.exam_max_new_tokens] if "tailored" in p.evaluation.methods else []
        assert max(p.exposure.max_new_tokens, p.reflection.max_new_tokens, p.evaluation.max_new_tokens,
                   *exams) <= 256 and p.generation.batch_tokens == 0


def test_max_new_tokens_gives_length(gen):
    for cfg in (SamplingConfig(max_new_tokens=3), SamplingConfig(n=2, temperature=1.0, max_new_tokens=3)):
        for row in gen.generate(QUESTIONS, cfg):
            for g in row:
                assert 1 <= g.n_tokens <= 3
                assert g.finish_reason == ("length" if g.n_tokens == 3 else "stop")
    assert any(g.finish_reason == "length" for row in gen.generate(QUESTIONS, SamplingConfig(max_new_tokens=3))
               for g in row)


def test_eos_stops_with_stop_and_counts_eos_not_padding(tiny_model_dir):
    g = TransformersBackend(tiny_model_dir, batch_size=8, progress=False)
    eos = g.tokenizer.eos_token_id
    assert g.eos_token_ids == [eos]
    q = QUESTIONS[2]
    ref = hf_greedy(g.model, g.tokenizer, prompt_text(g.tokenizer, q), 12, [eos])
    # make the model say <|im_end|> exactly where it would have said a fresh token ref[j]: swap the two
    # output rows (embeddings are untied, so reading the prompt is unchanged)
    j = next(k for k in range(2, len(ref)) if ref[k] not in ref[:k] and eos not in ref[: k + 1])
    w = g.model.lm_head.weight.data
    w[[eos, ref[j]]] = w[[ref[j], eos]]
    out = g.generate([q, QUESTIONS[0], QUESTIONS[4]], SamplingConfig(max_new_tokens=12))
    assert out[0][0].finish_reason == "stop"
    assert out[0][0].n_tokens == j + 1  # up to and including EOS
    assert out[0][0].text == g.tokenizer.decode(ref[:j])
    for q2, row in zip([QUESTIONS[0], QUESTIONS[4]], out[1:]):  # the others: as unbatched HF says
        ref2 = hf_greedy(g.model, g.tokenizer, prompt_text(g.tokenizer, q2), 12, [eos])
        assert row[0] == as_generation(ref2, g.tokenizer, [eos])
    g.close()
    with pytest.raises(RuntimeError, match="closed"):
        g.generate([q], SamplingConfig())


def test_sampling_reproducible_with_seed_and_leaves_global_rng_alone(gen):
    cfg = SamplingConfig(n=2, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=7)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = gen.generate(QUESTIONS, cfg)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG stream is untouched
    assert gen.generate(QUESTIONS, cfg) == a
    b = gen.generate(QUESTIONS, SamplingConfig(n=2, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=8))
    assert b != a


def test_small_cpu_model_generates_on_one_thread_and_restores_the_setting(gen, tiny_model_dir):
    assert gen.num_threads == 1  # device.cpu_threads_for: tiny model on CPU
    torch.set_num_threads(2)
    gen.generate(QUESTIONS[:1], SamplingConfig(max_new_tokens=2))
    assert torch.get_num_threads() == 2
    assert TransformersBackend(tiny_model_dir, progress=False, num_threads=None).num_threads is None
    assert device.cpu_threads_for(gen.model, "cuda") is None


def test_end_of_turn_tokens_include_the_chat_templates_turn_end():
    from conftest import build_tiny_tokenizer
    from transformers import GenerationConfig

    tok = build_tiny_tokenizer()
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    tok.eos_token = "<|endoftext|>"  # a base model's EOS: the chat turn still ends at <|im_end|>
    assert sampling.end_of_turn_token_ids(tok) == [eot, im_end]
    assert sampling.end_of_turn_token_ids(tok, GenerationConfig(eos_token_id=[im_end, 7])) == [im_end, 7, eot]


def test_prompt_forms_template_and_system(gen):
    tmpl, system = "Q: {question}\nA:", "You are terse."
    cfg = SamplingConfig(max_new_tokens=6)
    as_question = gen.generate(QUESTIONS[:2], cfg, prompt_template=tmpl, system=system)
    as_messages = gen.generate([build_messages(q, tmpl, system) for q in QUESTIONS[:2]], cfg)
    assert as_question == as_messages
    ref = hf_greedy(gen.model, gen.tokenizer, prompt_text(gen.tokenizer, QUESTIONS[1], tmpl, system), 6,
                    gen.eos_token_ids)
    assert as_question[1][0] == as_generation(ref, gen.tokenizer, gen.eos_token_ids)
    assert gen.generate([], cfg) == []
    with pytest.raises(TypeError):
        gen.generate("a bare string", cfg)


def test_select_backend_and_the_one_line(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(generation, "vllm_status", lambda: (False, "not installed"))
    assert select_backend() == ("transformers", "vllm: not installed")
    g = load_generator(tiny_model_dir, progress=False)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert re.fullmatch(
        r"\[generation\] backend=transformers device=cpu dtype=float32 model=.+ \(vllm: not installed\)", lines[0]
    ), lines[0]
    assert isinstance(g, TransformersBackend) and g.name == "transformers"
    g.close()
    # one call for both backends: the other backend's options are dropped and named
    load_generator(tiny_model_dir, progress=False, gpu_memory_utilization=0.5).close()
    assert capsys.readouterr().out.strip().endswith("(vllm: not installed) [ignored by transformers: gpu_memory_utilization]")
    assert select_backend("transformers")[0] == "transformers"
    with pytest.raises(ValueError, match="unknown generation backend"):
        select_backend("tgi")

    # installed: chosen only with CUDA, and never when another device is asked for
    monkeypatch.setattr(generation, "vllm_status", lambda: (True, "installed"))
    monkeypatch.setattr(generation, "try_import_vllm", lambda: None)
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    assert select_backend() == ("transformers", "vllm: installed, but no CUDA device")
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    assert select_backend() == ("vllm", "vllm: installed and CUDA available")
    assert select_backend(device="cpu")[0] == "transformers"
    monkeypatch.setattr(generation, "try_import_vllm", lambda: "ImportError: broken")
    name, reason = select_backend()
    assert name == "transformers" and "import failed" in reason


def test_requesting_vllm_on_a_gpu_without_it_stops_with_one_error_naming_the_fix(tiny_model_dir, monkeypatch, capsys):
    """A GPU cannot run here: CUDA's availability and vLLM's import are faked (monkeypatch); the choice
    and the error are what a GPU machine gets."""
    monkeypatch.setattr(generation, "vllm_status", lambda: (False, "not installed"))
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    with pytest.raises(generation.BackendUnavailableError) as info:
        select_backend("vllm")
    message = str(info.value)
    assert "vLLM is not installed on this CUDA machine" in message
    assert "pip install 'vllm>=" in message and '".[gpu]"' in message  # the gpu extra's own requirement
    assert "--set generation.backend=transformers" in message and "gpu-cu12" in message
    with pytest.raises(generation.BackendUnavailableError):  # and when a stage opens its generator
        load_generator(tiny_model_dir, backend="vllm")
    # installed but broken: the import error is named, and it still stops
    monkeypatch.setattr(generation, "vllm_status", lambda: (True, "installed"))
    monkeypatch.setattr(generation, "try_import_vllm", lambda: "ImportError: libcudart.so.13: cannot open")
    with pytest.raises(generation.BackendUnavailableError, match="`import vllm` fails here: ImportError: libcudart"):
        select_backend("vllm")
    # auto keeps falling back, and says so (a CPU profile that finds a GPU)
    name, reason = select_backend("auto")
    assert name == "transformers" and "import failed" in reason


def test_requesting_vllm_without_cuda_or_vllm_runs_transformers_and_says_so(tiny_model_dir, monkeypatch, capsys):
    """A GPU profile rehearsed on a CPU (tests/test_real_profiles.py) keeps running, on transformers."""
    monkeypatch.setattr(generation, "vllm_status", lambda: (False, "not installed"))
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    assert select_backend("vllm") == ("transformers", "vllm requested, but not installed and no CUDA device: a CPU run")
    load_generator(tiny_model_dir, backend="vllm", progress=False).close()
    assert "backend=transformers device=cpu" in capsys.readouterr().out
    # a broken vLLM is an error even without CUDA (it was asked for)
    monkeypatch.setattr(generation, "vllm_status", lambda: (True, "installed"))
    monkeypatch.setattr(generation, "try_import_vllm", lambda: "ImportError: broken")
    with pytest.raises(generation.BackendUnavailableError, match="broken"):
        select_backend("vllm")


@pytest.mark.parametrize("profile", ["colab", "paper"])
def test_a_gpu_profile_names_vllm_and_orion_run_stops_at_its_start_without_it(profile, tmp_path, monkeypatch, capsys):
    """``orion run`` on a CUDA machine (faked: no GPU here) whose vLLM is missing: one line, exit status 1,
    before any notebook runs."""
    from orion_utils import runner
    from orion_utils.config import load_profile

    assert load_profile(profile).generation.backend == "vllm"
    monkeypatch.setattr(generation, "vllm_status", lambda: (False, "not installed"))
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    ran = []
    monkeypatch.setattr(runner, "_execute", lambda *a, **k: ran.append(a))
    assert runner.main(["run", "--profile", profile, "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("[orion] error: generation.backend is 'vllm' but vLLM is not installed")
    assert ran == [] and not (tmp_path / "run").exists()
    # the slow path, asked for explicitly, is not stopped
    runner.main(["run", "--profile", profile, "--run-dir", str(tmp_path / "run"), "--set",
                 "generation.backend=transformers"])
    assert ran


def _fake_vllm(calls: dict, tokenizer):
    """A stand-in `vllm` module recording what the backend asks of it (vLLM's offline API surface).
    The real engine runs in tests/vllm (`make test-vllm`); this one only pins the mapping here."""
    mod = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, model, **kw):
            calls["init"] = dict(model=model, **kw)
            self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(
                shutdown=lambda: calls.__setitem__("shutdown", True)))

        def generate(self, prompts, params, use_tqdm=True):
            calls.setdefault("generate", []).append((prompts, params))
            if callable(use_tqdm):  # as current vLLM does
                bar = use_tqdm(total=len(prompts), desc="Processed prompts", file=io.StringIO())
                calls["bar_desc"] = bar.desc
                bar.close()
            outs = []
            for p in prompts:
                ids = p["prompt_token_ids"]
                eos = tokenizer.eos_token_id
                comps = [types.SimpleNamespace(
                    index=k, text="(vLLM's own detokenized text: not used)",
                    token_ids=tokenizer(f"len{len(ids)}-s{k}", add_special_tokens=False)["input_ids"]
                    + ([eos] if k % 2 == 0 else []),
                    finish_reason="stop" if k % 2 == 0 else "length")
                    for k in reversed(range(params.n))]
                outs.append(types.SimpleNamespace(outputs=comps))
            return outs

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    return mod


def test_vllm_backend_maps_onto_the_same_interface(tiny_model_dir, tiny_tokenizer, monkeypatch, capsys):
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(calls, tiny_tokenizer))
    monkeypatch.setattr(generation, "vllm_status", lambda: (True, "installed"))
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    monkeypatch.setattr(device, "resolve_dtype", lambda dtype, device: torch.bfloat16)
    g = load_generator(tiny_model_dir, seed=3, progress=False, gpu_memory_utilization=0.5, num_threads=1)
    line = capsys.readouterr().out.strip()
    assert line.startswith("[generation] backend=vllm device=cuda dtype=bfloat16 model=")
    assert line.endswith("(vllm: installed and CUDA available) [ignored by vllm: num_threads]")
    assert isinstance(g, VLLMBackend)
    assert calls["init"] == {"model": tiny_model_dir, "tokenizer": tiny_model_dir, "dtype": "bfloat16", "seed": 3,
                             "gpu_memory_utilization": 0.5}

    qs = QUESTIONS[:3]
    out = g.generate(qs, SamplingConfig(n=3, temperature=0.8, top_p=0.9, max_new_tokens=50, seed=5),
                     prompt_template="Q: {question}")
    prompts, params = calls["generate"][-1]
    assert prompts[1]["prompt_token_ids"] == tiny_tokenizer(
        prompt_text(tiny_tokenizer, qs[1], "Q: {question}"), add_special_tokens=False)["input_ids"]
    assert (params.n, params.temperature, params.top_p, params.max_tokens, params.seed) == (3, 0.8, 0.9, 50, 5)
    assert params.stop_token_ids == [tiny_tokenizer.eos_token_id] and params.detokenize is False
    assert [len(r) for r in out] == [3, 3, 3]
    n_ids = [len(p["prompt_token_ids"]) for p in prompts]
    assert [[s.text for s in r] for r in out] == [[f"len{n}-s{k}" for k in range(3)] for n in n_ids]
    n0 = len(f"len{n_ids[0]}-s0")  # one byte-level token per character, plus <|im_end|> on a stop
    assert [(s.n_tokens, s.finish_reason) for s in out[0]] == [(n0 + 1, "stop"), (n0, "length"), (n0 + 1, "stop")]

    assert "bar_desc" not in calls  # progress=False
    g.progress = True
    greedy = g.generate(qs, SamplingConfig(n=2, max_new_tokens=7), prompt_template="Q: {question}", desc="exam")
    assert calls["bar_desc"] == "exam"
    _, params = calls["generate"][-1]
    assert (params.n, params.temperature) == (1, 0.0)  # one greedy run per prompt, copied
    assert [[s.text for s in r] for r in greedy] == [[f"len{n}-s0"] * 2 for n in n_ids]
    g.close()
    assert calls.get("shutdown") is True


def test_completion_nll_matches_hand_computation(tiny_model_dir, gen):
    tok, model = gen.tokenizer, gen.model
    qs = ["What is 2+2?", "Hi", "Add 17 and 25, then double it."]
    cs = ["<think>\n2+2=4\n</think>\n\n\\boxed{4}", "Hello!", "17+25=42, 42*2=84. \\boxed{84}"]
    expected = []
    for q, c in zip(qs, cs):
        enc = encode_for_training(tok, q, c)
        ids = torch.tensor([enc["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        terms = [-logp[t - 1, enc["input_ids"][t]].item() for t in range(len(ids[0])) if enc["labels"][t] != -100]
        assert len(terms) == len(tok(c + "<|im_end|>\n", add_special_tokens=False)["input_ids"])
        expected.append(sum(terms) / len(terms))
    got = completion_nll(model, tok, qs, cs, batch_size=2)  # padded batches of different lengths
    assert got == pytest.approx(expected, abs=1e-5)
    by_path = completion_nll(tiny_model_dir, None, qs, cs, batch_size=16)
    assert by_path == pytest.approx(expected, abs=1e-5)
    loaded, loaded_tok = generation.load_scoring_model(tiny_model_dir)  # what a path loads, kept
    assert not loaded.training and completion_nll(loaded, loaded_tok, qs, cs, batch_size=16) == by_path
    assert gen.score(qs[:1], cs[:1], max_batch_tokens=1) == pytest.approx(expected[:1], abs=1e-5)
    assert completion_nll(model, tok, [], []) == []


def test_prompt_templates_take_braces_literally_except_the_question():
    from orion_utils.chat import DEFAULT_PROMPT_TEMPLATE, build_messages, fill_template
    from orion_utils.config import load_profile

    boxed = "Please reason step by step, and put your final answer within \\boxed{}."
    for profile in ("colab", "paper"):  # YAML-written templates with a bare \boxed{}
        template = load_profile(profile).student.prompt_template
        assert fill_template(template, "What is {x} if x=2?") == "What is {x} if x=2?\n" + boxed
    assert fill_template(DEFAULT_PROMPT_TEMPLATE, "Q") == "Q\n" + boxed  # str.format escapes still read
    assert build_messages("Q", "Solve: {question}", "sys") == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "Solve: Q"}]
    with pytest.raises(ValueError, match="must contain \\{question\\}"):
        fill_template("Solve it.", "Q")


def test_groups_are_generated_as_each_group_alone(gen):
    """``generate_groups`` (evaluation's greedy + sampled chunk): on transformers, one group after another."""
    greedy = SamplingConfig(n=2, max_new_tokens=6)
    hot = SamplingConfig(n=2, temperature=1.0, top_p=0.9, max_new_tokens=6, seed=4)
    together = gen.generate_groups([(["What is 2+2?", "Hi"], greedy), (["Hi"], hot)])
    assert together == [gen.generate(["What is 2+2?", "Hi"], greedy), gen.generate(["Hi"], hot)]
