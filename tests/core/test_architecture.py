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
