"""docs/architecture.md is the one module map, and it stays true: it names every module under
worker/ and training/ (by its path or its dotted name; a package by its folder), every path it
names exists, and it lists every import-linter contract of pyproject.toml by name."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "docs" / "architecture.md"


def modules() -> list[Path]:
    """Every module of the two packages, as a path relative to the checkout."""
    found = [p.relative_to(ROOT) for top in ("worker", "training") for p in (ROOT / top).rglob("*.py")]
    return sorted(p for p in found if "__pycache__" not in p.parts)


def named(module: Path, text: str) -> bool:
    """Whether ``text`` names ``module``: its path, its dotted name, or (a package's
    ``__init__.py``) its folder."""
    parts = module.with_suffix("").parts
    if module.name == "__init__.py":
        parts = parts[:-1]
        if f"{'/'.join(parts)}/" in text:
            return True
    dotted = re.escape(".".join(parts))
    return module.as_posix() in text or re.search(rf"(?<![\w.]){dotted}(?!\w)", text) is not None


def test_every_module_is_on_the_map():
    text = MAP.read_text(encoding="utf-8")
    missing = [str(m) for m in modules() if not named(m, text)]
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"


def test_every_module_the_map_names_exists():
    text = MAP.read_text(encoding="utf-8")
    named_paths = set(re.findall(r"(?<![\w/])((?:worker|training)/[\w/]*\w\.py)", text))
    gone = sorted(p for p in named_paths if not (ROOT / p).is_file())
    assert not gone, f"docs/architecture.md names modules that do not exist: {', '.join(gone)}"


def test_every_import_contract_is_listed_by_name():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    names = [c["name"] for c in config["tool"]["importlinter"]["contracts"]]
    text = MAP.read_text(encoding="utf-8")
    missing = [name for name in names if name not in text]
    assert names and not missing, f"docs/architecture.md does not list the contracts: {missing}"


def test_the_check_sees_a_module_left_out():
    text = "`worker/db/` holds `worker/db/store.py` and worker.db.report; worker.db.schemas"
    assert named(Path("worker/db/__init__.py"), text)
    assert named(Path("worker/db/store.py"), text) and named(Path("worker/db/report.py"), text)
    assert not named(Path("worker/db/schema.py"), text)  # worker.db.schemas is another name
    assert not named(Path("worker/db/engine.py"), text)
