"""`orion plan`: its arithmetic against cases worked by hand (the working in each test's comments), the
shipped profiles' plans (colab within one Colab session on a T4, no paper stage over 80 GB), and the README's
planned hours equal to what the plan computes."""
import json
import math
import re
from pathlib import Path

import pytest

from orion_utils import plan_model as pm
from orion_utils.doctor import DoctorReport
from orion_utils.plan import BENCHMARK_SIZES, benchmark_items, format_plan, make_plan
from orion_utils.runner import main

ROOT = Path(__file__).resolve().parent.parent
QWEN15, QWEN7 = pm.ARCHITECTURES["qwen2.5-1.5b"], pm.ARCHITECTURES["qwen2.5-7b"]


def test_parameter_counts_from_the_shapes():
    # Qwen2.5-1.5B, one block: q 1536*1536 = 2,359,296, k and v 1536*256 = 393,216 each, o 2,359,296, gate/up/down
    # 1536*8960 = 13,762,560 each -> 46,792,704, + q/k/v biases 1536 + 2*256 = 2,048 -> 46,794,752; x 28 blocks =
    # 1,310,253,056; tied embedding 151,936*1536 = 233,373,696; norms (2*28 + 1)*1536 = 87,552 -> 1,543,714,304
    assert QWEN15.params == 1_543_714_304
    # Qwen2.5-7B: q,o 3584^2 = 12,845,056, k,v 3584*512 = 1,835,008, gate/up/down 3584*18944 = 67,895,296 each:
    # 233,046,016 + biases 4,608 = 233,050,624; x 28 = 6,525,417,472; untied embeddings 2*152,064*3584 =
    # 1,089,994,752; norms 57*3584 = 204,288 -> 7,615,616,512 (the model card's 7.61B)
    assert QWEN7.params == 7_615_616_512


def test_kv_cache_and_lora_sizes():
    # KV per token: layers x kv_heads x head_dim x 2 (K, V) x bytes: 28*4*128*2*2 = 57,344; 28*2*128*2*2 = 28,672
    assert QWEN7.kv_bytes_per_token(2) == 57_344
    assert QWEN15.kv_bytes_per_token(2) == 28_672
    # LoRA r=32 on every linear of a 1.5B block: r x (in + out): q 3072, k 1792, v 1792, o 3072, gate/up/down
    # 10,496 each -> 41,216; x 32 = 1,318,912; x 28 blocks = 36,929,536
    assert QWEN15.lora_params(32) == 36_929_536
    assert QWEN15.lora_params(32, "q_proj,v_proj") == 28 * 32 * (3072 + 1792)


def test_training_memory_of_a_paper_step_by_hand():
    # Qwen2.5-7B, LoRA r=64 bf16, one 16,384-token row, gradient checkpointing, logits in chunks:
    # weights 7,615,616,512 * 2 = 15,231,233,024
    # trainable: LoRA 28 * 64 * (7168+4096+4096+7168+3*22528 = 90,112) = 161,480,704 params * 16 B = 2,583,691,264
    # activations: checkpoints 28 * 16384 * 3584 * 2 = 3,288,334,336, + 2 x one block
    #   (4h + 2q + 2kv + 4I = 14336+7168+1024+75776 = 98,304 per token) * 16384 * 2 B = 2 * 3,221,225,472
    #   -> 9,730,785,280
    # logits: 1024 positions * 152,064 * (2+4+4) = 1,557,135,360 + hidden 16384*3584*2 = 117,440,512
    # context 0.5 GiB = 536,870,912; total 29,757,156,352 (27.7 GiB)
    mem = pm.training_memory(QWEN7, dtype_bytes=2, four_bit=False, lora_r=64, lora_targets="all-linear", rows=1,
                             seq=16384, grad_ckpt=True, logits="chunked")
    assert mem["weights"] == 15_231_233_024
    assert mem["trainable"] == 2_583_691_264
    assert mem["activations"] == 9_730_785_280
    assert mem["logits"] == 1_674_575_872
    assert mem["total"] == 29_757_156_352
    # the same with the whole sequence's logits: 16384 * 152,064 * 10 = 24,914,165,760 -> 52,996,746,240 (49.4 GiB)
    full = pm.training_memory(QWEN7, dtype_bytes=2, four_bit=False, lora_r=64, lora_targets="all-linear", rows=1,
                              seq=16384, grad_ckpt=True, logits="full")
    assert full["total"] == 52_996_746_240


def test_full_logits_for_edits_two_rows_do_not_fit_an_h100_and_chunked_ones_do():
    # the failure, two 16,384-token rows (32,768 tokens): weights 15,231,233,024 + trainable 2,583,691,264
    # + activations 2 * 3,288,334,336 + 2 * 6,442,450,944 = 19,461,570,560 + context 536,870,912 = 37,813,365,760;
    # full logits 32768 * 152,064 * 10 = 49,828,331,520 -> 87,641,697,280 B = 81.6 GiB > the H100's 79.6 GiB;
    # chunked: 1024 * 152,064 * 10 + 32768 * 3584 * 2 = 1,792,016,384 -> 39,605,382,144 B = 36.9 GiB
    kwargs = dict(dtype_bytes=2, four_bit=False, lora_r=64, lora_targets="all-linear", rows=2, seq=16384, grad_ckpt=True)
    full = pm.training_memory(QWEN7, logits="full", **kwargs)["total"]
    assert full == 87_641_697_280 and full > pm.CARDS["H100"].memory_gib * pm.GIB
    assert pm.training_memory(QWEN7, logits="chunked", **kwargs)["total"] == 39_605_382_144


def test_four_bit_weights():
    # nf4: 1,310,253,056 linear params * 0.516 B = 676,090,576.9; the rest (233,461,248) in 16 bit = 466,922,496
    assert pm.weight_bytes(QWEN15, 2, four_bit=True) == pytest.approx(1_310_253_056 * 0.516 + 466_922_496)


def test_vllm_kv_room_on_a_t4():
    # 0.85 x 15 GiB = 13,690,208,256 B; - weights 3,087,428,608 - overhead 1.5 GiB 1,610,612,736 = 8,992,166,912 B
    # of KV room; / 28,672 B per token = 313,621.3 -> 313,621 tokens: two 16,384-token sequences fit, and more
    mem = pm.vllm_memory(QWEN15, pm.CARDS["T4"], utilization=0.85, dtype_bytes=2, max_model_len=16384)
    assert mem["kv_room"] == 8_992_166_912
    assert mem["kv_tokens"] == 313_621
    assert mem["fits_one"]
    tight = pm.vllm_memory(QWEN7, pm.CARDS["T4"], utilization=0.9, dtype_bytes=2, max_model_len=32768)
    assert not tight["fits_one"]  # 7B weights alone are 14.2 GiB of the 13.5 GiB it may take


def test_lengths_log_normal_by_hand():
    # median 1000, sigma 0.5: P(X <= 1000) = 0.5; mean = 1000 e^(0.125) = 1133.148;
    # E[X | X <= 1000] = 1133.148 * Phi(-0.5) / 0.5 = 1133.148 * 0.308538 / 0.5 = 699.24;
    # E[min(X, 1000)] = 0.5 * 699.24 + 0.5 * 1000 = 849.62; with 10% runaways: 0.9 * 849.62 + 100 = 864.66
    lengths = pm.Lengths(1000, 0.5)
    assert lengths.share_within(1000) == pytest.approx(0.5)
    assert lengths.mean_within(1000) == pytest.approx(699.24, abs=0.01)
    assert lengths.expected_capped(1000) == pytest.approx(849.62, abs=0.01)
    assert lengths.expected_capped(1000, runaway=0.1) == pytest.approx(864.66, abs=0.01)
    # the sigma's fit: 167 of the 291 LIMO CoTs within 4,096 tokens at median 3,723
    assert pm.Lengths(3723, pm.LENGTH_SIGMA).share_within(4096) == pytest.approx(167 / 291, abs=0.01)


def test_throughput_roofline_by_hand():
    # one 1.5B sequence on an H100, context 0: reading 3,087,428,608 B at 3350e9 * 0.6 = 2.01e12 B/s = 1.5360 ms;
    # compute 3.087e9 FLOPs at 989e12 * 0.4 = 7.8 us: memory-bound, 1 / 1.5360 ms = 651.0 tokens/s
    rate = pm.decode_tokens_per_s(QWEN15, pm.CARDS["H100"], dtype_bytes=2, batch=1, context=0)
    assert rate == pytest.approx(2.01e12 / 3_087_428_608, rel=1e-6)
    assert rate == pytest.approx(651.0, abs=0.1)
    # training a 1.5B with LoRA and checkpointing on 2-token sequences on a T4: forward per token
    # 2 * 1,543,714,304 + 4 * 28 * 1 * 1536 = 3,087,600,640; x 3 = 9,262,801,920 FLOPs; 65e12 * 0.2 / that = 1,403.5
    assert pm.train_tokens_per_s(QWEN15, pm.CARDS["T4"], seq=2, lora=True, grad_ckpt=True) == pytest.approx(1403.5, abs=0.1)


def _doctor_json(tmp_path: Path, generate: float, train: float) -> Path:
    report = DoctorReport()  # the real report's JSON layout (doctor.main_doctor writes report.to_dict())
    report.numbers.update(device="cuda", gpu="Tesla T4", generation_backend="vllm",
                          generation={"vllm": {"tokens_per_s": generate}},
                          training={"chosen": {"tokens_per_s": train, "lora": True}})
    path = tmp_path / "doctor.json"
    path.write_text(json.dumps(report.to_dict(), default=str))
    return path


def test_doctor_json_replaces_the_roofline(tmp_path):
    measured = pm.Measured.from_doctor_json(_doctor_json(tmp_path, 1000.0, 3000.0))
    assert (measured.generate, measured.train, measured.train_seq) == (1000.0, 3000.0, 1024)
    # measured at 1024 tokens without checkpointing (2 F per token for LoRA); with checkpointing 3 F: 3000 * 2/3
    assert measured.train_rate(QWEN15, seq=1024, grad_ckpt=True) == pytest.approx(2000.0)
    plan = make_plan("colab", "T4", doctor=str(tmp_path / "doctor.json"))
    exposure = next(r for r in plan.rows if r.stage == "02")
    # 02's time: its expected tokens at the measured 1,000 tokens/s, plus reading the prompts (500 x 150 tokens,
    # once per question: the k samples share a prompt)
    prefill = pm.prefill_seconds(QWEN15, pm.CARDS["T4"], 500 * 150, 500 * 150 / 2000 / 2 + 1)
    assert exposure.seconds == pytest.approx(exposure.generate / 1000.0 + prefill)
    assert "measured by orion doctor" in plan.header[1]


def test_benchmark_items_follow_the_local_files_and_the_limit():
    # the shared local copies have the published sizes
    for name, size in BENCHMARK_SIZES.items():
        path = ROOT.parent / "shared" / "data" / "benchmarks" / f"{name}.jsonl"
        if path.is_file():
            assert sum(1 for line in path.open() if line.strip()) == size
    from orion_utils.config import load_profile

    assert benchmark_items(load_profile("colab")) == {"gsm_hard": 150, "math500": 150, "aime24": 30, "amc23": 40}
    assert sum(benchmark_items(load_profile("colab_full")).values()) == 1319 + 500 + 30 + 40


def test_colab_fits_one_session_on_a_t4_and_colab_full_needs_several():
    plan = make_plan("colab", "T4")
    assert plan.hours < 12 and not plan.warnings, plan.warnings
    assert all(r.peak_gib is None or r.peak_gib <= pm.CARDS["T4"].memory_gib for r in plan.rows)
    full = make_plan("colab_full", "T4")
    assert full.hours > 12 and any("sessions" in w for w in full.warnings)


def test_an_evaluation_chunk_smaller_than_two_vllm_batches_is_a_warning():
    """colab: 3 generations per question (greedy + 2 samples), 256 sequences at once on a T4 (KV room for 256
    of 514 tokens): 64 questions send 192 < 512; the profile's 192 send 576."""
    small = make_plan("colab", "T4", overrides={"evaluation": {"chunk_questions": 64}})
    assert [w for w in small.warnings if w.startswith("07")] == [
        "07 evaluation: a chunk of 64 questions sends 192 sequences, fewer than twice the 256 vLLM runs at once; "
        "evaluation.chunk_questions >= 171 keeps its batches full (a crash loses one chunk)"]
    assert not [w for w in make_plan("colab", "T4").warnings if w.startswith("07")]


def test_no_paper_stage_over_80_gb_and_its_api_requests_by_hand():
    plan = make_plan("paper", "H100")
    assert all(r.peak_gib <= 80e9 / pm.GIB for r in plan.rows if r.peak_gib is not None)
    # paid once: stage 01 1,000 questions x 4 CoTs (teacher.n_per_question); EDIT's teacher pairs
    # 1,000 x min(4, max_pairs_per_problem 2); Tailored round 1 1,000 x 2 rationales = 8,000. Per seed: round 2
    # tailors the 900 questions the student got wrong (90%), the judge 64 CoTs x 4 trained methods = 256:
    # 1,156 x 3 seeds = 3,468. Total 11,468.
    assert plan.total("requests") == 11468
    # the same plan on a T4 warns where the 7B does not fit
    small = make_plan("paper", "T4")
    assert any("peak" in w and "T4" in w for w in small.warnings)


def test_disk_counts_merged_models_or_adapters():
    merged = make_plan("paper", "H100", overrides={"training": {"merge_lora": True}})
    adapter = make_plan("paper", "H100")  # training.merge_lora off: LoRA adapters kept
    # each of the paper's 7 trained models per seed (sft, orion, EDIT stages 1 and 2, Tailored rounds 1 and 2 ...)
    # is 15.2 GB merged; an r=64 adapter is 161,480,704 x 2 B = 0.32 GB
    sft = next(r for r in merged.rows if r.what == "train sft")
    assert sft.kept_gb == pytest.approx(QWEN7.params * 2 / 1e9)
    sft_adapter = next(r for r in adapter.rows if r.what == "train sft")
    assert sft_adapter.kept_gb == pytest.approx(161_480_704 * 2 / 1e9)
    assert "keeps: merged 16-bit model" in format_plan(merged)
    assert adapter.total("kept_gb") < merged.total("kept_gb") / 5


def test_a_model_not_in_the_table_is_said_and_a_local_config_is_read(tmp_path):
    plan = make_plan("colab", "T4", overrides={"student": {"model": "someorg/Unknown-9B"}})
    assert any("not in the built-in table" in w for w in plan.warnings)
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 1536, "num_attention_heads": 12,
        "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936, "tie_word_embeddings": True}))
    local = make_plan("colab", "T4", overrides={"student": {"model": str(folder)}})
    assert local.arch.params == QWEN15.params and "config.json" in local.arch_source


def test_readme_and_profiles_state_the_planned_hours():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \|.*\| ([\d.]+) h on an? ([\w-]+) \|$", readme, flags=re.M)
    assert {name for name, _, _ in rows} == {"colab", "colab_full", "paper"}
    for name, hours, card in rows:
        plan = make_plan(name, card)
        assert hours == f"{plan.hours:.1f}", (name, card)
        stated = re.search(r"about ([\d.]+) h", (ROOT / "configs" / f"{name}.yaml").read_text())
        if stated:
            assert stated.group(1) == f"{plan.hours:.1f}", name


def test_the_command_prints_the_table(capsys):
    assert main(["plan", "--profile", "colab", "--gpu", "T4"]) == 0
    out = capsys.readouterr().out
    assert "| 07    | evaluation" in out and "no warnings" in out
    assert main(["plan", "--profile", "paper", "--gpu", "H100", "--set", "data.n_train=10"]) == 0
    assert main(["plan", "--profile", "colab", "--gpu", "V100"]) == 1
    assert "known cards" in capsys.readouterr().err


def test_every_profile_plans(capsys):
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        plan = make_plan(path.stem)
        assert plan.rows and math.isfinite(plan.hours)


# --- more than one GPU (parallel.gpus) -------------------------------------------------------------------------


def test_per_gpu_training_memory_by_hand():
    # the paper step above (27.7 GiB on one GPU): weights 15,231,233,024; trainable 2,583,691,264 = LoRA's own
    # float32 copy 161,480,704 * 4 = 645,922,816 + gradients (float32) 645,922,816 + AdamW 1,291,845,632
    one = pm.training_memory(QWEN7, dtype_bytes=2, four_bit=False, lora_r=64, lora_targets="all-linear", rows=1,
                             seq=16384, grad_ckpt=True, logits="chunked")
    kw = dict(trainable_params=161_480_704, lora=True, dtype_bytes=2)
    assert pm.shard_training_memory(one, QWEN7, ranks=1, mode="ddp", **kw) == one
    # ddp: everything on each GPU, + the reducer's buckets, a copy of the gradients: 29,757,156,352 + 645,922,816
    ddp = pm.shard_training_memory(one, QWEN7, ranks=4, mode="ddp", **kw)
    assert ddp["buckets"] == 645_922_816 and ddp["total"] == 30_403_079_168
    # zero2 on 4: the own copy stays, gradients + AdamW (1,937,768,448) / 4 = 484,442,112 -> trainable 1,130,364,928
    z2 = pm.shard_training_memory(one, QWEN7, ranks=4, mode="zero2", **kw)
    assert z2["trainable"] == 1_130_364_928 and z2["weights"] == one["weights"]
    # zero3 on 4: weights / 4 = 3,807,808,256 + two whole layers 2 * 15,231,233,024 / 28 = 1,087,945,216
    z3 = pm.shard_training_memory(one, QWEN7, ranks=4, mode="zero3", **kw)
    assert z3["weights"] == pytest.approx(3_807_808_256 + 1_087_945_216)
    assert z3["trainable"] == 2_583_691_264 / 4
    assert z3["total"] < z2["total"] < one["total"] < ddp["total"]


def test_a_tensor_parallel_engine_holds_a_share_of_the_weights_and_the_kv():
    t4 = pm.CARDS["T4"]
    one = pm.vllm_memory(QWEN15, t4, utilization=0.85, dtype_bytes=2, max_model_len=8192)
    two = pm.vllm_memory(QWEN15, t4, utilization=0.85, dtype_bytes=2, max_model_len=8192, tensor=2)
    assert two["weights"] == one["weights"] / 2
    # Qwen2.5-1.5B has 2 KV heads: each GPU holds one, half of each token's 28,672 bytes
    assert two["kv_tokens"] == int(two["kv_room"] // (28_672 / 2))
    assert two["kv_tokens"] > 2 * one["kv_tokens"]


def test_plan_for_n_gpus_per_gpu_peaks_and_shorter_hours(capsys):
    one = make_plan("paper", "H100")
    four = make_plan("paper", "H100", overrides={"parallel": {"gpus": 4}})
    rows1, rows4 = {(r.stage, r.what): r for r in one.rows}, {(r.stage, r.what): r for r in four.rows}
    sft1, sft4 = rows1["04", "train sft"], rows4["04", "train sft"]
    # paper: batch_size 1 x grad_accum 16: each of 4 GPUs accumulates 4 whole micro-batches (the same rows as one GPU),
    # so its peak is one GPU's plus DDP's buckets; the hours are the tokens over 4 x 0.9 of one GPU's rate
    assert sft4.peak_gib == pytest.approx(sft1.peak_gib + 645_922_816 / pm.GIB)
    assert sft4.seconds == pytest.approx(sft1.seconds / (4 * pm.PARALLEL_EFFICIENCY["ddp"]))
    ev1, ev4 = rows1["07", "evaluation (5 methods)"], rows4["07", "evaluation (5 methods)"]
    assert ev4.peak_gib == ev1.peak_gib and ev4.seconds < ev1.seconds / 3  # one engine per GPU, a quarter of the prompts
    assert main(["plan", "--profile", "paper", "--gpu", "H100", "--gpus", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 x H100" in out and "per GPU (ddp, 4 GPUs)" in out


def test_a_global_batch_n_gpus_cannot_share_is_refused_at_load():
    from orion_utils.config import ConfigError, load_profile, split_global_batch

    assert split_global_batch(1, 16, 4) == (1, 4)  # the ranks share the accumulation
    assert split_global_batch(8, 1, 2) == (4, 1)  # each micro-batch
    assert split_global_batch(8, 3, 1) == (8, 3)
    with pytest.raises(ConfigError, match=r"training: 4 devices cannot share a step of batch_size=2 x grad_accum=1"):
        load_profile("smol_demo", {"parallel": {"gpus": 4}})
