"""Small helpers that show a stage's results in a notebook (tables, samples, side-by-side CoTs)."""
from __future__ import annotations

import html
from dataclasses import asdict, fields, is_dataclass
from typing import Any, Iterable, Optional, Sequence

from .knobs import help_text


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except Exception:
        return False


def _show(html_text: str, plain: str) -> None:
    if _in_notebook():
        from IPython.display import HTML, display

        display(HTML(html_text))
    else:
        print(plain)


def _clip(value: Any, max_chars: int) -> str:
    text = str(value)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def table(rows: Iterable[Any], columns: Optional[Sequence[str]] = None, max_chars: int = 120, title: str = "") -> None:
    """Records or dicts as a table (HTML in Jupyter, text elsewhere)."""
    rows = [asdict(r) if is_dataclass(r) else dict(r) for r in rows]
    if not rows:
        _show(f"<i>{html.escape(title)}: no rows</i>", f"{title}: no rows")
        return
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(
            f"<td style='text-align:left;white-space:pre-wrap'>{html.escape(_clip(r.get(c, ''), max_chars))}</td>"
            for c in columns) + "</tr>"
        for r in rows
    )
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    plain = "\n".join(
        [title] * bool(title) + [" | ".join(columns)]
        + [" | ".join(_clip(r.get(c, ""), max_chars).replace("\n", " ") for c in columns) for r in rows]
    )
    _show(f"<table>{caption}<tr>{head}</tr>{body}</table>", plain)


def key_values(mapping: dict, title: str = "") -> None:
    """A dict as a two-column table."""
    table([{"key": k, "value": v} for k, v in mapping.items()], ["key", "value"], max_chars=200, title=title)


def side_by_side(left: str, right: str, left_title: str = "teacher", right_title: str = "refined") -> None:
    """Two texts next to each other (e.g. a teacher CoT and its refinement)."""
    cell = "<td style='vertical-align:top;text-align:left'><b>{}</b><pre style='white-space:pre-wrap'>{}</pre></td>"
    html_text = "<table><tr>" + cell.format(html.escape(left_title), html.escape(left)) + \
        cell.format(html.escape(right_title), html.escape(right)) + "</tr></table>"
    plain = f"--- {left_title} ---\n{left}\n--- {right_title} ---\n{right}"
    _show(html_text, plain)


def markdown(text: str) -> None:
    if _in_notebook():
        from IPython.display import Markdown, display

        display(Markdown(text))
    else:
        print(text)


def report(path) -> None:
    """Show a Markdown report with its linked figures embedded (links are relative to the report)."""
    import re
    from pathlib import Path

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    pieces = re.split(r"!\[[^\]]*\]\(([^)]+)\)", text)
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if piece.strip():
                markdown(piece)
        elif _in_notebook():
            from IPython.display import Image, display

            display(Image(filename=str(path.parent / piece)))
        else:
            print(f"[figure: {path.parent / piece}]")


def profile_rows(profile, sections: Sequence[str]) -> list[dict]:
    """One row per knob of the named sections of a loaded profile (``config.Profile``): section, key, value
    and its one-line help (``knobs.help_text``: the field's help and allowed values)."""
    unknown = [s for s in sections if s not in profile.sections]
    if unknown:
        raise KeyError(f"no section {', '.join(map(repr, unknown))} in profile {profile.name!r}")
    return [{"section": name, "key": f.name, "value": repr(getattr(profile.sections[name], f.name)),
             "help": help_text(f)}
            for name in sections for f in fields(profile.sections[name])]


def profile_table(profile, sections: Sequence[str]) -> None:
    """The knobs a notebook uses: every key of the named sections of the profile, with its value and help."""
    title = f"profile {profile.name}: {', '.join(sections)}"
    if getattr(profile, "overrides", None):
        title += f" (overrides: {profile.overrides!r})"
    table(profile_rows(profile, sections), ["section", "key", "value", "help"], max_chars=200, title=title)
