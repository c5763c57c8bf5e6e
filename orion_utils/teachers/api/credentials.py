"""Where the API key comes from: the environment variable named by ``api_key_env``, read only when
a request must be sent (a run served from the cache needs no key), never a parameter."""

from __future__ import annotations

import os
import re
from typing import Optional

DUMMY_KEY = "EMPTY"  # what vLLM and most local servers accept when they run without auth
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class MissingAPIKeyError(RuntimeError):
    """The environment variable that should hold the API key is not set."""


class TeacherAPIError(RuntimeError):
    """An error that makes every request fail (bad key, no permission): the run stops."""


def check_key_env_name(api_key_env: Optional[str]) -> Optional[str]:
    """``api_key_env`` as the teacher keeps it (None for a server without authentication).

    Raises ValueError when it cannot be the name of an environment variable, without echoing it:
    it may be a key pasted in by mistake."""
    if api_key_env == "":
        return None
    if api_key_env is not None and (not isinstance(api_key_env, str) or not _ENV_NAME_RE.match(api_key_env)):
        raise ValueError(
            "api_key_env must be the NAME of an environment variable that holds the key "
            "(e.g. 'DEEPSEEK_API_KEY'), never the key itself"
        )
    return api_key_env


def read_key(api_key_env: Optional[str]) -> str:
    """The key from the environment (the dummy key for a server without authentication)."""
    if api_key_env is None:
        return DUMMY_KEY
    value = os.environ.get(api_key_env)
    if not value:
        raise MissingAPIKeyError(
            f"the API key is read from the environment variable {api_key_env}, which is not set "
            f"(set it in the environment of the Jupyter/papermill process, e.g. "
            f"`export {api_key_env}=...`; never pass the key as a parameter)"
        )
    return value
