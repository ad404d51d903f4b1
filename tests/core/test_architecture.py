"""The layering rules that import-linter cannot see: core takes nothing from `config`
(not even lazily, inside a function), and our tasks are sent as objects, never by name."""

import ast
from pathlib import Path

from config.celery import app as celery_app

APPS_DIR = Path(__file__).resolve().parents[2] / "apps"


def _modules(root: Path) -> dict[str, ast.Module]:
    return {
        str(path.relative_to(APPS_DIR.parent)): ast.parse(path.read_text(), filename=str(path))
        for path in sorted(root.rglob("*.py"))
    }


def _imported_modules(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_core_imports_nothing_from_config():
    offenders = {
        path: sorted(name for name in _imported_modules(tree) if name.split(".")[0] == "config")
        for path, tree in _modules(APPS_DIR / "core").items()
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def _task_decorator_names(tree: ast.Module) -> set[int]:
    """ids of the string nodes that name a task in its own decorator (`name="..."`)."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call):
                    ids.update(
                        id(keyword.value) for keyword in decorator.keywords if keyword.arg == "name"
                    )
    return ids


def test_tasks_are_sent_as_objects_not_by_name():
    celery_app.loader.import_default_modules()
    own_task_names = {name for name in celery_app.tasks if not name.startswith("celery.")}
    assert "core.relay_outbox" in own_task_names
    send_task_calls, name_strings = [], []
    for path, tree in _modules(APPS_DIR).items():
        declared = _task_decorator_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "send_task":
                send_task_calls.append(f"{path}:{node.lineno}")
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in own_task_names
                and id(node) not in declared
            ):
                name_strings.append(f"{path}:{node.lineno} {node.value!r}")
    assert send_task_calls == []
    assert name_strings == []


def _public_functions(tree: ast.Module) -> list[str]:
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name[0] != "_"
    ]


def test_no_public_function_name_means_two_things():
    defined_in: dict[str, list[str]] = {}
    for path, tree in _modules(APPS_DIR).items():
        if "/migrations/" not in path:
            for name in _public_functions(tree):
                defined_in.setdefault(name, []).append(path)
    assert {name: paths for name, paths in defined_in.items() if len(paths) > 1} == {}


# The entities each context's services act on: a service is `<entity>_<action>`.
SERVICE_ENTITIES = {
    "users": ("user", "address"),
    "catalog": (
        "stock",
        "stocks",
        "reservation",
        "reservations",
        "product",
        "products",
        "category",
    ),
    "orders": ("order", "orders"),
    "payments": ("payment", "payments", "webhook"),
}


def test_services_are_named_entity_then_action():
    misnamed = {}
    for context, entities in SERVICE_ENTITIES.items():
        services = _modules(APPS_DIR / context)[f"apps/{context}/services.py"]
        misnamed[context] = [
            name
            for name in _public_functions(services)
            if "_" not in name or name.split("_")[0] not in entities
        ]
    assert {context: names for context, names in misnamed.items() if names} == {}
