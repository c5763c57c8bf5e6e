"""Data-parallel generation: one worker process per device, each holding the same generation backend;
every call's work shared between them and merged in input order (``ParallelGenerator``).

    gen = load_generator(model_path, parallel=ParallelConfig(gpus=2))   # parallel.generation: data
    outs = gen.generate(questions, SamplingConfig(n=4, temperature=0.8))  # what one process gives, byte for byte
    gen.close()

The workers start once (``spawn``: CUDA and vLLM refuse forked children), load the backend once each and
live as long as the generator. Each call hands every rank the whole call (the prompts' token ids, encoded
here, and the sampling settings) with its ``(rank, world)``; a rank runs its share only:

* transformers: the batches of the call's ``batch_plan`` whose index is ``rank`` modulo ``world``, each
  seeded on its own (``TransformersBackend.generate_share``, ``transformers_backend.batch_seed``);
* vLLM: the prompts whose index (over every group of a ``generate_groups`` call) is ``rank`` modulo
  ``world``; each request carries its own seed (``SamplingConfig.seed``).

So the merged result is the one-process result: the same texts, token counts and finish reasons (vLLM: as
far as its kernels give a request the same logits whatever else is in its batch). The parent shows one
progress bar, over the call's rows (a prompt's samples; a greedy prompt is one row).

Devices: on CUDA, rank r sees only GPU r (``CUDA_VISIBLE_DEVICES``, set before the worker starts, so before
it imports torch; an existing ``CUDA_VISIBLE_DEVICES`` list is indexed). Without CUDA (a CPU rehearsal) the
cores are split: each rank gets ``cores // world`` of them, as torch's thread count (``OMP_NUM_THREADS``,
``torch.set_num_threads``; ``device.cpu_threads_for`` may pick fewer for a small model) and as vLLM's CPU
build's OpenMP binding (``VLLM_CPU_OMP_THREADS_BIND``, e.g. ``"0"`` or ``"2-3"``).

A worker that dies (killed, out of memory) or raises stops the call within about a second with one
``GenerationWorkerError`` naming its rank and exit code; the other workers are closed first. A stage's
finished chunks are saved already (``rundir.run_in_chunks``), so a re-run resumes from them.

Scoring (``StageModel.score``, ``completion_nll``) is not done here: it runs in the main process
(``can_score`` False, so ``StageModel`` closes the workers before its scoring model loads).
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from . import device as device_rules
from .sampling import GenerationBackend, SamplingConfig, context_facts, encode_prompts, expand_greedy

__all__ = ["GenerationWorkerError", "ParallelGenerator", "rank_environment"]

POLL_S = 1.0  # how often the parent looks at its workers while it waits (a dead one is noticed this fast)
CLOSE_S = 60.0  # how long a closing worker may take to release its backend (a vLLM engine) before it is killed


class GenerationWorkerError(RuntimeError):
    """A data-parallel generation worker died or raised; ``rank`` and ``exitcode`` (None if it raised) say which."""

    def __init__(self, message: str, rank: int, exitcode: int | None = None):
        super().__init__(message)
        self.rank, self.exitcode = rank, exitcode


def rank_environment(rank: int, world: int, cuda: bool, cores: list[int] | None = None) -> tuple[dict, int | None]:
    """``(environment variables, torch threads)`` of worker ``rank`` of ``world``: its GPU on CUDA (threads None:
    torch's own), else its share of ``cores`` (default: the cores this process may run on)."""
    if cuda:
        visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        return {"CUDA_VISIBLE_DEVICES": visible[rank] if visible else str(rank)}, None
    cores = sorted(cores if cores is not None else device_rules.allowed_cores())
    per = device_rules.cores_per_rank(world, cores)
    mine = cores[rank * per: (rank + 1) * per] or [cores[rank % len(cores)]]  # more ranks than cores: shared
    return {"OMP_NUM_THREADS": str(len(mine)), "VLLM_CPU_OMP_THREADS_BIND": _core_list(mine)}, len(mine)


def _core_list(cores: list[int]) -> str:
    """vLLM's CPU-list syntax: ``"0"``, ``"2-3"``, ``"0,2"``."""
    if len(cores) > 1 and cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(str(c) for c in cores)


class ParallelGenerator(GenerationBackend):
    """``world`` worker processes, each with ``loader(model_path, **load_kwargs)`` (``generation.load_generator``,
    handed in: this module imports no generation module above it) on its own device;
    the ``GenerationBackend`` interface (``generate``, ``generate_groups``, ``close``, ``with``), as the module
    docstring says. ``name`` is the workers' backend (``"transformers"`` or ``"vllm"``)."""

    can_score = False  # scoring stays in the main process (StageModel)

    def __init__(self, model_path: str, world: int, load_kwargs: dict[str, Any], loader: Callable):
        import multiprocessing

        from transformers import AutoTokenizer

        from .memory import release_memory

        if world < 1:  # one worker: the GPU tier's check that a worker samples as the stage's process does
            raise ValueError(f"a data-parallel generator needs at least 1 worker, got {world}")
        self.model_path, self.world = os.fspath(model_path), int(world)
        load_kwargs = dict(load_kwargs)
        self.progress = bool(load_kwargs.pop("progress", True))
        device = str(load_kwargs.get("device") or "auto")
        cuda = device != "cpu" and not device.startswith("cpu") and device_rules.cuda_available()
        if cuda:
            _check_gpu_count(self.world)
        release_memory(before=self.model_path)  # what a trainer left on the devices, before the workers load
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)  # prompts are encoded here, once
        self._closed, self._procs, self._conns = False, [], []
        context = multiprocessing.get_context("spawn")
        try:
            for rank in range(self.world):
                env, threads = rank_environment(rank, self.world, cuda)
                parent_end, child_end = context.Pipe()
                # not a daemon: a vLLM engine starts its own engine-core process
                proc = context.Process(target=_worker, name=f"generation-rank-{rank}", daemon=False,
                                       args=(rank, self.world, child_end, loader, self.model_path, load_kwargs, threads))
                with _environment(env):  # the child's environment from its first instruction
                    proc.start()
                child_end.close()
                self._procs.append(proc)
                self._conns.append(parent_end)
            self._finalizer = weakref.finalize(self, _stop, list(self._procs), list(self._conns), 0.0)
            ready = self._gather(set(range(self.world)), "ready")
        except BaseException:
            self._abort()
            raise
        info = ready[0]
        self.name, self.device, self.dtype = info["name"], info["device"], info["dtype"]
        self.context_facts = tuple(info["context"])  # what budget.context_length reads (sampling.context_facts)
        where = ", ".join(f"rank {r}: {ready[r]['device']}" + (f" [{ready[r]['where']}]" if ready[r]["where"] else "")
                          for r in range(self.world))
        print(f"[generation] data-parallel over {self.world} worker processes ({where}); each loaded: "
              f"{info['line'].removeprefix('[generation] ')}", flush=True)

    # -- generation -------------------------------------------------------------------------------
    def _generate(self, encoded: list[list[int]], sampling: SamplingConfig, desc: str):
        return self._call([(encoded, sampling)], desc)[0]

    def generate_groups(self, groups, *, prompt_template: str = "{question}", system: str | None = None,
                        desc: str = "generating"):
        """vLLM workers: every group in one call, as ``VLLMBackend.generate_groups`` does; transformers: one
        group after another (``GenerationBackend.generate_groups``)."""
        if self.name != "vllm":
            return super().generate_groups(groups, prompt_template=prompt_template, system=system, desc=desc)
        self._check_open()
        for _, sampling in groups:
            sampling.validate()
        encoded = [encode_prompts(self.tokenizer, prompts, prompt_template, system) for prompts, _ in groups]
        rows = self._call([(e, s) for e, (_, s) in zip(encoded, groups)], desc)
        return [expand_greedy(r, s.n) if s.greedy else r for r, (_, s) in zip(rows, groups)]

    def _call(self, groups: list[tuple[list[list[int]], SamplingConfig]], desc: str) -> list[list[list]]:
        """Every rank's share of ``groups`` (``(token ids, sampling)`` each), merged: per group, per prompt in
        input order, its generations (one under greedy decoding)."""
        from tqdm.auto import tqdm

        self._check_open()
        results = [[[None] * (1 if s.greedy else s.n) for _ in encoded] for encoded, s in groups]
        for rank, conn in enumerate(self._conns):
            self._send(rank, ("generate", groups, rank, self.world))
        total = sum(len(row) for group in results for row in group)
        with tqdm(total=total, desc=desc, unit="row", disable=not self.progress) as bar:
            shares = self._gather(set(range(self.world)), "done", bar.update)
        for share in shares.values():
            for g, triples in enumerate(share):
                for i, j, generation in triples:
                    results[g][i][j] = generation
        missing = sum(x is None for group in results for row in group for x in row)
        if missing:
            raise RuntimeError(f"data-parallel generation: {missing} of {total} rows came back from no worker")
        return results

    # -- the workers ------------------------------------------------------------------------------
    def _send(self, rank: int, message) -> None:
        try:
            self._conns[rank].send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            self._died(rank)

    def _gather(self, pending: set[int], kind: str, progress=None) -> dict[int, Any]:
        """Each pending rank's ``kind`` message (``"ready"``, ``"done"``), its ``"progress"`` counts passed to
        ``progress``; a worker's error or death raises ``GenerationWorkerError`` after the others are closed."""
        from multiprocessing.connection import wait

        got: dict[int, Any] = {}
        pending = set(pending)
        while pending:
            watched = {self._conns[r]: r for r in sorted(pending)}
            sentinels = {p.sentinel: r for r, p in enumerate(self._procs)}
            ready = wait(list(watched) + list(sentinels), timeout=POLL_S)
            for obj in ready:
                rank = watched.get(obj, sentinels.get(obj))
                conn = self._conns[rank]
                try:
                    has_message = conn.poll()
                except (EOFError, OSError):
                    has_message = False
                if not has_message:
                    if obj in sentinels or not self._procs[rank].is_alive():
                        self._died(rank)
                    continue
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    self._died(rank)
                if message[0] == "progress":
                    if progress is not None:
                        progress(message[1])
                elif message[0] == "error":
                    self._abort()
                    raise GenerationWorkerError(f"data-parallel generation: worker rank {rank} of {self.world} "
                                                f"failed: {message[1]}\n--- the worker's traceback ---\n{message[2]}",
                                                rank)
                elif message[0] == kind and rank in pending:
                    got[rank] = message[1]
                    pending.discard(rank)
        return got

    def _died(self, rank: int):
        proc = self._procs[rank]
        proc.join(timeout=5)
        code = proc.exitcode
        how = f"exit code {code}"
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                how += f", killed by {signal.Signals(-code).name}"
        self._abort()
        raise GenerationWorkerError(
            f"data-parallel generation: worker rank {rank} of {self.world} ({self.model_path}) died ({how}): killed, "
            f"or out of memory? The other workers were closed; a re-run of the stage resumes from its saved chunks",
            rank, code)

    def _abort(self) -> None:
        """Stop every worker now (one failed: the others' shares are of no use)."""
        self._closed = True
        _stop(self._procs, self._conns, 0.0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _stop(self._procs, self._conns, CLOSE_S)


def _stop(procs: list, conns: list, grace: float) -> None:
    """Ask each live worker to close (``grace`` seconds to release its backend), then terminate and kill
    what is left; close the pipes."""
    for proc, conn in zip(procs, conns):
        if grace and proc.is_alive():
            with contextlib.suppress(Exception):
                conn.send(("close",))
    for proc in procs:
        if grace:
            proc.join(timeout=grace)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    for conn in conns:
        with contextlib.suppress(Exception):
            conn.close()


def _check_gpu_count(world: int) -> None:
    import torch

    from .knobs import ConfigError

    found = torch.cuda.device_count()
    if found < world:
        raise ConfigError(f"parallel.gpus is {world} but torch sees {found} GPU(s) here: set parallel.gpus "
                          f"(orion run --gpus) to at most {found}")


@contextlib.contextmanager
def _environment(env: dict):
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------------------------------
# in a worker process


def _worker(rank: int, world: int, conn, loader: Callable, model_path: str, load_kwargs: dict,
            threads: int | None) -> None:
    """Load the backend once, say ``ready``, then run each call's share until told to close (or the parent
    is gone: its end of the pipe closes)."""
    try:
        if threads:  # a CPU rehearsal: this rank's cores
            import torch

            torch.set_num_threads(threads)
        from .device import dtype_name

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # the parent prints one line for all ranks
            backend = loader(model_path, progress=False, **load_kwargs)
        line = next((x for x in printed.getvalue().splitlines() if x.startswith("[generation]")), "")
        where = os.environ.get("CUDA_VISIBLE_DEVICES", "") if str(backend.device).startswith("cuda") else \
            f"cores {os.environ.get('VLLM_CPU_OMP_THREADS_BIND', '')}"
        conn.send(("ready", {"name": backend.name, "device": str(backend.device), "where": where,
                             "dtype": backend.dtype if isinstance(backend.dtype, str) else dtype_name(backend.dtype),
                             "context": context_facts(backend), "line": line}))
    except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it naming this rank
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                return
            if message[0] != "generate":
                return
            _, groups, rank, world = message
            try:
                share = _share(backend, groups, rank, world, lambda rows: conn.send(("progress", rows)))
                conn.send(("done", share))
            except Exception as exc:  # noqa: BLE001 - handed to the parent
                conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        backend.close()


def _share(backend, groups, rank: int, world: int, report) -> list[list[tuple]]:
    """Per group, ``(prompt index, sample index, Generation)`` of this rank's share (module docstring)."""
    if backend.name != "vllm":
        return [[(i, j, g) for (i, j), g in backend.generate_share(encoded, sampling, rank=rank, world=world,
                                                                   on_batch=report)]
                for encoded, sampling in groups]
    flat = [(g, i) for g, (encoded, _) in enumerate(groups) for i in range(len(encoded))]
    mine = [flat[k] for k in range(rank, len(flat), world)]
    out: list[list[tuple]] = [[] for _ in groups]
    if not mine:
        return out
    rows = backend._run([groups[g][0][i] for g, i in mine], [backend.sampling_params(groups[g][1]) for g, _ in mine],
                        "generating")
    for (g, i), generations in zip(mine, rows):
        out[g] += [(i, j, generation) for j, generation in enumerate(generations)]
    report(sum(len(r) for r in rows))
    return out
