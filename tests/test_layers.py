"""The house's shape: imports point one way (`wiring → web → actors → refresher`), actors
know each other only through protocols and callables, route modules share through
modules of their own, and no module grows past what a person reads in one sitting.

Read from the source with `ast`, so an import anywhere in a module counts, inside a
function or under `TYPE_CHECKING` too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("refresher", "actors", "web", "wiring")
# The composition root and the command line wire everything together, from above: only
# they may import everything, and nothing imports them.
WIRING = "wiring"
# Each package may import only those below it.
BELOW = {
    "refresher": {"refresher"},
    "actors": {"actors", "refresher"},
    "web": {"web", "actors", "refresher"},
    "wiring": set(PACKAGES),
}
# The actor framework every actor builds on; not an actor itself.
ACTOR_RUNTIME = "actors.runtime"
# Past this a module warns; it may pass only with a comment that says why it is one idea.
MAX_LINES = 400
ONE_IDEA = "# Long, but one idea:"


def modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imported(path: Path) -> set[str]:
    """First-party modules `path` imports (`from refresher import db` names refresher.db)."""
    known = modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def imported_at_run_time(path: Path) -> set[str]:
    """What `path` imports outside `if TYPE_CHECKING:` blocks (annotations only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    known = modules()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def mutual_imports() -> list[str]:
    """Pairs of modules that import each other: each should be a part of one idea, or one
    should depend on the other only."""
    graph = {name: imported_at_run_time(path) for name, path in modules().items()}
    return sorted(
        f"{name} and {other} import each other"
        for name, targets in graph.items()
        for other in targets
        if name < other and name in graph.get(other, set())
    )


def test_no_two_modules_import_each_other() -> None:
    assert mutual_imports() == []


def is_route_module(path: Path) -> bool:
    return "Blueprint(" in path.read_text()


WHY = {
    "refresher": "the domain knows no actors, HTTP or wiring",
    "actors": "actors know no HTTP or wiring",
    "web": "the web app knows no wiring",
}


def layer_violations() -> list[str]:
    found = []
    for name, path in modules().items():
        package = name.split(".")[0]
        for target in sorted(imported(path)):
            target_package = target.split(".")[0]
            if target_package not in BELOW[package]:
                found.append(f"{name} imports {target}: {WHY[package]}")
            elif package == WIRING:
                continue
            elif (
                package == "actors"
                and target_package == "actors"
                and ACTOR_RUNTIME not in (name, target)
                and target != name
            ):
                found.append(
                    f"{name} imports {target}: an actor depends on another only through "
                    "a protocol or a callable"
                )
            elif (
                package == "web"
                and target != name
                and is_route_module(path)
                and is_route_module(modules()[target])
            ):
                found.append(f"{name} imports {target}: route modules share through others")
    return found


def test_imports_point_one_way_and_actors_meet_only_through_protocols() -> None:
    assert layer_violations() == []


def test_every_rule_would_catch_its_breach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself: an upward import (into actors, into the wiring), an actor
    importing an actor, a route module importing a route module, and two modules
    importing each other are each reported."""
    breaches = {
        "refresher/jobs/records.py": (
            "from actors.runtime import Mailbox\nfrom refresher.jobs import outputstore\n"
        ),
        "actors/janitor.py": "from actors.download_tracker import DownloadTracker\n",
        "web/routes/events.py": "from web.routes.jobs import blueprint\n",
        "web/views.py": "from wiring.service import serve\n",
    }
    original = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        text = original(self, *args, **kwargs)  # type: ignore[arg-type]
        relative = self.relative_to(ROOT).as_posix() if self.is_relative_to(ROOT) else ""
        return text + breaches.get(relative, "")

    monkeypatch.setattr(Path, "read_text", read_text)
    found = layer_violations()
    assert any(line.startswith("refresher.jobs.records imports actors.runtime") for line in found)
    assert any(line.startswith("actors.janitor imports actors.download_tracker") for line in found)
    assert any(line.startswith("web.routes.events imports web.routes.jobs") for line in found)
    assert any(line.startswith("web.views imports wiring.service") for line in found)
    assert "refresher.jobs.outputstore and refresher.jobs.records import each other" in (
        mutual_imports()
    )


def test_no_module_is_longer_than_a_sitting_unless_it_says_why() -> None:
    long = {
        name: count
        for name, path in modules().items()
        if (count := len((text := path.read_text()).splitlines())) > MAX_LINES
        and ONE_IDEA not in text
    }
    assert long == {}
