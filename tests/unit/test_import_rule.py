"""The import rule, as README.md states it: every arrow between webapp's modules points down the layers (the folders),
and each third-party driver or framework is imported only where the rule says. A new arrow that runs
back up, or a module nobody placed in a layer, fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import webapp

# Top to bottom: the folders are the layers. A module may import its own layer or any below, never one above.
LAYERS: dict[str, tuple[str, ...]] = {
    "entry": ("webapp", "webapp.__main__", "webapp.cli", "webapp.gunicorn"),
    "composition": ("webapp.app",),
    "web": ("webapp.web",),
    "services": ("webapp.services",),
    "adapters": ("webapp.postgres", "webapp.cache", "webapp.observability"),
    "core": ("webapp.services.ports", "webapp.domain", "webapp.resilience", "webapp.settings"),
}
# Frameworks and drivers: only these layers (or packages) may import them.
THIRD_PARTY: dict[str, tuple[str, ...]] = {
    "flask": ("entry", "composition", "web"),
    "werkzeug": ("entry", "composition", "web"),
    "gunicorn": ("webapp.gunicorn",),
    # settings parses DATABASE_URL as libpq does (psycopg.conninfo), nothing more.
    "psycopg": ("webapp.postgres", "webapp.settings"),
    "psycopg_pool": ("webapp.postgres",),
    "redis": ("webapp.cache",),
    "prometheus_client": ("webapp.observability", "webapp.gunicorn.metrics_files"),
    # An optional extra ([tracing]): one module imports it, and only when tracing is on.
    "opentelemetry": ("webapp.observability.tracing",),
}
ORDER = list(LAYERS)


def layer_of(module: str) -> str:
    """The layer of the longest matching prefix (services.ports is core, the rest of services is not)."""
    matches = [
        (len(prefix), layer)
        for layer, prefixes in LAYERS.items()
        for prefix in prefixes
        if module == prefix or (prefix != "webapp" and module.startswith(prefix + "."))  # the root: itself only
    ]
    assert matches, f"{module} is in no layer: place it in LAYERS (and in README's import rule)"
    return max(matches)[1]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "webapp":
            found.update(f"webapp.{alias.name}" for alias in node.names)  # `from webapp import x`: the module x
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def modules() -> dict[str, Path]:
    root = Path(webapp.__file__).parent
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def test_every_module_is_placed_in_a_layer():
    for name in modules():
        layer_of(name)


def runs_up(source: str, target: str) -> bool:
    """True when source importing target would point up the layers."""
    return ORDER.index(layer_of(target)) < ORDER.index(layer_of(source))


def test_no_import_runs_back_up_the_layers():
    known = modules()
    upward = [
        f"{name} ({layer_of(name)}) -> {target} ({layer_of(target)})"
        for name, path in known.items()
        for target in imports_of(path)
        if target in known and runs_up(name, target)
    ]
    assert not upward, upward


def within(module: str, places: tuple[str, ...]) -> bool:
    """True when module is one of places (a layer or a package) or inside one of those packages."""
    return layer_of(module) in places or any(module == p or module.startswith(p + ".") for p in places)


def test_frameworks_and_drivers_are_imported_only_where_the_rule_says():
    misplaced = []
    for name, path in modules().items():
        for target in imports_of(path):
            allowed = THIRD_PARTY.get(target.split(".")[0])
            if allowed is not None and not within(name, allowed):
                misplaced.append(f"{name} -> {target}")
    assert not misplaced, misplaced


def test_no_two_modules_import_each_other_even_through_others():
    known = modules()
    graph = {name: {t for t in imports_of(path) if t in known and t != name} for name, path in known.items()}
    # A package's __init__ is imported with each of its modules; an arrow to it is not a circle.
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start and len(path) > 1:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, cycles[:5]


def test_at_most_eight_modules_sit_at_the_top_of_the_package():
    root = Path(webapp.__file__).parent
    top = [name for name in modules() if name == "webapp" or (name.count(".") == 1 and not (root / name[7:]).is_dir())]
    assert len(top) <= 8, top


def test_an_adapter_reaching_up_into_the_http_edge_or_a_service_would_be_caught():
    assert runs_up("webapp.postgres.database", "webapp.web.pipeline")
    assert runs_up("webapp.postgres.repositories.users", "webapp.services.users")
    assert not runs_up("webapp.cache.users", "webapp.services.ports")  # adapters implement the services' ports
