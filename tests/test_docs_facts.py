"""Every run-directory path, profile knob, section and `module.name` the docs name exists in the code.

The docs: README.md, ARCHITECTURE.md, docs/*.md, the notebooks (markdown and code) and every docstring and knob help
text of the package. A fact has one source (a path: ``rundir.artifact_paths()``, read off ``RunDir``; a
knob: its section dataclass; a stage: ``stages``); a doc that restates it and drifts fails here.
"""
import ast
import dataclasses
import importlib
import json
import re
from pathlib import Path

import pytest

from orion_utils import config
from orion_utils.rundir import RunDir, artifact_paths

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "orion_utils"
RUN_FOLDERS = ("data", "models", "eval", "figures", "seeds", "students", "cache")
FILE_SUFFIXES = {"json", "jsonl", "md", "png", "py", "yaml", "yml", "toml", "ipynb", "txt", "gguf", "lock", "html"}
MODULES = {p.stem if p.suffix else p.name for p in PACKAGE.iterdir()
           if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
SPAN = re.compile(r"`+([^`\n]+?)`+")
DOTTED = re.compile(r"(?<![\w./<-])(?:orion_utils\.)?([a-z_][a-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
SECTION_WORD = re.compile(r"`+(\w+)`+ section\b|\bthe (\w+) section\b")


# --- the docs, as (where, text) pieces -------------------------------------------------------------
def _docstrings(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 1)}", doc


def _help_texts():
    for name in config.SECTIONS:
        for f in dataclasses.fields(config.section_class(name)):
            yield f"knob {name}.{f.name} help", f.metadata.get("help", "")


def _notebook_cells(kind: str):
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == kind:
                yield f"{nb.name} cell {i}", "".join(cell["source"])


def doc_pieces():
    for name in ("README.md", "ARCHITECTURE.md"):
        yield name, (ROOT / name).read_text(encoding="utf-8")
    for path in sorted((ROOT / "docs").glob("*.md")):  # the lab record
        yield str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")
    yield from _notebook_cells("markdown")
    for path in sorted(PACKAGE.rglob("*.py")):
        yield from _docstrings(path)
    yield from _help_texts()


def spans(pieces):
    """Every backticked span, with where it is."""
    for where, text in pieces:
        for m in SPAN.finditer(text):
            yield where, m.group(1).strip()


# --- the facts, from the code ----------------------------------------------------------------------
def _pattern(path: str) -> re.Pattern:
    """A path with ``<arg>`` placeholders as a regex; a doc's own placeholders (``<m>``, ``*``) match one."""
    return re.compile("".join("[^/]+" if re.fullmatch(r"<[^>]*>", part) else re.escape(part)
                              for part in re.split(r"(<[^>]*>)", path.rstrip("/"))))


ARTIFACTS = artifact_paths()
PATTERNS = [_pattern(p) for p in ARTIFACTS.values()]
FOLDERS = [_pattern(p.rsplit("/", k)[0]) for p in ARTIFACTS.values() for k in range(1, p.count("/") + 1)]


def names_an_artifact(path: str) -> bool:
    """``path`` (as a doc spells it: ``data/training_set_<method>.jsonl``, ``figures/*.png``, ``models/edit/``)
    is a path ``RunDir`` names, or a folder of one."""
    doc = re.sub(r"<[^>]*>|\*", "<>", path.rstrip("/"))
    if any(p.fullmatch(doc) for p in PATTERNS) or any(p.fullmatch(doc) for p in FOLDERS):
        return True
    glob = re.compile(".*".join(re.escape(part) for part in path.rstrip("/").split("*")))
    return "*" in path and any(glob.fullmatch(p) for p in ARTIFACTS.values())  # `data/*.jsonl`: some of them


def run_paths(span: str) -> list[str]:
    """The run-directory paths a backticked span spells (``outputs/<run>/`` stripped)."""
    found = []
    for token in re.split(r"[\s,()`]+", span):
        token = re.sub(r"^outputs/<[^>]*>/", "", token)
        suffix = token.rsplit("/", 1)[-1].rpartition(".")[2] if "." in token.rsplit("/", 1)[-1] else ""
        if (token.split("/")[0] in RUN_FOLDERS and "/" in token and "..." not in token and "{" not in token
                and suffix in ("", "json", "jsonl", "png", "md")):  # not a hub dataset's `data/train-*.parquet`
            found.append(token)
    return found


def section_fields(name: str) -> set:
    return {f.name for f in dataclasses.fields(config.section_class(name))}


def dotted_problem(dotted: str) -> str:
    """Why ``a.b...`` names nothing ("" when it names a knob or a module's attribute)."""
    head, *rest = dotted.split(".")
    if rest[-1] in FILE_SUFFIXES or rest[-1] in ("com", "org", "io") or head == "self":  # analysis.json, a host
        return ""
    if head == "cfg":  # cfg.section.knob, or in a stage's docstring cfg.knob (cfg its section)
        head, *rest = rest
        if not rest or head not in config.SECTIONS:
            known = head in config.SECTIONS or any(  # a knob or a method of a section
                head in section_fields(s) or hasattr(config.section_class(s), head) for s in config.SECTIONS)
            return "" if known or hasattr(config.Profile, head) else f"no section or knob '{head}'"
    if head == "teacher" and rest[0] not in section_fields(head):  # the teacher object: its methods
        from orion_utils.teachers.prompts import PromptedTeacher
        return "" if hasattr(PromptedTeacher, rest[0]) else f"no knob or teacher method 'teacher.{rest[0]}'"
    if head in config.SECTIONS and rest[0] in section_fields(head) and len(rest) == 1:
        return ""
    if head in MODULES:
        obj = importlib.import_module(f"orion_utils.{head}")
        for i, part in enumerate(rest):
            if not hasattr(obj, part):
                try:
                    obj = importlib.import_module(f"orion_utils.{head}.{'.'.join(rest[:i + 1])}")
                    continue
                except ImportError:
                    pass
                what = f"no field '{rest[0]}' in section '{head}' and " if head in config.SECTIONS else ""
                return f"{what}orion_utils.{head} has no '{'.'.join(rest[:i + 1])}'"
            obj = getattr(obj, part)
        return ""
    if head in config.SECTIONS:
        return f"section '{head}' has no knob '{'.'.join(rest)}'"
    if head in config.RENAMED:
        return f"'{head}' is no section any more: '{config.RENAMED[head]}'"
    if head in ("run", "RunDir"):
        return "" if hasattr(RunDir, rest[0]) else f"RunDir has no '{rest[0]}'"
    return ""


# --- the checks ------------------------------------------------------------------------------------
def path_problems(pieces) -> list[str]:
    return [f"{where}: `{path}` is no path RunDir names (rundir.artifact_paths())"
            for where, span in spans(pieces) for path in run_paths(span) if not names_an_artifact(path)]


def name_problems(pieces) -> list[str]:
    problems = []
    for where, span in spans(pieces):
        for m in DOTTED.finditer(span):
            problem = dotted_problem(m.group(1))
            if problem:
                problems.append(f"{where}: `{m.group(1)}`: {problem}")
    return problems


def section_problems(pieces) -> list[str]:
    problems = []
    for where, text in pieces:
        for m in SECTION_WORD.finditer(text):
            name = m.group(1) or m.group(2)
            if name in config.RENAMED or (m.group(1) and name not in config.SECTIONS):
                problems.append(f"{where}: 'the {name} section' names no section "
                                f"({config.RENAMED.get(name, 'known: ' + ', '.join(config.SECTIONS))})")
    return problems


def notebook_problems(pieces) -> list[str]:
    """Every numbered notebook named (``04_sft``) is one the runner runs."""
    from orion_utils.runner import NOTEBOOKS

    return [f"{where}: `{m.group(0)}` is no notebook of runner.NOTEBOOKS" for where, text in pieces
            for m in re.finditer(r"(?<![\w/])\d\d_[a-z][a-z_]*[a-z]", text) if m.group(0) not in NOTEBOOKS]


DEFAULT = re.compile(r"`([a-z_]+)\.([a-z_]+)`(?:,? default | \((?:default )?)(-?[0-9][0-9,]*(?:\.[0-9]+)?)\b")


def default_problems(pieces) -> list[str]:
    """A knob's default a doc states (```section.knob`, default 200``, ```section.knob` (0.1)``) is its default."""
    problems = []
    for where, text in pieces:
        for m in DEFAULT.finditer(text):
            section, key, stated = m.groups()
            if section in config.SECTIONS and key in section_fields(section):
                default = getattr(config.section_class(section)(), key)
                if not isinstance(default, (int, float)) or float(stated.replace(",", "")) != float(default):
                    problems.append(f"{where}: `{section}.{key}` stated default {stated}, the code's is {default!r}")
    return problems


SPELLED = re.compile(r"""run\.(?:path|data|model)\(|["'][^"'\n]*\.(?:jsonl|json|md|png)["']""")


def notebook_code_problems() -> list[str]:
    """A notebook's code gets a run's files from RunDir's attributes, never by spelling a name."""
    return [f"{where}: `{m.group(0)}` spells a run-directory name; use a RunDir attribute (rundir.artifact_paths())"
            for where, code in _notebook_cells("code") for m in SPELLED.finditer(code)]


# --- the tests -------------------------------------------------------------------------------------
def test_every_run_directory_path_the_docs_name_is_one_rundir_names():
    assert path_problems(doc_pieces()) == []


def test_every_knob_and_module_name_the_docs_name_exists():
    assert name_problems(doc_pieces()) == []


def test_every_section_the_docs_name_is_a_section():
    assert section_problems(doc_pieces()) == []


def test_every_notebook_the_docs_name_is_run():
    assert notebook_problems(doc_pieces()) == []


def test_every_knob_default_the_docs_state_is_the_code_s():
    assert default_problems(doc_pieces()) == []


@pytest.mark.parametrize("doc, header", [("README.md", "| notebook | module | writes |"),
                                         ("ARCHITECTURE.md", "| notebook | function | reads | writes |")])
def test_the_stage_tables_list_the_notebooks_the_runner_runs(doc, header):
    from orion_utils.runner import NOTEBOOKS

    lines = (ROOT / doc).read_text(encoding="utf-8").split(header, 1)[1].splitlines()[2:]
    rows = [re.match(r"\|\s*`?(\w*)`?\s*\|", line).group(1) for line in lines[:next(
        (i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))]]
    assert [r for r in rows if r] == list(NOTEBOOKS)


def test_notebooks_get_run_files_from_rundir():
    assert notebook_code_problems() == []


def test_the_rundir_table_names_every_artifact_and_each_as_the_code_does():
    """RunDir's docstring table (name, file, writer) and ``artifact_paths()`` agree both ways."""
    table = {}
    for line in RunDir.__doc__.splitlines():
        m = re.match(r"\s*``([^`]+)``\s+``([^`]+)``", line)
        if m:
            table[m.group(1)] = m.group(2)
    by_name = {re.sub(r"\(<[^)]*>\)|\(\)", "", k): v for k, v in ARTIFACTS.items()}
    for name, path in table.items():
        key = re.sub(r"\(.*\)", "", name)
        assert hasattr(RunDir, key), f"RunDir's table names {name}, which RunDir does not have"
        if key in by_name and "{" not in path:  # a list of files (phase_loss_histories) has no one path
            code = by_name[key]
            assert _pattern(code).fullmatch(re.sub(r"<[^>]*>", "<>", path.rstrip("/"))), f"{name}: table {path}, code {code}"
    top = {re.sub(r"\(.*", "", k) for k in ARTIFACTS if "." not in k.split(")")[-1] and "()." not in k}
    assert top - {re.sub(r"\(.*\)", "", n) for n in table} <= {"edit", "tailored", "benchmarks_dir", "eval_dir",
                                                               "eval_method_dir", "figures"}


# --- the checker catches drift (each check can fail) ------------------------------------------------
@pytest.mark.parametrize("text, check", [
    ("rounds write `data/sft_tailored.jsonl`", path_problems),
    ("batches are length-aware (`sft.batching`)", name_problems),
    ("batches are length-aware (`training.batchng`)", name_problems),
    ("set `--set reflection.selecton=perplexity`", name_problems),
    ("the scorer (`reflection.no_such_function`)", name_problems),
    ("in code, `cfg.training.batchng`", name_problems),
    ("read `run.teacher_trace`", name_problems),
    ("values come from the ``sft`` section", section_problems),
    ("notebook `04_fine_tuning` trains them", notebook_problems),
    ("it quotes a marker (`reflection.reflect_window`, default 201)", default_problems),
])
def test_the_checks_catch_drift(text, check):
    assert check([("doc", text)]) != []


@pytest.mark.parametrize("text", [
    "`data/training_set_<method>.jsonl`, `models/edit/` (`pairs.jsonl`, `stage1/`), `eval/<m>/<b>.jsonl`",
    "`training.batching`, `reflection.refine`, `analysis.json`, `--set toy_pretrain.max_steps=40`",
    "the ``training`` section; `figures/*.png`; `models/tailored/round_<r>/`",
    "it quotes a marker (`reflection.reflect_window`, default 200)",
])
def test_the_checks_pass_true_facts(text):
    pieces = [("doc", text)]
    assert path_problems(pieces) + name_problems(pieces) + section_problems(pieces) + default_problems(pieces) == []


# --- each measured number in one place, every link to a heading that exists --------------------------------
STATED = re.compile(r"(?<![\w.\-/])(\d+ min \d+ s|\d[\d,]*\.\d+|\d[\d,]*(?=%))"
                    r"(?:\s?(%|×|h\b|min(?:utes)?\b|s\b|points\b))?(?![\w.]*\d)")
NOT_A_MEASUREMENT = re.compile(r"`[^`\n]*`|\]\([^)\s]*\)|\barXiv \d+\.\d+|\b\d+\.\d+\.\d+\b"
                               r"|\b\d+% (?=(?:\w+ )?(?:bootstrap|interval|percentile))")  # a version; the interval's level
CODE_FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def stated_measurements(text: str) -> set:
    """The measured numbers ``text`` states, each with its unit (``9 min 36 s``, ``7.3 h``, ``25%``, ``34.0``):
    decimals, percentages and durations, outside code spans, link targets, fenced code, versions and citations."""
    text = NOT_A_MEASUREMENT.sub(" ", CODE_FENCE.sub(" ", text))
    return {f"{m.group(1)} {unit}".replace("minutes", "min").replace(" %", "%").strip() if (unit := m.group(2))
            else m.group(1) for m in STATED.finditer(text)}


def restated_numbers(readme: str, others: dict) -> list[str]:
    """Each measured number the README states that another doc states too: it has one place, and the other links."""
    mine = stated_measurements(readme)
    return [f"{where} restates the README's {n}" for where, text in others.items()
            for n in sorted(mine & stated_measurements(text))]


def _other_docs() -> dict:
    docs = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))}
    return {**docs, "ARCHITECTURE.md": (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"),
            **dict(_notebook_cells("markdown"))}


# the same value measured by different runs, each stated once: the README's demo table (accuracies out of 32
# questions) against docs/results.md's smol_toy3 table and docs/lab_record.md's earlier demo sizing (out of 48:
# 2/32 = 3/48 = 6.2%, 10/32 = 15/48 = 31.2%, 12/32 = 18/48 = 37.5%, 14/32 = 21/48 = 43.8%), the lab record's toy
# knob table (a 15.6), and 0.0
COINCIDENCES = {("docs/results.md", "0.0"), ("docs/results.md", "6.2"), ("docs/results.md", "31.2"),
                ("docs/results.md", "37.5"), ("docs/results.md", "43.8"), ("docs/lab_record.md", "0.0"),
                ("docs/lab_record.md", "6.2"), ("docs/lab_record.md", "15.6"), ("docs/lab_record.md", "31.2")}


def test_a_number_the_readme_states_is_stated_nowhere_else():
    restated = restated_numbers((ROOT / "README.md").read_text(encoding="utf-8"), _other_docs())
    assert [r for r in restated if (r.split(" restates")[0], r.rsplit(" ", 1)[1]) not in COINCIDENCES] == []


def test_restated_numbers_are_caught_and_versions_are_not_numbers():
    readme = ("took 9 min 36 s; 7.3 h on a T4; sft 34.0 [22.2, 45.9], 25% accepted, 1.5 minutes; torch 2.14.0; "
              "`--set a.b=0.5`; a 95% bootstrap interval")
    assert stated_measurements(readme) == {"9 min 36 s", "7.3 h", "34.0", "22.2", "45.9", "25%", "1.5 min"}
    assert stated_measurements("a target of 1.5×, Qwen2.5-1.5B") == {"1.5 ×"}  # not the README's 1.5 min
    assert restated_numbers(readme, {"docs/x.md": "the toy took 9 min 36 s, sft 34.0", "docs/y.md": "torch 2.14.0, 0.5"}) \
        == ["docs/x.md restates the README's 34.0", "docs/x.md restates the README's 9 min 36 s"]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces
    to hyphens."""
    text = re.sub(r"`|\*\*?|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set:
    text = CODE_FENCE.sub("", path.read_text(encoding="utf-8"))
    return {github_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


LINK = re.compile(r"\]\(([^)\s#]*\.md)?(?:#([\w\-]+))?\)")


def link_problems(pieces) -> list[str]:
    """Each relative link to a markdown file, or an anchor in one, that names no file or no heading there."""
    problems = []
    for where, base, text in pieces:
        for m in LINK.finditer(text):
            target, anchor = m.groups()
            if not target and not anchor:
                continue
            path = (base / target).resolve() if target else ROOT / where.split(" cell ")[0]
            if not path.is_file():
                problems.append(f"{where}: link to {target}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                problems.append(f"{where}: link to {target or ''}#{anchor}: no such heading")
    return problems


def _linking_pieces():
    for path in [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]:
        yield str(path.relative_to(ROOT)), path.parent, path.read_text(encoding="utf-8")
    for where, text in _notebook_cells("markdown"):
        yield where, ROOT / "notebooks", text


def test_every_link_between_the_docs_reaches_a_heading():
    assert link_problems(_linking_pieces()) == []


def test_a_link_to_a_moved_section_is_caught():
    assert github_slug("SmolLM2 on the toy domain (smol_toy)") == "smollm2-on-the-toy-domain-smol_toy"
    assert github_slug("Stage 03's acceptance defaults") == "stage-03s-acceptance-defaults"
    pieces = [("notebooks/x.ipynb cell 0", ROOT / "notebooks", "[a](../README.md#what-the-toy-demo-gives)"),
              ("README.md", ROOT, "[b](docs/no_such_page.md)"), ("README.md", ROOT, "[c](docs/results.md#results)")]
    assert link_problems(pieces) == ["notebooks/x.ipynb cell 0: link to ../README.md#what-the-toy-demo-gives: no "
                                     "such heading", "README.md: link to docs/no_such_page.md: no such file"]


def test_the_readme_lists_every_shipped_profile():
    """The README's profile table has a row for each profile in configs/ (its hardware and time)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("| profile | hardware | what it runs | time |", 1)[1].split("\n\n", 1)[0]
    rows = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    assert {p.stem for p in (ROOT / "configs").glob("*.yaml")} - rows == set()
