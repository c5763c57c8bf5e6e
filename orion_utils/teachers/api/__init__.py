"""An OpenAI-compatible API teacher (DeepSeek ``deepseek-reasoner``, a vLLM server, others).

Teacher tokens are the expensive part of the method, so this teacher never loses one and never
pays for one twice:

- every reply is committed to a crash-safe SQLite cache (``cache.TeacherCache``) as soon as it
  arrives; a request whose reply is cached is never sent again (re-runs cost nothing, and a
  ``kill -9`` loses only the requests in flight);
- bounded concurrency; the openai client retries connection errors, timeouts and 429/5xx replies
  (its backoff, or the server's ``Retry-After``), the teacher itself retries replies that arrived
  but cannot be used, within one budget of attempts; each attempt has a total timeout (also
  against replies that trickle in); a ``Retry-After`` longer than allowed is never waited for;
- requests that still fail are recorded (reason, attempts, last error) and sent again next run;
- the API key is read from the environment variable named by ``api_key_env`` only when a request
  must be sent, is held only for the duration of a run, and is redacted from everything that is
  stored, logged or raised (replies and error bodies included, in case a server echoes it).

One job per module:

- ``teacher``: ``APITeacher``, its settings, request bodies, cache lookup, accounts and manifest;
- ``engine``: sending a batch (concurrency, the teacher's own retries, commits, failure records);
- ``client``: the openai client of a run, its HTTP client bounding and recording every attempt;
- ``retry``: classifying failures, ``Retry-After``, the retry budget and backoff;
- ``replies``: reading a chat-completion reply (thinking, solution, usage);
- ``accounting``: requests, retries, failures, tokens and cost;
- ``commit``: group commits of replies to the cache;
- ``credentials``: reading the key from the environment; ``redact``: keeping it out of all output;
- ``bridge``: running the async path from synchronous code (and Jupyter);
- ``preload``: one-time import costs paid when a teacher is built.
"""

from .credentials import DUMMY_KEY, MissingAPIKeyError, TeacherAPIError
from .redact import REDACTED, Redactor, sanitize_url
from .replies import MalformedResponse, normalize_usage, parse_reply
from .retry import parse_retry_after
from .teacher import APITeacher

_Redactor = Redactor  # the name it had when this package was one module

__all__ = [
    "APITeacher",
    "MissingAPIKeyError",
    "TeacherAPIError",
    "MalformedResponse",
    "parse_reply",
    "parse_retry_after",
    "normalize_usage",
    "sanitize_url",
    "Redactor",
    "REDACTED",
    "DUMMY_KEY",
]
