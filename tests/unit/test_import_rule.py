"""The import rule, as README.md states it: every arrow between webapp's modules points down the layers,
and each third-party driver or framework is imported only where the rule says. A new arrow that runs
back up, or a module nobody placed in a layer, fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import webapp

# Top to bottom. A module may import its own layer or any layer below it, never one above.
LAYERS: dict[str, tuple[str, ...]] = {
    "composition": ("webapp", "webapp.__main__", "webapp.devserver", "webapp.lifecycle", "webapp.gunicorn_settings",
                    "webapp.serving"),
    "edge": ("webapp.pipeline", "webapp.http", "webapp.blueprints", "webapp.json_provider", "webapp.converters",
             "webapp.workers", "webapp.wire", "webapp.observability", "webapp.metrics", "webapp.metrics_files"),
    "services": ("webapp.services",),
    "adapters": ("webapp.unit_of_work", "webapp.repositories", "webapp.cache", "webapp.db", "webapp.transaction",
                 "webapp.connections", "webapp.watchdog", "webapp.migrate"),
    "core": ("webapp.services.ports", "webapp.errors", "webapp.models", "webapp.resilience", "webapp.retry",
             "webapp.config", "webapp.validation", "webapp.serialize"),
}
# Frameworks and drivers: only these layers (or modules) may import them.
THIRD_PARTY: dict[str, tuple[str, ...]] = {
    "flask": ("composition", "edge"),
    "werkzeug": ("composition", "edge"),
    "gunicorn": ("webapp.workers", "webapp.wire", "webapp.lifecycle", "webapp.gunicorn_settings"),
    "psycopg": ("webapp.db", "webapp.transaction", "webapp.connections", "webapp.migrate", "webapp.__main__",
                "webapp.config"),
    "psycopg_pool": ("webapp.db", "webapp.connections"),
    "redis": ("webapp.cache",),
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


def test_frameworks_and_drivers_are_imported_only_where_the_rule_says():
    misplaced = []
    for name, path in modules().items():
        for target in imports_of(path):
            allowed = THIRD_PARTY.get(target.split(".")[0])
            if allowed is not None and name not in allowed and layer_of(name) not in allowed:
                misplaced.append(f"{name} -> {target}")
    assert not misplaced, misplaced


def test_an_adapter_reaching_up_into_the_http_edge_or_a_service_would_be_caught():
    assert runs_up("webapp.db", "webapp.pipeline")
    assert runs_up("webapp.repositories.users", "webapp.services.users")
    assert not runs_up("webapp.cache", "webapp.services.ports")  # adapters implement the services' ports
