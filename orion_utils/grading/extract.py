"""Extraction: the final answer a response commits to, as a string.

Order (:func:`extract_answer`): the last ``\\boxed{...}`` / ``\\fbox{...}`` (see :mod:`.boxes`);
else an answer stated in prose (see :mod:`.prose`): a final-answer section, the concluding claim
or the last "final answer is X" / "answer: X" / "answer is X" / "#### X", or a whole response
that is a bare answer. After a ``</think>``, an answer in the text after it wins over one inside
the reasoning. Only a bounded window near the end is ever scanned, so a 1 MB response costs a few
``rfind`` calls.
"""
from __future__ import annotations

from .boxes import last_boxed
from .prose import prose_answer

FALLBACK_TAIL = 4000  # prose answers are looked for in this many trailing characters


def extract_answer(response: str) -> str | None:
    """The final answer a response commits to, as a string, or None.

    Order: the last ``\\boxed{}``/``\\fbox{}`` (adjacent boxes joined as a list); else the answer
    the ending states in prose: under a final "Final Answer" heading, in the concluding claim
    ("So the total is 42 dollars.", "So the culprit is Alice."), after the last answer cue, or
    the whole response when it is a bare answer. A response cut off mid-sentence is credited only
    for a cued answer. Never raises, never scans more than a bounded window.
    """
    try:
        if not isinstance(response, str):
            response = "" if response is None else str(response)
        end_think = response.rfind("</think>")
        if end_think >= 0:  # the answer after the reasoning wins over one inside it
            after = extract_answer(response[end_think + len("</think>"):])
            if after is not None:
                return after
        boxed = last_boxed(response)
        if boxed is not None and boxed.strip():
            return boxed.strip()
        return prose_answer(response[-FALLBACK_TAIL:])
    except Exception:  # noqa: BLE001 - extraction must never raise
        return None
