"""`orion plan`'s arithmetic: cards, model shapes, memory, throughput and lengths, each stated here.

Nothing here measures: every number is a data-sheet figure, a model configuration, or an assumption
named as one (``orion doctor --json`` measures tokens/s on the machine; ``orion plan --doctor`` uses
them instead of the roofline below). ``plan.py`` counts each stage's work with these and prints it.

Units: GPU memory in GiB (2**30 bytes, as ``nvidia-smi`` and torch report it), disk in GB (1e9 bytes),
time in seconds.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

GIB = 2**30
GB = 1e9


# --- cards --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Card:
    name: str
    memory_gib: float  # total memory as nvidia-smi reports it (MiB / 1024)
    bandwidth: float  # memory bandwidth, bytes/s (data sheet)
    peak_flops: float  # dense fp16/bf16 tensor-core peak, FLOP/s (doctor.GPU_PEAKS' figures)
    bf16: bool  # compute capability >= 8.0 (device.py: bf16 only there)
    disk_gb: float  # the disk a run can count on (Colab's runtime disk; else a cloud VM's usual volume)
    session_h: float  # the longest session (Colab: 12 h); 0: none


# Data sheets (NVIDIA): T4 320 GB/s, 65 TFLOP/s fp16; L4 300 GB/s, 121 TFLOP/s; A10G 600 GB/s, 70 TFLOP/s
# (AWS's figure, as doctor.GPU_PEAKS); A100 40 GB 1,555 GB/s and 80 GB SXM 2,039 GB/s, 312 TFLOP/s; H100 SXM
# 3,350 GB/s, 989 TFLOP/s; H200 4,800 GB/s, 989 TFLOP/s. Memory: nvidia-smi's totals (T4 15,360 MiB, L4
# 23,034, A10G 23,028, A100 40,960 / 81,920, H100 81,559, H200 143,771). Disk: Colab's runtime disk is
# about 100 GB free (T4/L4/A100 runtimes); other cards: a 200 GB volume, an assumption (--disk-gb).
CARDS: dict[str, Card] = {c.name: c for c in (
    Card("T4", 15360 / 1024, 320e9, 65e12, False, 100.0, 12.0),
    Card("L4", 23034 / 1024, 300e9, 121e12, True, 100.0, 12.0),
    Card("A10G", 23028 / 1024, 600e9, 70e12, True, 200.0, 0.0),
    Card("A100-40", 40960 / 1024, 1555e9, 312e12, True, 100.0, 12.0),
    Card("A100-80", 81920 / 1024, 2039e9, 312e12, True, 200.0, 0.0),
    Card("H100", 81559 / 1024, 3350e9, 989e12, True, 200.0, 0.0),
    Card("H200", 143771 / 1024, 4800e9, 989e12, True, 200.0, 0.0),
)}


# --- model shapes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arch:
    """A decoder-only transformer's shape (Llama/Qwen2 layout: q,k,v,o + gate,up,down per layer)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool  # input and output embeddings shared
    qkv_bias: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one block (the LoRA targets of ``all-linear``)."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        """Parameters of every block's linear layers (biases included): what 4-bit quantises."""
        per = sum(a * b for a, b in self.linear_shapes().values())
        bias = (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        return self.layers * (per + bias)

    @property
    def embed_params(self) -> int:
        """The input embedding, and the output head when it is not tied (kept in 16 bit under 4-bit)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.linear_params + self.embed_params + norms

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV cache of one token: layers x kv_heads x head_dim x 2 (K and V) x bytes."""
        return self.layers * self.kv_heads * self.head_dim * 2 * dtype_bytes

    def lora_params(self, r: int, targets: str = "all-linear") -> int:
        """LoRA parameters: r x (in + out) per targeted linear layer per block."""
        shapes = self.linear_shapes()
        names = list(shapes) if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
        return self.layers * sum(r * sum(shapes[n]) for n in names if n in shapes)


# From each model's config.json on the hub (num_hidden_layers, hidden_size, num_attention_heads,
# num_key_value_heads, intermediate_size, vocab_size, tie_word_embeddings); the counts they give
# (Arch.params) match the model cards: Qwen2.5-0.5B 0.49B, 1.5B 1.54B, 3B 3.09B, 7B 7.62B; SmolLM2 135M/360M/1.7B.
_KNOWN = (
    Arch("Qwen2.5-0.5B", 24, 896, 14, 2, 64, 4864, 151936, True, True),
    Arch("Qwen2.5-1.5B", 28, 1536, 12, 2, 128, 8960, 151936, True, True),
    Arch("Qwen2.5-3B", 36, 2048, 16, 2, 128, 11008, 151936, True, True),
    Arch("Qwen2.5-7B", 28, 3584, 28, 4, 128, 18944, 152064, False, True),
    Arch("Qwen2.5-14B", 48, 5120, 40, 8, 128, 13824, 152064, False, True),
    Arch("SmolLM2-135M", 30, 576, 9, 3, 64, 1536, 49152, True),
    Arch("SmolLM2-360M", 32, 960, 15, 5, 64, 2560, 49152, True),
    Arch("SmolLM2-1.7B", 24, 2048, 32, 32, 64, 8192, 49152, True),
    Arch("Llama-3.1-8B", 32, 4096, 32, 8, 128, 14336, 128256, False),
    Arch("Llama-3.2-1B", 16, 2048, 32, 8, 64, 8192, 128256, True),
    Arch("Llama-3.2-3B", 28, 3072, 24, 8, 128, 8192, 128256, True),
)
ARCHITECTURES: dict[str, Arch] = {a.name.lower(): a for a in _KNOWN}
# R1's distilled Qwen students share Qwen2.5-Math's shapes, untied
ARCHITECTURES["deepseek-r1-distill-qwen-1.5b"] = Arch("DeepSeek-R1-Distill-Qwen-1.5B", 28, 1536, 12, 2, 128, 8960,
                                                      151936, False, True)
ARCHITECTURES["deepseek-r1-distill-qwen-7b"] = Arch("DeepSeek-R1-Distill-Qwen-7B", 28, 3584, 28, 4, 128, 18944,
                                                    152064, False, True)


def _stem(reference: str) -> str:
    """``Qwen/Qwen2.5-1.5B-Instruct`` → ``qwen2.5-1.5b`` (the table's key)."""
    last = reference.rstrip("/").split("/")[-1].lower()
    for suffix in (".gguf", "-instruct", "-it", "-chat", "-base"):
        last = last[: -len(suffix)] if last.endswith(suffix) else last
    return last


def arch_from_config(config: dict, name: str) -> Arch:
    """An ``Arch`` from a transformers config.json's fields."""
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    return Arch(name, int(config["num_hidden_layers"]), hidden, heads,
                int(config.get("num_key_value_heads") or heads), int(config.get("head_dim") or hidden // heads),
                int(config["intermediate_size"]), int(config["vocab_size"]),
                bool(config.get("tie_word_embeddings", False)),
                bool(config.get("attention_bias", config.get("model_type") == "qwen2")))


def find_arch(reference: str, toy: Optional[dict] = None) -> tuple[Optional[Arch], str]:
    """(the model's shape, where it came from) for ``student.model``: a local folder's config.json, the
    built-in table (by the reference's last path component), the toy student's section; else (None, why)."""
    path = Path(reference).expanduser()
    if (path / "config.json").is_file():
        return arch_from_config(json.loads((path / "config.json").read_text()), path.name), f"{path}/config.json"
    if reference == "toy" and toy is not None:
        arch = Arch("toy", toy["num_layers"], toy["hidden_size"], toy["num_heads"], toy["num_kv_heads"],
                    toy["hidden_size"] // toy["num_heads"], toy["intermediate_size"], TOY_VOCAB,
                    toy["tie_word_embeddings"])
        return arch, "the profile's toy_student section"
    stem = _stem(reference)
    if stem in ARCHITECTURES:
        return ARCHITECTURES[stem], "built-in table (orion_utils.plan_model.ARCHITECTURES)"
    return None, (f"{reference!r} is not in the built-in table of architectures and no local config.json is there: "
                  f"memory and time are not estimated (known: {', '.join(a.name for a in _KNOWN)})")


TOY_VOCAB = 4000  # the toy tokenizer's vocabulary (toy/tokenizer.py)


# --- memory -------------------------------------------------------------------------------------------
NF4_BYTES = 0.5 + 0.016  # bitsandbytes nf4: 4 bits + double-quantised absmax per 64 weights (~0.127 bits)
ADAMW_BYTES = 8  # two float32 moments per trainable parameter
LOGIT_CHUNK = 1024  # positions per chunk where a loss is computed in chunks (EDIT, Tailored Learning, scoring)
VLLM_OVERHEAD_GIB = 1.5  # vLLM beside weights and KV: activations of a prefill chunk, CUDA graphs (assumption)
CUDA_CONTEXT_GIB = 0.5  # the CUDA context and allocator slack of a training process (assumption)
MAX_NUM_SEQS = 256  # vLLM's default cap on sequences in one batch


def weight_bytes(arch: Arch, dtype_bytes: int, four_bit: bool = False) -> float:
    """Weights: 16-bit, or nf4 for the blocks' linear layers with embeddings (and an untied head) in 16 bit."""
    if four_bit:
        return arch.linear_params * NF4_BYTES + (arch.params - arch.linear_params) * 2
    return arch.params * dtype_bytes


def layer_activation_bytes(arch: Arch, tokens: int, dtype_bytes: int = 2) -> float:
    """What one block keeps for its backward pass, per token: its two norm inputs (2h), q,k,v and the
    attention output (2 q_dim + 2 kv_dim), o_proj's and the MLP's inputs (2h), gate, up, act(gate)*up (3I)
    and down's input (I), in the compute dtype (flash/SDPA attention: no seq x seq matrix)."""
    per_token = 4 * arch.hidden + 2 * arch.q_dim + 2 * arch.kv_dim + 4 * arch.intermediate
    return tokens * per_token * dtype_bytes


def training_memory(arch: Arch, *, dtype_bytes: int, four_bit: bool, lora_r: int, lora_targets: str,
                    rows: int, seq: int, grad_ckpt: bool, logits: str, hidden_rows: int = 0) -> dict:
    """Peak GPU bytes of one training step on ``rows`` sequences of ``seq`` tokens, by component.

    weights; trainable: LoRA parameters (float32) + gradients (float32) + AdamW (8 bytes), or for full
    fine-tuning gradients (16-bit) + AdamW over every parameter; activations: with gradient checkpointing
    every block's input (h per token) plus one block's activations recomputed, and their gradients (x2),
    without it every block's; logits: ``full`` = the 16-bit logits, their float32 copy and its gradient for
    every position of every row (10 bytes x vocab per position); ``chunked`` = the same for LOGIT_CHUNK
    positions at a time, plus the rows' final hidden states. ``hidden_rows``: rows whose last hidden state
    is kept for a second loss (Tailored Learning's triplet): h x 4 bytes each, negligible but counted."""
    weights = weight_bytes(arch, dtype_bytes, four_bit)
    if lora_r:
        trainable = arch.lora_params(lora_r, lora_targets) * (4 + 4 + ADAMW_BYTES)
    else:
        trainable = arch.params * (dtype_bytes + ADAMW_BYTES)
    tokens = rows * seq
    if grad_ckpt:
        activations = arch.layers * tokens * arch.hidden * dtype_bytes + 2 * layer_activation_bytes(arch, tokens)
    else:
        activations = arch.layers * layer_activation_bytes(arch, tokens)
    per_position = arch.vocab * (dtype_bytes + 4 + 4)
    if logits == "full":
        logit_bytes = tokens * per_position
    elif logits == "chunked":
        logit_bytes = min(tokens, LOGIT_CHUNK) * per_position + tokens * arch.hidden * dtype_bytes
    else:
        raise ValueError(f"logits must be 'full' or 'chunked', got {logits!r}")
    logit_bytes += hidden_rows * arch.hidden * 4
    parts = {"weights": weights, "trainable": trainable, "activations": activations, "logits": logit_bytes,
             "context": CUDA_CONTEXT_GIB * GIB}
    return {**parts, "total": sum(parts.values())}


# --- more than one GPU (parallel.gpus) ------------------------------------------------------------------
# Share of N cards' ideal speed-up a parallel mode reaches on one node (assumptions, not measured: no more than
# one GPU has run this code). Data-parallel generation runs N independent engines; the trainers exchange
# gradients (DDP, ZeRO-2) or also gather weights every layer (ZeRO-3, FSDP2); a tensor-parallel engine
# all-reduces twice per layer.
PARALLEL_EFFICIENCY = {"data": 1.0, "tensor": 0.8, "ddp": 0.9, "zero2": 0.85, "zero3": 0.75, "fsdp2": 0.75}
GATHERED_LAYERS = 2  # ZeRO-3/FSDP2: whole layers held at once, the one computing and the one prefetched


def shard_training_memory(parts: dict, arch: Arch, *, ranks: int, mode: str, trainable_params: int,
                          lora: bool, dtype_bytes: int) -> dict:
    """One GPU's part of ``training_memory``'s ``parts`` (computed for that GPU's micro-batch) when ``ranks``
    GPUs train in ``mode``. ``parts['trainable']`` is the trainable parameters' own copy (LoRA's float32
    adapters; full fine-tuning's parameters are the weights), their gradients (float32 for LoRA, the compute
    dtype otherwise) and AdamW's states. ``ddp`` keeps all of it on each GPU and adds the reducer's buckets (a
    copy of the gradients); ``zero2`` shards gradients and optimizer states; ``zero3`` and ``fsdp2`` shard the
    weights too, holding ``GATHERED_LAYERS`` whole layers at a time."""
    if ranks <= 1:
        return parts
    out = {k: v for k, v in parts.items() if k != "total"}
    own = trainable_params * 4 if lora else 0
    grads = trainable_params * (4 if lora else dtype_bytes)
    if mode == "ddp":
        out["buckets"] = grads
    elif mode == "zero2":
        out["trainable"] = own + (parts["trainable"] - own) / ranks
    elif mode in ("zero3", "fsdp2"):
        out["weights"] = parts["weights"] / ranks + GATHERED_LAYERS * parts["weights"] / max(1, arch.layers)
        out["trainable"] = parts["trainable"] / ranks
    else:
        raise ValueError(f"unknown parallel training mode {mode!r}")
    return {**out, "total": sum(out.values())}


def vllm_memory(arch: Arch, card: Card, *, utilization: float, dtype_bytes: int, max_model_len: int,
                tensor: int = 1) -> dict:
    """vLLM takes ``utilization`` x the card up front; what is left after the weights and its overhead is
    KV cache. ``kv_tokens``: tokens it holds; ``fits_one``: a sequence of ``max_model_len`` fits (vLLM
    refuses to start otherwise). ``tensor`` > 1: one GPU of a tensor-parallel engine, which holds 1/tensor of
    the weights and of each token's KV (KV heads split, at least one each: fewer heads than GPUs are copied)."""
    reserved = utilization * card.memory_gib * GIB
    weights = weight_bytes(arch, dtype_bytes) / tensor
    kv_room = max(0.0, reserved - weights - VLLM_OVERHEAD_GIB * GIB)
    kv_tokens = int(kv_room // (arch.kv_bytes_per_token(dtype_bytes) / min(tensor, max(1, arch.kv_heads))))
    return {"total": reserved, "weights": weights, "kv_room": kv_room, "kv_tokens": kv_tokens,
            "fits_one": kv_tokens >= max_model_len}


def transformers_generation_memory(arch: Arch, *, dtype_bytes: int, batch: int, seq: int) -> dict:
    """transformers' generate: weights + the KV cache of a whole batch at full length + one step's logits."""
    weights = weight_bytes(arch, dtype_bytes)
    kv = batch * seq * arch.kv_bytes_per_token(dtype_bytes)
    logits = batch * arch.vocab * 4
    return {"weights": weights, "kv": kv, "logits": logits, "context": CUDA_CONTEXT_GIB * GIB,
            "total": weights + kv + logits + CUDA_CONTEXT_GIB * GIB}


SCORING_LOGIT_SHARE = 0.5  # scoring.GPU_LOGIT_SHARE: logit chunks take at most half of the free memory


def scoring_memory(arch: Arch, card: Card, *, dtype_bytes: int, seq: int) -> dict:
    """completion_nll: weights, one sequence's hidden states, and logit chunks sized to half the free memory
    (scoring.logit_budget) or the whole sequence's logits when smaller."""
    weights = weight_bytes(arch, dtype_bytes)
    hidden = 2 * seq * arch.hidden * dtype_bytes + layer_activation_bytes(arch, seq)
    free = max(0.0, card.memory_gib * GIB - weights - hidden - CUDA_CONTEXT_GIB * GIB)
    logits = min(SCORING_LOGIT_SHARE * free, seq * arch.vocab * (dtype_bytes + 8))
    total = weights + hidden + logits + CUDA_CONTEXT_GIB * GIB
    return {"weights": weights, "hidden": hidden, "logits": logits, "total": total}


# --- throughput ---------------------------------------------------------------------------------------
# Roofline: a decode step of B sequences reads the weights once and each sequence's KV cache, and does
# 2 N + 4 L ctx q_dim FLOPs per sequence; it takes the longer of the two at these shares of the peaks.
# Assumptions, not measurements: vLLM reaches about 60% of the data-sheet bandwidth and 40% of the
# tensor peak in decoding; training reaches TRAIN_MFU of the peak (bf16 cards with flash attention),
# T4_TRAIN_MFU on a T4 (fp16, no flash-attention 2, 4-bit weights dequantised in every matmul).
DECODE_BANDWIDTH_SHARE = 0.6
DECODE_COMPUTE_SHARE = 0.4
PREFILL_COMPUTE_SHARE = 0.4
TRAIN_MFU = 0.35
T4_TRAIN_MFU = 0.20
TRANSFORMERS_SHARE = 0.25  # transformers' generate vs vLLM at the same batch (no paged KV, padding, Python)


def forward_flops_per_token(arch: Arch, context: float) -> float:
    """Forward FLOPs of one token attending to ``context`` earlier tokens: 2 N for the weights, and
    QK^T + AV (2 x 2 x context x q_dim per block)."""
    return 2 * arch.params + 4 * arch.layers * context * arch.q_dim


def decode_tokens_per_s(arch: Arch, card: Card, *, dtype_bytes: int, batch: int, context: float) -> float:
    """Aggregate decode tokens/s of ``batch`` sequences at mean ``context`` tokens (the roofline above)."""
    read = weight_bytes(arch, dtype_bytes) + batch * context * arch.kv_bytes_per_token(dtype_bytes)
    memory_s = read / (card.bandwidth * DECODE_BANDWIDTH_SHARE)
    compute_s = batch * forward_flops_per_token(arch, context) / (card.peak_flops * DECODE_COMPUTE_SHARE)
    return batch / max(memory_s, compute_s)


def prefill_seconds(arch: Arch, card: Card, tokens: float, context: float) -> float:
    """Reading ``tokens`` prompt tokens of mean causal context ``context``: compute-bound."""
    return tokens * forward_flops_per_token(arch, context) / (card.peak_flops * PREFILL_COMPUTE_SHARE)


def train_flops_per_token(arch: Arch, *, seq: float, lora: bool, grad_ckpt: bool) -> float:
    """Training FLOPs per token of a ``seq``-token sequence (mean causal context seq/2): forward (F) +
    backward (2 F with weight gradients, F without: LoRA's frozen base), + F again when gradient
    checkpointing recomputes the forward. doctor.model_flops_per_token is the same without attention."""
    forward = forward_flops_per_token(arch, seq / 2)
    return forward * ((2 if lora else 3) + (1 if grad_ckpt else 0))


def train_tokens_per_s(arch: Arch, card: Card, *, seq: float, lora: bool, grad_ckpt: bool) -> float:
    mfu = T4_TRAIN_MFU if card.name == "T4" else TRAIN_MFU
    return card.peak_flops * mfu / train_flops_per_token(arch, seq=seq, lora=lora, grad_ckpt=grad_ckpt)


@dataclass(frozen=True)
class Measured:
    """Tokens/s that ``orion doctor --json`` measured: generation (the chosen backend) and training (the
    profile's trainer, without gradient checkpointing, on ``train_seq``-token sequences)."""

    generate: Optional[float]
    train: Optional[float]
    train_seq: int
    lora: bool
    gpu: str

    @classmethod
    def from_doctor_json(cls, path: str | Path) -> "Measured":
        numbers = json.loads(Path(path).read_text())["numbers"]
        generation = numbers.get("generation") or {}
        chosen = generation.get(numbers.get("generation_backend")) or next(iter(generation.values()), {})
        train = (numbers.get("training") or {}).get("chosen") or {}
        on_gpu = numbers.get("device") == "cuda"
        return cls(chosen.get("tokens_per_s"), train.get("tokens_per_s"), 1024 if on_gpu else 256,
                   bool(train.get("lora", True)), str(numbers.get("gpu") or numbers.get("device") or "?"))

    def train_rate(self, arch: Arch, *, seq: float, grad_ckpt: bool) -> Optional[float]:
        """The measured rate moved to ``seq`` and ``grad_ckpt`` by the ratio of FLOPs per token."""
        if not self.train:
            return None
        then = train_flops_per_token(arch, seq=self.train_seq, lora=self.lora, grad_ckpt=False)
        now = train_flops_per_token(arch, seq=seq, lora=self.lora, grad_ckpt=grad_ckpt)
        return self.train * then / now


# --- lengths ------------------------------------------------------------------------------------------
# Lengths of long CoTs are close to log-normal. Fitted on the one set measured here: the 291 LIMO CoTs of
# R1-Distill-Qwen-32B run from 1,231 to 16,418 SmolLM2 tokens, median 3,723, and 167 of them are within
# 4,096 (docs/lab_record.md, "Real long CoTs in SmolLM2's tokens"): P(X <= 4096) = 0.574 gives sigma = ln(4096/3723) / 0.187 = 0.51, and
# a sample of 291 then reaches about median x e^(2.7 sigma) = 14,700 tokens, as the measured 16,418 does.
LENGTH_SIGMA = 0.5


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@dataclass(frozen=True)
class Lengths:
    """Log-normal token lengths with ``median`` and ``sigma`` (of the log)."""

    median: float
    sigma: float = LENGTH_SIGMA

    @property
    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2)

    def share_within(self, limit: float) -> float:
        """P(X <= limit)."""
        return _phi(math.log(limit / self.median) / self.sigma) if limit > 0 else 0.0

    def mean_within(self, limit: float) -> float:
        """E[X | X <= limit] (what ``overlong: drop`` keeps): mean x Phi((ln L - mu - s^2)/s) / Phi((ln L - mu)/s)."""
        kept = self.share_within(limit)
        if kept <= 0:
            return 0.0
        partial = self.mean * _phi((math.log(limit / self.median) - self.sigma**2) / self.sigma)
        return partial / kept

    def expected_capped(self, cap: float, runaway: float = 0.0) -> float:
        """E[min(X, cap)] for a generation cut at ``cap`` tokens, with a share ``runaway`` that never stops
        (loops to the cap): (1 - r) (E[X; X <= cap] + cap P(X > cap)) + r cap."""
        within = self.share_within(cap)
        capped = self.mean_within(cap) * within + cap * (1.0 - within)
        return (1.0 - runaway) * capped + runaway * cap
