"""The run directory: every artifact of a run, named once, and a manifest that makes stages resumable.

``outputs/<run>/`` holds the resolved config, ``manifest.json`` (per stage: parameter hash,
inputs with content hashes, outputs, wall time, package versions, backend), ``data/*.jsonl``,
``models/``, ``eval/``, ``figures/``, executed notebooks, ``report.md`` and ``metrics.json``.
Code finds an artifact through :class:`RunDir` (and the method-folder layouts, ``layouts``), never by
spelling its file name: the table in :class:`RunDir`'s docstring is the one list of them.

Resuming: the run directory decides. A stage (``RunDir.run_stage``) is skipped when its outputs
exist and the fingerprint of its parameters and the content of its inputs matches the manifest.
Work in flight goes to append-only ``*.partial.jsonl`` files or a stage's own folder (declared as
the stage's ``scratch``), kept only for a re-run with the same fingerprint, so a crash loses at
most the record being written and a changed run never resumes from work done under other
settings; final outputs are written atomically at the end.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import time
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from .jsonl import write_json

# the method folders' layouts, named here with every other artifact (RunDir.trained builds them)
from .layouts import EditDir, TailoredDir, TrainedDir, is_saved_model
from .methods import method as registered

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


_DIGESTS: dict = {}  # (path, size, mtime) → the file's content hash: a model is read once per process


def _content_digest(f: Path) -> str:
    st = f.stat()
    key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def file_digest(path: Path) -> str:
    """Content hash of a file, or of a directory's files (a saved model: names and contents)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(_content_digest(f).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` across processes (POSIX ``flock``; elsewhere none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: stages of one run are not run concurrently there
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SavedModel:
    """What :func:`read_or_make` finds at a model folder: ``make()`` saves a model there (whole, as
    ``training.train_sft`` publishes one), and the step is done once :func:`is_saved_model` says so."""


def read_or_make(path: PathLike, cls, make: Callable[[], Any], usable: Optional[Callable[[Any], bool]] = None) -> Any:
    """An inner step's cache inside a stage's scratch, the one resume rule below ``run_stage``: what an
    earlier attempt of the same stage finished at ``path`` is read back, else ``make()`` makes it and
    it is stored there. ``cls`` and ``path`` say what a step leaves:

    * records of ``cls`` in a ``.jsonl`` file: ``make()`` returns the list (EDIT's pairs, an exam);
    * one record of ``cls`` in a ``.json`` file: ``make()`` returns it (a Tailored Learning round);
    * :class:`SavedModel`, a model folder: ``make()`` saves the model there (EDIT's stages); the
      folder is returned.

    Records are written whole (atomically) once made, so a crash loses no finished step and leaves
    no half-made one to read back. ``usable(value)`` False: what was read back can no longer serve
    (a round's result naming a model that is gone), so the step is made again.

    Only for folders a stage declares as ``scratch``: ``run_stage`` removes them when the stage's
    fingerprint changed, so what is read back was made under the same parameters and inputs.
    """
    from .jsonl import from_dict, read_jsonl, to_dict, write_jsonl

    path = Path(path)
    if cls is SavedModel:
        if not is_saved_model(path):
            make()
        return path
    one = path.suffix == ".json"
    if path.exists():
        done = from_dict(cls, json.loads(path.read_text(encoding="utf-8")), str(path)) if one else read_jsonl(path, cls)
        if usable is None or usable(done):
            return done
    made = make()
    if one:
        write_json(path, to_dict(made))
    else:
        write_jsonl(path, made)
    return made


# --- long generation in chunks, saved as it goes ---------------------------------------------------
# Stages that sample from (or score with) a model for hours (exposure, reflection, Tailored Learning's
# exams, evaluation) cut their questions into chunks of
# ``chunk_questions``, in the order of the whole question list, and append each finished chunk's
# records to a ``*.partial.jsonl`` file (``jsonl.JsonlAppender``), the stage's ``scratch``: a crash or a
# Colab disconnect loses at most one chunk, and a retry with the same parameters and inputs reads back
# the complete chunks and generates only the others. Results with and without an interruption are the
# same: the chunks' boundaries come from the whole question list, not from what is left to do, and each
# chunk is sampled with its own seed, made from the stage's seed and the chunk's question ids
# (``chunk_seed``), never from a random stream that runs on across chunks.

def chunk_seed(seed: int, *parts: Any) -> int:
    """The sampling seed of one chunk: a hash of the stage's ``seed`` and what names the chunk (the
    stage, a benchmark, the chunk's question ids), below 2**31 (vLLM adds the sample index to it)."""
    blob = json.dumps([seed, *parts], sort_keys=True, default=str, ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(blob.encode("utf-8")).digest()[:4], "big") & 0x7FFFFFFF


def _split_chunks(items: Sequence, size: int) -> list[list]:
    """``items`` in consecutive chunks of ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"a chunk must hold at least one question, got chunk_questions={size}")
    return [list(items[i: i + size]) for i in range(0, len(items), size)]


def _complete_chunks(chunks: list[list], partial: Path, cls, per_item: int,
                     item_id: Callable, record_id: Callable) -> dict[int, list]:
    """The chunks complete in ``partial`` (every item with its ``per_item`` records), by index. The
    records of an unfinished chunk (the one a crash cut off) are dropped from the file."""
    from .jsonl import read_jsonl, write_jsonl

    if not partial.exists():
        return {}
    chunk_of = {item_id(item): c for c, chunk in enumerate(chunks) for item in chunk}
    saved: dict[int, list] = {}
    read = read_jsonl(partial, cls, tolerate_torn_tail=True)
    for record in read:
        c = chunk_of.get(record_id(record))
        if c is not None:
            saved.setdefault(c, []).append(record)
    done = {}
    for c, records in saved.items():
        counts: dict = {}
        for r in records:
            counts[record_id(r)] = counts.get(record_id(r), 0) + 1
        if len(records) == per_item * len(chunks[c]) and all(counts.get(item_id(i)) == per_item for i in chunks[c]):
            done[c] = records
    kept = [r for c in sorted(done) for r in done[c]]
    if len(kept) != len(read):
        write_jsonl(partial, kept)  # atomically: the file holds whole chunks only (a torn last line the appender drops)
    return done


def run_in_chunks(
    items: Sequence,
    chunk_questions: int,
    make: Callable[[int, list], list],
    *,
    partial: Optional[Path],
    cls: type,
    per_item: int,
    item_id: Callable = lambda item: item.id,
    record_id: Callable = lambda record: record.problem_id,
    desc: str = "chunks",
) -> list:
    """Every item's records, chunk by chunk: ``make(index, chunk)`` returns the records of one chunk
    (``per_item`` per item), appended to ``partial`` once the chunk is finished; chunks complete in
    ``partial`` from an earlier attempt are read back, not made again. Records come back in chunk
    order, whether or not the run was interrupted. ``partial`` None: nothing is saved."""
    from tqdm.auto import tqdm

    from .jsonl import JsonlAppender

    chunks = _split_chunks(items, chunk_questions)
    done = _complete_chunks(chunks, Path(partial), cls, per_item, item_id, record_id) if partial else {}
    todo = [c for c in range(len(chunks)) if c not in done]
    if done:
        print(f"[{desc}] resumed: {len(done)} of {len(chunks)} chunks read back from {Path(partial).name}", flush=True)
    if todo:
        out = JsonlAppender(partial) if partial else None
        try:
            for c in tqdm(todo, desc=desc, unit="chunk"):
                records = make(c, chunks[c])
                if len(records) != per_item * len(chunks[c]):
                    raise RuntimeError(f"[{desc}] chunk {c} made {len(records)} records, expected "
                                       f"{per_item} per question x {len(chunks[c])} questions")
                if out is not None:
                    for record in records:
                        out.append(record)
                done[c] = records
        finally:
            if out is not None:
                out.close()
    return [r for c in range(len(chunks)) for r in done[c]]


class RunDir:
    """Paths and the manifest of one run.

    Every artifact, where it lives and which stage writes it:

    =============================  ===================================  ============================
    name                           file (under the run directory)       written by
    =============================  ===================================  ============================
    ``config_file``                ``config.json``                      the runner (``write_config``)
    ``manifest_path``              ``manifest.json``                    every stage (``run_stage``)
    ``student_info``               ``data/student.json``                00 prepare (base student)
    ``toy_student``                ``models/base/``                     00 prepare (toy profile)
    ``toy_student_init``           ``models/base_init/``                00 prepare (before pre-training)
    ``train_problems``             ``data/train_problems.jsonl``        00 prepare
    ``benchmark(name)``            ``data/benchmarks/<name>.jsonl``     00 prepare
    ``teacher_traces``             ``data/teacher_traces.jsonl``        01 collection (every CoT)
    ``teacher_sft_set``            ``data/training_set_sft.jsonl``      01 collection (one verified
                                                                        CoT per question)
    ``question_set``               ``data/question_set.json``           01 collection (the questions
                                                                        every method trains on)
    ``student_attempts``           ``data/student_attempts.jsonl``      02 exposure
    ``student_attempts_partial``   ``data/student_attempts.partial.jsonl``  02 exposure (resume scratch)
    ``error_attempts``             ``data/error_attempts.jsonl``        02 exposure (unique wrong)
    ``pass_rates``                 ``data/pass_rates.json``             02 exposure
    ``refinements``                ``data/refinements.jsonl``           03 reflection
    ``refinements_partial(r, s)``  ``data/refinements_<r>_<s>.partial.jsonl``  03 reflection (resume
                                                                        scratch: reflector r's step s)
    ``reflector_comparison``       ``data/refinements_compare.jsonl``   03 reflection (``compare``:
                                                                        never trained on)
    ``orion_sft_set``              ``data/training_set_orion.jsonl``    03 reflection
    ``training_set(m)``            ``data/training_set_<m>.jsonl``      01/03 (sft, orion) or 04
                                                                        (a ``builds_set`` method);
                                                                        05/06 write a copy for edit,
                                                                        tailored
    ``training_files(m)``          the files method ``m`` trained on    (see ``training_files``)
    ``model(m)``                   ``models/<m>/``                      04 sft, 05 edit, 06 tailored
    ``trained(m)``                 ``models/<m>/`` in its layout        (``methods.Method.folder``)
    ``loss_history(m)``            ``models/<m>/loss_history.json``     04/05/06
    ``phase_loss_histories(m)``    ``models/<m>/<phase>/loss_hist...``  05 edit, 06 tailored
    ``primed_model``               ``models/exposure_primed/``          02 exposure (source primed)
    ``teacher_cache``              ``cache/teacher/`` (of ``top()``)    01/05/06/08 (teacher replies,
                                                                        one per run: seeds, students)
    ``eval_file(m, b)``            ``eval/<m>/<b>.jsonl``               07 evaluation
    ``eval_partial(m, b)``         ``eval/<m>/<b>.partial.jsonl``       07 evaluation (resume scratch)
    ``eval_summary(m)``            ``eval/<m>/summary.json``            07 evaluation
    ``metrics``                    ``metrics.json``                     07 evaluation
    ``analysis_file``              ``analysis.json``                    08 analysis
    ``report``                     ``report.md``                        08 analysis / report
    ``figure(name)``               ``figures/<name>.png``               notebooks, analysis, report
    ``seed_dir(k)``                ``seeds/seed_<k>/``                  the runner (``seed_dirs()``:
                                                                        all there are)
    ``student_dir(name)``          ``students/<name>/``                 the runner (a profile's
                                                                        ``students``: one run each)
    =============================  ===================================  ============================

    ``trained(m)`` gives a method folder in the layout the method registry names for it
    (``orion_utils.layouts``: ``TrainedDir``, EDIT's ``EditDir``, Tailored Learning's ``TailoredDir``;
    ``edit()`` and ``tailored()`` are those two, typed); no path here depends on a method's name. This
    table is the one place the docs list artifacts (the README and ARCHITECTURE.md link here);
    :func:`artifact_paths` reads every path above off the class, and ``tests/test_docs_facts.py`` checks
    this table and every run-directory path the docs spell against it.

    Resuming, one rule: the run directory decides. ``run_stage`` skips a stage when its outputs
    exist and the fingerprint of its parameters and the content of its inputs matches the
    manifest. Work a stage keeps in flight is its ``scratch``: exposure's partial attempts, reflection's
    partial candidates and picks, and evaluation's partial samples (finished chunks, :func:`run_in_chunks`), and
    EDIT's and Tailored Learning's method folders, whose inner steps read finished steps back
    through :func:`read_or_make` (their records, a round's result, a stage's model). ``run_stage``
    keeps scratch only for a re-run with the same fingerprint, so nothing made under other
    settings is read back. One guard sits below this rule: the trainer's checkpoints
    (``TrainedDir.checkpoints``) carry their own fingerprint of the training rows and settings,
    because ``training.train_sft`` is also called outside a stage.
    """

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

    def figure(self, name: str) -> Path:
        """``figures/<name>.png`` (the folder is made)."""
        return self.figures() / f"{name}.png"

    def relative(self, path: PathLike) -> str:
        """``path`` relative to the run directory, with ``/`` (as the report links it)."""
        return Path(path).relative_to(self.root).as_posix()

    # --- artifacts (see the table above) -----------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path("config.json")

    def config(self) -> Optional[dict]:
        """The resolved profile the runner wrote, or None (a run made outside the runner)."""
        if not self.config_file.is_file():
            return None
        return json.loads(self.config_file.read_text(encoding="utf-8"))

    @property
    def student_info(self) -> Path:
        return self.data("student.json")

    @property
    def train_problems(self) -> Path:
        return self.data("train_problems.jsonl")

    @property
    def benchmarks_dir(self) -> Path:
        return self.path("data", "benchmarks")

    def benchmark(self, name: str) -> Path:
        return self.benchmarks_dir / f"{name}.jsonl"

    def benchmark_files(self) -> list[Path]:
        """The benchmark files stage 00 wrote, in name order (the name is the file's stem)."""
        return sorted(self.benchmarks_dir.glob("*.jsonl"))

    @property
    def teacher_traces(self) -> Path:
        return self.data("teacher_traces.jsonl")

    @property
    def teacher_sft_set(self) -> Path:
        return self.training_set("sft")

    @property
    def question_set(self) -> Path:
        """The questions every CoT-trained method trains on, and why the others are left out (stage 01)."""
        return self.data("question_set.json")

    @property
    def student_attempts(self) -> Path:
        return self.data("student_attempts.jsonl")

    @property
    def student_attempts_partial(self) -> Path:
        return self.data("student_attempts.partial.jsonl")

    @property
    def error_attempts(self) -> Path:
        return self.data("error_attempts.jsonl")

    @property
    def pass_rates(self) -> Path:
        return self.data("pass_rates.json")

    @property
    def refinements(self) -> Path:
        return self.data("refinements.jsonl")

    def refinements_partial(self, reflector: str, step: str) -> Path:
        """Stage 03's finished chunks of ``reflector``'s ``step`` (``reflection.CHUNK_STEPS``) while it runs."""
        return self.data(f"refinements_{reflector}_{step}.partial.jsonl")

    @property
    def reflector_comparison(self) -> Path:
        return self.data("refinements_compare.jsonl")

    @property
    def orion_sft_set(self) -> Path:
        return self.training_set("orion")

    def training_set(self, method: str) -> Path:
        """``data/training_set_<method>.jsonl``: the set a stage-04 method trains on, and a copy of
        EDIT's stage-1 set and Tailored Learning's round sets that their stages write."""
        return self.data(f"training_set_{method}.jsonl")

    def training_files(self, method: str) -> list[Path]:
        """The files ``method`` was trained on, where its training wrote them: a method fine-tuned on a
        set of CoTs (its registry entry's ``cots_from``) its ``training_set``, plus what its folder's
        layout keeps (EDIT's stage-1 examples, Tailored Learning's rounds); ``base`` none. Only files
        that exist are listed."""
        entry = registered(method)
        files = [self.training_set(method)] if entry.cots_from else []
        files += self.trained(method).training_files() if entry.trained_in else []
        return [p for p in files if p.is_file()]

    def trained(self, method: str) -> TrainedDir:
        """``models/<method>/`` in the layout its registry entry names (``methods.Method.folder``)."""
        return registered(method).folder(self.model(method))

    def edit(self) -> EditDir:
        return self.trained("edit")

    def tailored(self) -> TailoredDir:
        return self.trained("tailored")

    def loss_history(self, method: str) -> Path:
        """A method's loss curve (one trained in phases: the phases joined, steps running on)."""
        return self.trained(method).loss_history

    def phase_loss_histories(self, method: str) -> list[Path]:
        """The per-phase loss curves the joined one is made of (``TrainedDir.phases``: EDIT's
        ``stage1``/``stage2``, Tailored Learning's rounds in round order); none for one-phase methods.
        Only files that exist."""
        return [p.loss_history for p in self.trained(method).phases() if p.loss_history.is_file()]

    @property
    def toy_student(self) -> Path:
        """The toy profile's base student, built and pre-trained inside the run."""
        return self.model("base")

    @property
    def toy_student_init(self) -> Path:
        """The toy student before its pre-training (removed once pre-trained)."""
        return self.model("base_init")

    @property
    def primed_model(self) -> Path:
        return self.model("exposure_primed")

    @property
    def teacher_cache(self) -> Path:
        """The teacher's replies, once per run: in the top run directory, whose seeds and students share them."""
        return self.top().path("cache", "teacher")

    def top(self) -> "RunDir":
        """The run this one belongs to: a seed's run (``seed_dir``) and a student's (``student_dir``) are
        inside their run's directory; any other run directory is its own top."""
        root = self.root
        while (root.parent.name == "seeds" and re.fullmatch(r"seed_\d+", root.name)) or root.parent.name == "students":
            root = root.parent.parent
        return self if root == self.root else RunDir(root)

    def eval_method_dir(self, method: str) -> Path:
        return self.eval_dir() / method

    def eval_file(self, method: str, benchmark: str) -> Path:
        return self.eval_method_dir(method) / f"{benchmark}.jsonl"

    def eval_files(self, method: str) -> list[Path]:
        """A method's finished evaluation files (no ``*.partial.jsonl``), in benchmark order."""
        d = self.eval_method_dir(method)
        return sorted(p for p in d.glob("*.jsonl") if ".partial." not in p.name) if d.is_dir() else []

    def eval_partial(self, method: str, benchmark: str) -> Path:
        """The finished chunks of ``eval_file(method, benchmark)`` while it is made (:func:`run_in_chunks`)."""
        return self.eval_method_dir(method) / f"{benchmark}.partial.jsonl"

    def eval_summary(self, method: str) -> Path:
        return self.eval_method_dir(method) / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.path("metrics.json")

    @property
    def analysis_file(self) -> Path:
        return self.path("analysis.json")

    @property
    def report(self) -> Path:
        return self.path("report.md")

    def seed_dirs(self) -> list[Path]:
        """The other seeds' run directories on disk (``seeds/seed_<k>``)."""
        return sorted(self.path("seeds").glob("seed_*"))

    def runs_within(self) -> list["RunDir"]:
        """This run and every run inside it: its seeds' (``seed_dir``), its students' (``student_dir``) and theirs."""
        students = sorted(p for p in self.path("students").glob("*") if p.is_dir())
        return [self, *map(RunDir, self.seed_dirs()), *(r for s in students for r in RunDir(s).runs_within())]

    def seed_dir(self, seed: int) -> Path:
        """Where the runner puts seed ``seed``'s run when it is not the run's first seed."""
        return self.path("seeds", f"seed_{seed}")

    def student_dir(self, name: str) -> Path:
        """Where the runner puts the run of student ``name`` of a profile with several ``students``."""
        return self.path("students", name)

    def write_config(self, resolved: dict) -> Path:
        """Record the resolved profile the run was made with (``config.json``)."""
        return write_json(self.config_file, resolved)

    def student_model(self) -> str:
        """The base student: a path inside the run (toy) or a hub id / local path (real profiles)."""
        info_path = self.student_info
        self.require(info_path, stage_hint="00_setup_and_data")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        model = info["model"]
        return str(self.root / model) if info.get("in_run_dir") else model

    def student_inputs(self) -> list[Path]:
        """The base student as a stage input: ``data/student.json`` (it names the student: a hub or packaged
        student is its reference string) and, for a student inside the run (the toy), its model folder.
        Before stage 00 it is the missing file alone, for ``run_stage`` to name with the stage's other
        missing inputs."""
        if not self.student_info.exists():
            return [self.student_info]
        info = json.loads(self.student_info.read_text(encoding="utf-8"))
        return [self.student_info] + ([self.root / info["model"]] if info.get("in_run_dir") else [])

    def method_model(self, method: str) -> str:
        """Where a method's trained model lives (a method no notebook trains, ``base``, is the student)."""
        return str(self.trained(method).model) if registered(method).trained_in else self.student_model()

    @property
    def manifest_path(self) -> Path:
        return self.path("manifest.json")

    # --- manifest ----------------------------------------------------------------------
    def manifest(self) -> dict:
        if self.manifest_path.exists():
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        return {"stages": {}}

    def _update_manifest(self, name: str, entry: dict) -> None:
        # Stages of one run may finish at once in separate processes (`orion run --jobs 2`): the
        # read-modify-write is done under an exclusive lock, so no stage's entry is lost.
        with _locked(self.path("manifest.lock")):
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

        A pipeline stage's ``params`` and the models among its ``inputs`` come from its declaration
        (``stage_specs.fingerprint``), never written by hand.
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
        self._clear_stale_scratch(name, attempt, scratch, force)
        self._update_manifest(name, {"status": "running", **attempt})
        started = time.time()
        extra = self._work_or_clean_up(name, attempt, outputs, work)
        entry = {"status": "done", "param_hash": attempt["param_hash"],
                 "params": asdict(params) if is_dataclass(params) else params, "inputs": attempt["inputs"],
                 "outputs": [str(o) for o in outputs], **_provenance(started), **extra}
        self._update_manifest(name, entry)
        print(f"[{name}] done in {entry['wall_seconds']:.1f}s")
        return entry

    def _clear_stale_scratch(self, name: str, attempt: dict, scratch: Iterable[PathLike],
                             force: bool) -> None:
        """Remove the stage's ``scratch`` unless the last attempt had the same params and inputs."""
        previous = self.stage_info(name) or {}
        if force or any(previous.get(k) != v for k, v in attempt.items()):
            for path in map(Path, scratch):
                if path.exists():
                    shutil.rmtree(path) if path.is_dir() else path.unlink()

    def _work_or_clean_up(self, name: str, attempt: dict, outputs: list[Path],
                          work: Callable[[], Optional[dict]]) -> dict:
        """``work()``'s facts; on failure the outputs it created are removed and the stage marked failed."""
        existed = {o for o in outputs if o.exists()}
        try:
            extra = work() or {}
        except BaseException as exc:
            for o in outputs:
                if o.exists() and o not in existed:
                    shutil.rmtree(o) if o.is_dir() else o.unlink()
            error = f"{type(exc).__name__}: {exc}"[:500]
            self._update_manifest(name, {"status": "failed", "error": error, **attempt})
            raise
        missing = [str(o) for o in outputs if not o.exists()]
        if missing:
            raise RuntimeError(f"[{name}] finished without writing {missing}")
        return extra


def _provenance(started: float) -> dict:
    """What a finished stage's manifest entry records about when and where it ran."""
    return {"wall_seconds": round(time.time() - started, 2),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "package_versions": package_versions(),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count()}}


def artifact_paths() -> dict[str, str]:
    """Every path :class:`RunDir` names, relative to the run directory, keyed by the expression that names it
    (``train_problems``, ``eval_file(<method>, <benchmark>)``, ``edit().stage1.model``); ``<arg>`` stands for
    an argument. Read off the class itself, so it is the list the docs' paths are checked against
    (``tests/test_docs_facts.py``) and a notebook can show (``display.table``)."""
    import inspect
    import tempfile

    found: dict[str, str] = {}

    def walk(obj: Any, prefix: str, root: Path) -> None:
        for name, member in inspect.getmembers(type(obj)):
            params = list(inspect.signature(member).parameters.values())[1:] if inspect.isfunction(member) else []
            generic = isinstance(obj, RunDir) and name in ("path", "data", "model")  # any path at all
            if name.startswith("_") or generic or not (
                    isinstance(member, property) or (inspect.isfunction(member) and all(
                        p.kind is p.POSITIONAL_OR_KEYWORD and p.annotation in ("str", "int") for p in params))):
                continue
            args = [f"<{p.name}>" for p in params]
            expr = prefix + name + (f"({', '.join(args)})" if inspect.isfunction(member) else "")
            try:
                value = getattr(obj, name)(*args) if inspect.isfunction(member) else getattr(obj, name)
            except OSError:  # needs a file of a real run (student_model: StageInputMissing)
                continue
            if isinstance(value, TrainedDir):
                found[expr] = value.root.relative_to(root).as_posix()
                walk(value, expr + ".", root)
            elif isinstance(value, Path):
                found[expr] = value.relative_to(root).as_posix()

    from unittest import mock

    from .methods import METHODS, Method

    # "<method>" stands for any method: registered for the walk as a one-phase trained method
    placeholder = Method("<method>", "any one-phase trained method", trained_in="04_sft")
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(METHODS, {"<method>": placeholder}):
        walk(RunDir(tmp), "", Path(tmp))
    return found
