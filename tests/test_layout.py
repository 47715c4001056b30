"""The package's plan: which part may import which, and what a producer loads.

The layers are the architecture (``broker/__init__.py`` draws them): a part
imports only parts on lower layers, never one beside or above it, so no
import cycle can form and each process loads only what it runs.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import broker

PACKAGE = Path(broker.__file__).parent

#: Each part of ``broker`` and its layer; a part is a subpackage or a top-level module.
LAYERS = {
    "errors": 1,
    "trust": 2,
    "actors": 1,
    "settings": 2,
    "storage": 2,
    "contract": 2,
    "artifacts": 2,
    "messaging": 3,
    "models": 4,
    "app": 4,
    "producer": 5,
    "worker": 5,
    "mirror": 5,
    "beat": 5,
    "gateway": 6,
    "ops": 6,
    "tasks": 6,
    "cli": 7,
    "celery": 7,
    "__main__": 8,
}


def _part(module: str) -> str | None:
    """The part of ``broker`` a dotted module name belongs to (None outside broker)."""
    pieces = module.split(".")
    if pieces[0] != "broker":
        return None
    return pieces[1] if len(pieces) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, at any depth of the file (lazy imports count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "broker":
                found += [(node.lineno, f"broker.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def _sources() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE
    )


def test_every_part_of_the_package_has_a_layer():
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _sources()}
    assert parts - {"__init__"} == set(LAYERS)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_part_imports_only_parts_below_it(path):
    here = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = [
        f"line {line}: {module} ({_part(module)}, layer {LAYERS.get(_part(module) or '')})"
        for line, module in _imports(path)
        if (there := _part(module)) not in (None, here) and not LAYERS.get(there, 99) < LAYERS[here]
    ]
    assert not upward, f"{here} (layer {LAYERS[here]}) imports beside or above itself: {upward}"


def _loaded_after(code: str) -> set[str]:
    """The ``broker`` modules a fresh interpreter has loaded after running ``code``."""
    probe = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('broker'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_a_producer_loads_no_worker_and_no_beat():
    loaded = _loaded_after(
        "import os\n"
        "from broker.producer import Producer\n"
        "from broker.settings import Settings\n"
        "producer = Producer(Settings(database_url='sqlite://', broker_url='redis://127.0.0.1:1/0',"
        " registration_signing_key=os.environ['TOPCHEF_REGISTRATION_SIGNING_KEY']))\n"
        "assert not [name for name in producer.app.tasks if name.startswith('topchef')]"
    )
    assert {
        m for m in loaded if m.startswith(("broker.worker", "broker.beat", "broker.tasks"))
    } == set()


def test_a_lab_module_loads_the_declarations_only():
    loaded = _loaded_after("from broker.worker import handles, progress")
    assert "broker.worker.runtime" not in loaded
    assert "broker.storage.tables" not in loaded


def test_the_public_face_names_what_users_import():
    import broker.producer
    import broker.worker

    assert broker.Producer is broker.producer.Producer
    assert broker.handles is broker.worker.handles
    assert set(broker.__all__) <= set(dir(broker))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = broker.no_such_name  # type: ignore[attr-defined]


def test_importing_the_package_loads_nothing_else():
    assert _loaded_after("import broker") == {"broker"}
