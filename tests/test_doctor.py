"""`orion doctor`: the table says what runs here and measures it (CPU path; the GPU path is the same code
with CUDA's device, dtype and peak FLOP/s, and the selection logic is checked with CUDA stood in)."""
import json
import os

import pytest

from orion_utils import device, doctor, generation, training
from orion_utils.runner import main


def test_peak_flops_table_and_mfu():
    assert doctor.gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert doctor.gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert doctor.gpu_peak_flops("NVIDIA H200") == 989e12
    assert doctor.gpu_peak_flops("NVIDIA L4") == 121e12 and doctor.gpu_peak_flops("NVIDIA L40S") == 362e12
    assert doctor.gpu_peak_flops("Tesla T4") == 65e12 and doctor.gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert doctor.gpu_peak_flops("Some Future GPU") is None and doctor.gpu_peak_flops(None) is None
    # 1.31B parameters, 5,032 tokens/s with LoRA on an H200: 4 * 1.31e9 * 5032 / 989e12
    assert doctor.mfu(5032, 1_310_000_000, True, 989e12) == pytest.approx(4 * 1.31e9 * 5032 / 989e12)
    assert doctor.mfu(1000, 10, False, 1e6) == pytest.approx(0.06)
    assert doctor.mfu(1000, 10, False, None) is None


def test_doctor_on_cpu_measures_both_paths(tiny_model_dir, capsys):
    report = doctor.run_doctor("toy", model=tiny_model_dir, n_prompts=4, max_new_tokens=16, train_steps=2,
                               seq_tokens=64)  # `orion doctor` measures 16 x 64 and 6 steps of 256 on a CPU
    out = capsys.readouterr().out
    data = json.loads(json.dumps(report.to_dict(), default=str))
    rows = {r[0]: r for r in data["rows"]}
    assert not [r for r in data["rows"] if r[1] == "FAILED"], out
    assert rows["device"][1] == "cpu" and rows["dtype"][1] == "float32"
    assert rows["generation backend"][1] == "transformers"
    assert rows["training backend"][1] == "trl (full fine-tuning)"  # the toy profile trains the whole model
    assert rows["liger kernels"][1] == "off"
    n = data["numbers"]
    assert n["generation"]["transformers"]["tokens_per_s"] > 0 and n["generation"]["transformers"]["tokens"] > 0
    assert set(n["training"]) == {"chosen", "trl+peft"}
    assert n["training"]["chosen"]["lora"] is False and n["training"]["trl+peft"]["lora"] is True
    for r in n["training"].values():
        assert r["tokens_per_s"] >= r["supervised_tokens_per_s"] > 0 and r["mfu"] is None
    # the TRL + PEFT reference ran in a fresh process, where nothing imported Unsloth
    assert n["training"]["trl+peft"]["pid"] != os.getpid() and n["training"]["trl+peft"]["unsloth_imported"] is False
    assert "pid" not in n["training"]["chosen"]
    assert "in a fresh process" in rows["train: trl + PEFT LoRA"][2]
    assert "MFU n/a" in rows["train: trl full"][2]
    assert out.splitlines()[0].startswith("| check ") and "| generate: transformers " in out


def test_doctor_names_what_loads_with_cuda_stood_in(monkeypatch, capsys):
    """No GPU here: CUDA, vLLM and Unsloth are stood in to check what the table says a GPU user gets."""
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    monkeypatch.setattr(generation, "vllm_status", lambda: (True, "installed"))
    monkeypatch.setattr(generation, "try_import_vllm", lambda: None)
    monkeypatch.setattr(training.selection, "unsloth_installed", lambda: True)
    report = doctor.DoctorReport()
    gen, train = doctor._backends(report, "auto", "auto", True, "auto")
    rows = {r[0]: r for r in report.rows}
    assert (gen, train) == ("vllm", "unsloth")
    assert rows["generation backend"][2] == "generation.backend=auto: vllm: installed and CUDA available"
    assert rows["attention / batching"][1] == "unsloth / padding_free"
    assert rows["liger kernels"][1] == "off" and "own kernels" in rows["liger kernels"][2]


def test_doctor_command_without_benchmark_and_bad_profile(tmp_path, capsys):
    assert main(["doctor", "--no-benchmark", "--json", str(tmp_path / "d.json")]) == 0
    assert "training backend" in capsys.readouterr().out
    rows = {r[0]: r[1] for r in json.loads((tmp_path / "d.json").read_text())["rows"]}
    assert rows["device"] == "cpu" and rows["generation backend"] == "transformers"
    assert main(["doctor", "--profile", "no_such_profile", "--no-benchmark"]) == 1
    assert "[orion] error:" in capsys.readouterr().err


def test_doctor_names_an_unusable_gpu_and_goes_on(monkeypatch):
    """A driver too old for torch's CUDA (stood in: no GPU here) is a FAILED row with the fix, not a crash."""
    probe = device.GPUProbe(gpu_present=True, driver="550.54.15", torch_version="2.14.0", torch_cuda="13.0",
                            cuda_available=False)
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    monkeypatch.setattr(device, "gpu_probe", lambda: probe)
    report = doctor.run_doctor("toy", benchmark=False, print_table=False)
    rows = {r[0]: r for r in report.rows}
    assert rows["gpu"][1] == "FAILED" and "needs NVIDIA driver >= 580" in rows["gpu"][2]
    assert rows["device"][1] == "cpu"
