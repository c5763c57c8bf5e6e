"""No module of orion_utils reaches into another's private names (``_name``): what one module needs of
another is public there, in the module that owns the concern. Read from the source (an AST walk):
``from <module> import _name`` and ``<module>._name`` where ``<module>`` is another orion_utils module."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "orion_utils"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(source: str, module: str, is_package: bool = False) -> list[str]:
    """``from X import _y`` and ``X._y`` in ``source`` (the module ``module``) where X is another
    orion_utils module, as ``"line: what"``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found, modules = [], {}  # local name -> the orion_utils module it is bound to
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if not target.startswith("orion_utils"):
                continue
            for alias in node.names:
                if _private(alias.name) and target != module:
                    found.append(f"{node.lineno}: from {target} import {alias.name}")
                if _is_module(f"{target}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("orion_utils") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                and modules.get(node.value.id, module) != module):
            found.append(f"{node.lineno}: {modules[node.value.id]}.{node.attr}")
    return sorted(found, key=lambda use: int(use.split(":")[0]))


def test_the_check_finds_both_forms():
    source = ("from ..jsonl import _type_ok, read_jsonl\nfrom .. import generation as gen\nfrom ..training import rows\n"
              "from ..records import SFTExample\nimport orion_utils.edit as ed\nfrom .base import __all__\n"
              "gen._vllm_status()\nrows.pad_rows\nSFTExample._x\ned._pad\n")
    assert private_uses(source, "orion_utils.teachers.toy") == [
        "1: from orion_utils.jsonl import _type_ok", "7: orion_utils.generation._vllm_status",
        "10: orion_utils.edit._pad"]
    own = "from .api import _helper\nfrom . import api\napi._helper\n"
    assert private_uses(own, "orion_utils.grading.api") == []  # its own names
    assert private_uses(own, "orion_utils.grading", is_package=True) == [
        "1: from orion_utils.grading.api import _helper", "3: orion_utils.grading.api._helper"]


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        uses = private_uses(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")
        found += [f"{path.relative_to(ROOT)}:{use}" for use in uses]
    assert found == [], "private names used across modules (make them public where they belong):\n" + "\n".join(found)
