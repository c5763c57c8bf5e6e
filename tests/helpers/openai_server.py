"""A local OpenAI-compatible chat-completions server for tests, benchmarks and manual trials.

``FakeOpenAIServer`` answers ``POST /v1/chat/completions`` (non-streaming) like a reasoning model
(DeepSeek's ``deepseek-reasoner``: thinking in ``reasoning_content``; or vLLM's ``reasoning``
field; or ``<think>`` tags in the content), solves simple arithmetic questions (or calls
``answer_fn``), reports token usage, and injects faults deterministically by seed:

    429 (with Retry-After), 500, 502 (HTML body), stall (no reply at all), drip (a reply trickled
    a byte at a time, so only a total timeout catches it), truncated (cut-off JSON, valid HTTP),
    disconnect (connection closed mid-body), empty (empty content), no_choices, garbage (HTML
    with status 200).

Whether an attempt is faulted depends only on (seed, request body, attempt number for that body),
never on timing or concurrency. It runs in a background thread on 127.0.0.1 with a free port:

    with FakeOpenAIServer(latency_s=0.2, fault_rate=0.2) as server:
        teacher = APITeacher(server.base_url, "fake-reasoner", api_key_env=None, ...)

or from a shell (it needs only the standard library), from the repository root:
``python tests/helpers/openai_server.py --port 8000 --latency 0.2``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import operator
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Sequence, Union

DEFAULT_FAULTS = ("429", "500", "stall", "truncated", "empty")
ALL_FAULTS = (
    "429",
    "500",
    "502",
    "stall",
    "drip",
    "truncated",
    "disconnect",
    "empty",
    "no_choices",
    "garbage",
)

AnswerFn = Callable[[list], Union[str, tuple]]
FaultFn = Callable[[dict, int], Optional[str]]


# ---------------------------------------------------------------------------------------------
# the default "model": solves the arithmetic expression in the question

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_EXPR_RE = re.compile(r"[-+*/().\d\s]*\d[-+*/().\d\s]*")


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    raise ValueError("not arithmetic")


def _question_text(messages: list) -> str:
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    text = users[-1] if users and isinstance(users[-1], str) else ""
    if "Question:" in text:  # the teacher-feedback prompts put the question after its last "Question:"
        text = text.rsplit("Question:", 1)[1].strip().split("\n\n", 1)[0]
    return text


def solve_arithmetic(messages: list) -> tuple[str, Optional[str]]:
    """(expression, answer) for the longest arithmetic expression in the question (answer None if none)."""
    text = _question_text(messages)
    candidates = sorted((m.group().strip() for m in _EXPR_RE.finditer(text)), key=len, reverse=True)
    for expr in candidates:
        expr = expr.strip(" .")
        try:
            value = _eval(ast.parse(expr, mode="eval"))
        except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        answer = str(round(value, 6)) if isinstance(value, float) else str(value)
        return expr, answer
    return "", None


def _default_answer(messages: list, wrong: bool, rng: random.Random) -> tuple[str, str]:
    expr, answer = solve_arithmetic(messages)
    if answer is None:
        return "I could not find a calculation in the question.", "I cannot determine the answer. \\boxed{0}"
    if wrong:
        try:
            answer = str(int(float(answer)) + rng.randint(1, 9))
        except ValueError:
            answer = answer + "1"
    thinking = (
        f"The question asks for {expr}. Let me evaluate it step by step, respecting the order of "
        f"operations. ... Let me double-check that. Yes, {expr} = {answer}."
    )
    solution = f"We evaluate {expr} = {answer}.\n\nThe final answer is \\boxed{{{answer}}}."
    return thinking, solution


def _n_tokens(text: str) -> int:
    return max(1, len(text) // 4)


# ---------------------------------------------------------------------------------------------
# server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # 32+ concurrent clients must not be refused by a short listen backlog

    owner: "FakeOpenAIServer"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body in two writes meet delayed ACKs: +40 ms a reply
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- helpers -------------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Optional[dict] = None,
        close: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _error(self, status: int, message: str, type_: str, headers: Optional[dict] = None) -> None:
        body = json.dumps({"error": {"message": message, "type": type_, "code": str(status)}}).encode()
        self._send(status, body, headers=headers)

    # -- routes --------------------------------------------------------------------------------

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            owner = self.server.owner
            body = {"object": "list", "data": [{"id": owner.model, "object": "model", "owned_by": "fake"}]}
            self._send(200, json.dumps(body).encode())
        else:
            self._error(404, f"no route {self.path}", "not_found")

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._error(404, f"no route {self.path}", "not_found")
            return
        try:
            body = json.loads(raw)
            messages = body["messages"]
            assert isinstance(messages, list)
        except Exception:
            self._error(400, "request body is not a chat completion request", "invalid_request_error")
            return
        owner._enter()
        try:
            owner._handle(self, body, raw)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout):
            self.close_connection = True  # the client gave up (e.g. its timeout); nothing to do
        finally:
            owner._leave()


class FakeOpenAIServer:
    """OpenAI-compatible chat-completions server on 127.0.0.1 in a background thread.

    Parameters
    ----------
    latency_s: seconds before each reply (faulted or not).
    fault_rate: probability that an attempt is faulted; the fault is drawn from ``faults``.
    faults: which faults to inject (see ``ALL_FAULTS``).
    seed: makes faults and wrong answers deterministic per (request body, attempt number).
    answer_fn: ``answer_fn(messages) -> (thinking, solution)`` or the full content string
        (which may hold ``<think>`` tags); default: solve the arithmetic in the question.
    wrong_rate: probability (per request body) that the default answer is deliberately wrong.
    reasoning_field: message field that carries the thinking ("reasoning_content" as DeepSeek,
        "reasoning" as recent vLLM); None or ``think_tags=True`` put it in ``<think>`` tags instead.
    think_tags: put the thinking inside ``<think>…</think>`` at the start of the content.
    api_key: when set, requests must carry ``Authorization: Bearer <api_key>`` (else 401).
    leak_key: a hostile server: echo the bearer token it received in error messages and replies
        (to prove the client redacts the key before writing anything).
    retry_after_s: the Retry-After header of 429 replies.
    stall_s: how long a "stall" or "drip" fault holds the connection (released by ``stop()``).
    fault_fn: ``fault_fn(body, attempt) -> fault name or None`` overrides ``fault_rate``.
    served_model: the model the replies say served them (their ``model`` field); default: the one asked for.
    """

    def __init__(
        self,
        latency_s: float = 0.0,
        fault_rate: float = 0.0,
        faults: Sequence[str] = DEFAULT_FAULTS,
        seed: int = 0,
        answer_fn: Optional[AnswerFn] = None,
        wrong_rate: float = 0.0,
        reasoning_field: Optional[str] = "reasoning_content",
        think_tags: bool = False,
        api_key: Optional[str] = None,
        leak_key: bool = False,
        retry_after_s: Union[int, float, str] = 1,
        stall_s: float = 60.0,
        fault_fn: Optional[FaultFn] = None,
        model: str = "fake-reasoner",
        host: str = "127.0.0.1",
        port: int = 0,
        served_model: Optional[str] = None,
    ):
        unknown = set(faults) - set(ALL_FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; choose from {ALL_FAULTS}")
        self.latency_s = latency_s
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.seed = seed
        self.answer_fn = answer_fn
        self.wrong_rate = wrong_rate
        self.reasoning_field = reasoning_field
        self.think_tags = think_tags
        self._api_key = api_key
        self.leak_key = leak_key
        self.retry_after_s = retry_after_s
        self.stall_s = stall_s
        self.fault_fn = fault_fn
        self.model = model
        self.served_model = served_model
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._attempts: dict[str, int] = {}
        self._log: list[dict] = []
        self._in_flight = 0
        self.max_in_flight = 0  # most chat-completion requests being handled at once
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "FakeOpenAIServer":
        if self._httpd is not None:
            return self
        self._stop.clear()
        self._httpd = _Server((self._host, self._port), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases stalled and slow replies
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    def __repr__(self) -> str:  # never shows the expected key
        state = f"{self.base_url}" if self._httpd is not None else "stopped"
        return f"FakeOpenAIServer({state}, latency_s={self.latency_s}, fault_rate={self.fault_rate})"

    # -- statistics ----------------------------------------------------------------------------

    @property
    def log(self) -> list[dict]:
        """One entry per chat-completion request: t, attempt, fault, status, body_hash, question, auth_ok."""
        with self._lock:
            return [dict(e) for e in self._log]

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._log)

    @property
    def success_count(self) -> int:
        with self._lock:
            return sum(1 for e in self._log if e["status"] == 200 and e["fault"] is None)

    def reset_stats(self) -> None:
        with self._lock:
            self._log.clear()
            self.max_in_flight = self._in_flight

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    # -- the reply -----------------------------------------------------------------------------

    def _wait(self, seconds: float) -> bool:
        """Sleep; True if the server is stopping."""
        return self._stop.wait(seconds) if seconds > 0 else self._stop.is_set()

    def _handle(self, h: _Handler, body: dict, raw: bytes) -> None:
        body_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        auth = h.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else auth
        auth_ok = self._api_key is None or token == self._api_key
        with self._lock:
            attempt = self._attempts.get(body_hash, 0)
            self._attempts[body_hash] = attempt + 1
        messages = body.get("messages") or []
        entry = {
            "t": time.monotonic(),
            "attempt": attempt,
            "fault": None,
            "status": 200,
            "body_hash": body_hash,
            "question": _question_text(messages)[:300],
            "auth_ok": auth_ok,
            "model": body.get("model"),
        }
        leak = f" (received credentials: {token})" if self.leak_key else ""

        if not auth_ok:
            entry["status"] = 401
            self._record(entry)
            h._error(401, "Authentication Fails, Your api key is invalid" + leak, "authentication_error")
            return

        fault: Optional[str] = None
        if self.fault_fn is not None:
            fault = self.fault_fn(body, attempt)
        elif self.fault_rate > 0:
            rng = random.Random(f"{self.seed}:{body_hash}:{attempt}")
            if rng.random() < self.fault_rate:
                fault = rng.choice(self.faults)
        entry["fault"] = fault
        entry["status"] = {"429": 429, "500": 500, "502": 502}.get(fault or "", 200)
        self._record(entry)

        if self._wait(self.latency_s):
            h.close_connection = True
            return
        if fault == "429":
            h._error(
                429,
                "Rate limit reached; retry later" + leak,
                "rate_limit_error",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        elif fault == "500":
            h._error(500, "The server had an error while processing your request" + leak, "server_error")
        elif fault == "502":
            h._send(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
        elif fault == "stall":
            self._wait(self.stall_s)
            h.close_connection = True  # never answer
        elif fault == "garbage":
            h._send(200, b"<html><body>upstream temporarily unavailable</body></html>", "text/html")
        else:
            payload = self._completion(body, messages, body_hash, fault, token if self.leak_key else "")
            data = json.dumps(payload).encode()
            if fault == "truncated":
                h._send(200, data[: len(data) // 2])
            elif fault == "disconnect":
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.write(data[: len(data) // 2])
                h.wfile.flush()
                h.close_connection = True
            elif fault == "drip":
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.flush()
                max_bytes = int(
                    self.stall_s / 0.1
                )  # one byte every 0.1 s: each read is quick, the whole is not
                for i in range(min(len(data), max_bytes)):
                    if self._wait(0.1):
                        break
                    h.wfile.write(data[i : i + 1])
                    h.wfile.flush()
                h.close_connection = True
            else:
                h._send(200, data)

    def _record(self, entry: dict) -> None:
        with self._lock:
            self._log.append(entry)

    def _completion(
        self, body: dict, messages: list, body_hash: str, fault: Optional[str], leaked: str
    ) -> dict:
        rng = random.Random(f"{self.seed}:{body_hash}:answer")
        wrong = rng.random() < self.wrong_rate
        if self.answer_fn is not None:
            result = self.answer_fn(messages)
            thinking, solution = ("", result) if isinstance(result, str) else result
        else:
            thinking, solution = _default_answer(messages, wrong, rng)
        if leaked:
            thinking += f" (by the way, your key is {leaked})"
        finish_reason = "stop"
        if fault == "empty":
            solution = ""
        message: dict = {"role": "assistant"}
        if self.think_tags or not self.reasoning_field:
            message["content"] = (
                f"<think>\n{thinking}\n</think>\n\n{solution}" if thinking and fault != "empty" else solution
            )
        else:
            message["content"] = solution
            message[self.reasoning_field] = thinking
        prompt_tokens = sum(_n_tokens(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
        reasoning_tokens = _n_tokens(thinking)
        completion_tokens = reasoning_tokens + _n_tokens(solution)
        return {
            "id": f"chatcmpl-fake-{body_hash}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.served_model or body.get("model") or self.model,
            "choices": []
            if fault == "no_choices"
            else [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
            },
        }


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description="Local OpenAI-compatible chat-completions server with faults."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument(
        "--faults", default=",".join(DEFAULT_FAULTS), help=f"comma-separated, from {','.join(ALL_FAULTS)}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wrong-rate", type=float, default=0.0)
    parser.add_argument("--reasoning-field", default="reasoning_content", help="'' for none")
    parser.add_argument("--think-tags", action="store_true")
    parser.add_argument(
        "--api-key-env", default="", help="name of an environment variable holding the expected key"
    )
    parser.add_argument("--retry-after", default="1")
    parser.add_argument("--stall", type=float, default=60.0)
    parser.add_argument("--model", default="fake-reasoner")
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env} is not set")
    server = FakeOpenAIServer(
        latency_s=args.latency,
        fault_rate=args.fault_rate,
        faults=[f for f in args.faults.split(",") if f],
        seed=args.seed,
        wrong_rate=args.wrong_rate,
        reasoning_field=args.reasoning_field or None,
        think_tags=args.think_tags,
        api_key=api_key,
        retry_after_s=args.retry_after,
        stall_s=args.stall,
        model=args.model,
        host=args.host,
        port=args.port,
    ).start()
    print(f"listening on {server.base_url}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print(f"stopped after {server.request_count} requests", file=sys.stderr)


if __name__ == "__main__":
    main()
