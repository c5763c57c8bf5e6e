"""The run directory: every artifact of a run, and a manifest that makes stages resumable.

``outputs/<run>/`` holds the resolved config, ``manifest.json`` (per stage: parameter hash,
inputs with content hashes, outputs, wall time, package versions, backend), ``data/*.jsonl``,
``models/``, ``eval/``, ``figures/``, executed notebooks, ``report.md`` and ``metrics.json``.

A stage is skipped when its parameters and the content of its inputs are unchanged and its
outputs exist. Work in flight goes to append-only ``*.partial.jsonl`` files, so a crash loses at
most the record being written; final outputs are written atomically at the end.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

from .jsonl import write_json

PathLike = Union[str, Path]

TRACKED_PACKAGES = (
    "torch", "transformers", "trl", "peft", "accelerate", "datasets", "math-verify",
    "openai", "papermill", "unsloth", "vllm", "orion-utils",
)


class StageInputMissing(FileNotFoundError):
    """A stage was run before the stage that writes its inputs."""


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def stable_hash(obj: Any) -> str:
    if is_dataclass(obj):
        obj = asdict(obj)
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """Content hash of a file, or of a directory's files (a saved model)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


class RunDir:
    """Paths and the manifest of one run."""

    def __init__(self, root: PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # --- well-known places -------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def data(self, name: str) -> Path:
        return self.path("data", name)

    def model(self, method: str) -> Path:
        return self.path("models", method)

    def eval_dir(self) -> Path:
        return self.path("eval")

    def figures(self) -> Path:
        d = self.path("figures")
        d.mkdir(parents=True, exist_ok=True)
        return d

    def student_model(self) -> str:
        """The base student: a path inside the run (toy) or a hub id / local path (real profiles)."""
        info_path = self.data("student.json")
        self.require(info_path, stage_hint="00_setup_and_data")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        model = info["model"]
        return str(self.root / model) if info.get("in_run_dir") else model

    def method_model(self, method: str) -> str:
        """Where a method's trained model lives (``base`` is the untrained student)."""
        if method == "base":
            return self.student_model()
        return str(self.model(method) / "model")

    @property
    def manifest_path(self) -> Path:
        return self.path("manifest.json")

    # --- manifest ----------------------------------------------------------------------
    def manifest(self) -> dict:
        if self.manifest_path.exists():
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        return {"stages": {}}

    def _update_manifest(self, name: str, entry: dict) -> None:
        manifest = self.manifest()
        manifest.setdefault("stages", {})[name] = entry
        manifest["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(self.manifest_path, manifest)

    def stage_info(self, name: str) -> Optional[dict]:
        return self.manifest().get("stages", {}).get(name)

    def require(self, *paths: PathLike, stage_hint: str = "") -> None:
        missing = [str(p) for p in paths if not Path(p).exists()]
        if missing:
            hint = f" Run {stage_hint} first." if stage_hint else ""
            raise StageInputMissing(f"missing input(s): {', '.join(missing)}.{hint}")

    def is_up_to_date(self, name: str, params: Any, inputs: Iterable[PathLike], outputs: Iterable[PathLike]) -> bool:
        info = self.stage_info(name)
        if not info or info.get("status") != "done":
            return False
        if info.get("param_hash") != stable_hash(params):
            return False
        if any(not Path(o).exists() for o in outputs):
            return False
        return info.get("inputs") == self._digests(inputs)

    def _digests(self, inputs: Iterable[PathLike]) -> dict:
        """Input hashes keyed by path relative to the run, so a moved run directory stays valid."""
        out = {}
        for i in inputs:
            i = Path(i)
            try:
                key = str(i.resolve().relative_to(self.root.resolve()))
            except ValueError:
                key = str(i)
            out[key] = file_digest(i)
        return out

    def run_stage(
        self,
        name: str,
        params: Any,
        inputs: Iterable[PathLike],
        outputs: Iterable[PathLike],
        work: Callable[[], Optional[dict]],
        *,
        force: bool = False,
        stage_hint: str = "",
        scratch: Iterable[PathLike] = (),
    ) -> dict:
        """Run ``work`` unless the stage is up to date; record it in the manifest either way.

        ``work`` writes the outputs and returns extra facts for the manifest (e.g. the backend).
        On failure the stage is marked failed and outputs it had written are removed, so nothing
        half-finished looks finished. ``scratch``: paths where ``work`` keeps progress to resume
        from (``*.partial.jsonl``, finished rounds); they are kept for the next attempt with the
        same parameters and inputs, and removed when those changed or ``force`` is set, so a
        changed run never resumes from work done under other settings.
        """
        inputs, outputs = [Path(p) for p in inputs], [Path(p) for p in outputs]
        self.require(*inputs, stage_hint=stage_hint)
        if not force and self.is_up_to_date(name, params, inputs, outputs):
            print(f"[{name}] up to date: skipped (parameters and inputs unchanged; force=True reruns it)")
            return self.stage_info(name)
        attempt = {"param_hash": stable_hash(params), "inputs": self._digests(inputs)}
        previous = self.stage_info(name) or {}
        if force or any(previous.get(k) != v for k, v in attempt.items()):
            for path in map(Path, scratch):
                if path.exists():
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        self._update_manifest(name, {"status": "running", **attempt})
        existed = {o for o in outputs if o.exists()}
        started = time.time()
        try:
            extra = work() or {}
        except BaseException as exc:
            for o in outputs:
                if o.exists() and o not in existed:
                    shutil.rmtree(o) if o.is_dir() else o.unlink()
            self._update_manifest(name, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500], **attempt})
            raise
        missing = [str(o) for o in outputs if not o.exists()]
        if missing:
            raise RuntimeError(f"[{name}] finished without writing {missing}")
        entry = {
            "status": "done",
            "param_hash": attempt["param_hash"],
            "params": asdict(params) if is_dataclass(params) else params,
            "inputs": attempt["inputs"],
            "outputs": [str(o) for o in outputs],
            "wall_seconds": round(time.time() - started, 2),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "package_versions": package_versions(),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
            **extra,
        }
        self._update_manifest(name, entry)
        print(f"[{name}] done in {entry['wall_seconds']:.1f}s")
        return entry
