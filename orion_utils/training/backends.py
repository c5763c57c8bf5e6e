"""The two ways a run loads, trains and saves the model: TRL (+ PEFT LoRA, QLoRA in 4 bit) and Unsloth;
each loads the model in the precision ``device`` gives, trains it with the one trainer and saves it to a
folder the run then publishes: the LoRA adapter (``orion_utils.adapters``) or, with ``training.merge_lora`` or
full fine-tuning, the whole model. A base that is itself an adapter (EDIT's stage 1, a previous Tailored
round) is trained further as that adapter."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .. import device as device_rules
from ..adapters import is_adapter, load_trainable
from ..config import TrainingConfig
from .selection import resolve_liger
from .trainer import build_trainer, run_trainer

# Unsloth's own LoRA targets (its FastLanguageModel.get_peft_model does not take "all-linear")
_UNSLOTH_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora_targets(spec: str, unsloth: bool = False):
    spec = (spec or "all-linear").strip()
    if spec.lower() == "all-linear":
        return list(_UNSLOTH_ALL_LINEAR) if unsloth else "all-linear"
    return [s.strip() for s in spec.split(",") if s.strip()]


def train_trl(base_model, tokenizer, rows, cfg, ckpt_dir, batching, attn, device, dtype, resume_from, model_tmp, method=None,
               announce=None, split=None):
    """TRL (+ PEFT): load the model, train (resuming from ``resume_from``), save it to ``model_tmp`` (rank 0 of a
    data-parallel run: ``split``, a ``launch.RankSplit``)."""
    model = load_model(base_model, cfg, attn, device, dtype)
    # SFT only: the methods' losses run the backbone and the LM head themselves (lm_loss)
    liger = resolve_liger(device, "trl")[0] and method is None
    lora = None if is_adapter(base_model) else _lora_config(cfg)  # an adapter base is trained as it is
    trainer = build_trainer(model, tokenizer, rows, cfg, ckpt_dir, batching, device, dtype, lora, method,
                             liger=liger, split=split)
    if announce is not None:
        announce(trainer)  # the [training] line, from the trainer as built
    seconds = run_trainer(trainer, resume_from)
    if _sharded(trainer):  # ZeRO-3 / FSDP: the ranks gather the weights together, rank 0 writes them
        trainer.save_model(str(model_tmp))
        if trainer.args.should_save:
            tokenizer.save_pretrained(str(model_tmp))
    elif trainer.args.process_index == 0:
        _save(trainer.model, tokenizer, cfg, ckpt_dir, device, dtype, model_tmp)
    return trainer, seconds


def _sharded(trainer) -> bool:
    """Whether the trained weights are sharded over the ranks (DeepSpeed ZeRO-3, FSDP)."""
    return bool(getattr(trainer, "is_fsdp_enabled", False)) or bool(getattr(trainer, "is_deepspeed_enabled", False) and
                                                                   trainer.accelerator.state.deepspeed_plugin.zero_stage == 3)


def load_model(base_model: str, cfg: TrainingConfig, attn: str, device: str, dtype: str):
    """The base model to train, in the precision ``device.training_load_dtype`` gives (4-bit: QLoRA)."""
    from transformers import AutoModelForCausalLM

    load_dtype = device_rules.training_load_dtype(device, dtype, use_lora=cfg.use_lora,
                                                  load_in_4bit=cfg.load_in_4bit)
    load_kwargs: dict = {"attn_implementation": attn, "dtype": load_dtype}
    if cfg.load_in_4bit:
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, dtype),
        )
    if device == "cuda":
        load_kwargs["device_map"] = {"": torch.cuda.current_device()}
    if is_adapter(base_model):
        return load_trainable(base_model, **load_kwargs)
    return AutoModelForCausalLM.from_pretrained(base_model, **load_kwargs)


def _lora_config(cfg: TrainingConfig):
    """PEFT's ``LoraConfig`` when ``use_lora``, else None (full fine-tuning)."""
    if not cfg.use_lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=_lora_targets(cfg.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _save(trained, tokenizer, cfg: TrainingConfig, ckpt_dir: Path, device: str, dtype: str, model_tmp: Path) -> None:
    """The trained model with the tokenizer, to ``model_tmp``: a LoRA-trained model as its adapter (the base it
    names is the run's student), or merged (``training.merge_lora``) in its saved precision; a fully
    fine-tuned model in its saved precision."""
    from accelerate.utils import is_peft_model

    if is_peft_model(trained):
        if not cfg.merge_lora:
            trained.save_pretrained(str(model_tmp))
            tokenizer.save_pretrained(str(model_tmp))
            return
        if cfg.load_in_4bit:
            # merging into 4-bit weights loses precision: reload the base in 16 bit and merge the adapter there
            from ..adapters import load_causal_lm

            adapter_dir = ckpt_dir / "final_adapter"
            trained.save_pretrained(str(adapter_dir))
            trained = load_causal_lm(adapter_dir, dtype=getattr(torch, dtype))
        else:
            trained = trained.merge_and_unload()
    save_dtype = device_rules.saved_dtype(device, dtype)
    if save_dtype is not None:
        trained = trained.to(save_dtype)
    trained.save_pretrained(str(model_tmp))
    tokenizer.save_pretrained(str(model_tmp))


def train_unsloth(base_model, tokenizer, rows, cfg, ckpt_dir, batching, attn, device, dtype, resume_from, model_tmp, method=None,
                   announce=None, split=None):
    """Unsloth: FastLanguageModel (4-bit/16-bit LoRA or full fine-tuning) + the same TRL trainer; a LoRA model
    saved as its adapter (``save_pretrained``), or merged with ``save_pretrained_merged(..., save_method=
    "merged_16bit")`` under ``training.merge_lora``. An adapter base loads as base + adapter (Unsloth reads
    ``adapter_config.json``) and is trained further as it is."""
    # Unsloth patches transformers/TRL and asks to be imported before them: the stage entry points and
    # _train_rows import it first (unsloth_first); here it is already in sys.modules.
    import unsloth  # noqa: F401
    from unsloth import FastLanguageModel

    compute = getattr(torch, dtype)
    model, u_tokenizer = FastLanguageModel.from_pretrained(
        model_name=base_model,
        max_seq_length=cfg.max_seq_len,
        dtype=compute,
        load_in_4bit=cfg.load_in_4bit,
        full_finetuning=not cfg.use_lora,
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
        random_state=cfg.seed,
    )
    if cfg.use_lora and not is_adapter(base_model):
        model = FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora_r,
            target_modules=_lora_targets(cfg.lora_target_modules, unsloth=True),
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            bias="none",
            use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
            random_state=cfg.seed,
        )
    # token ids come from `tokenizer` (encode_for_training); Unsloth's tokenizer only pads/collates.
    # Gradient checkpointing is Unsloth's own (set above), not the Trainer's on top of it.
    trainer = build_trainer(
        model, u_tokenizer, rows, dataclasses.replace(cfg, gradient_checkpointing=False), ckpt_dir, batching, device, dtype,
        method=method, split=split,
    )
    if announce is not None:
        announce(trainer)  # the [training] line, from the trainer as built
    seconds = run_trainer(trainer, resume_from)
    if cfg.use_lora and cfg.merge_lora:
        model.save_pretrained_merged(str(model_tmp), tokenizer, save_method="merged_16bit")
    else:  # the adapter alone under LoRA, else the whole model
        model.save_pretrained(str(model_tmp))
        tokenizer.save_pretrained(str(model_tmp))
    return trainer, seconds
