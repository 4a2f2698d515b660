"""The dependency rule between the rooms, read from every import statement
(function-level imports included), transitively."""

from __future__ import annotations

import pytest

from tasks.infra.caching import PROJECT_ROOT, project_modules


def modules_under(package: str) -> list[str]:
    root = PROJECT_ROOT.joinpath(*package.split("."))
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def reaches(module: str, prefix: str) -> list[str]:
    return [m for m in project_modules(module) if m.startswith(prefix)]


@pytest.mark.parametrize("module", modules_under("tasks"))
def test_no_task_module_imports_the_flows(module: str) -> None:
    assert reaches(module, "flows") == []


@pytest.mark.parametrize(
    "module",
    modules_under("tasks.serving")
    + modules_under("tasks.ml")
    + modules_under("tasks.infra"),
)
def test_serving_shared_ml_and_infrastructure_import_no_stage(module: str) -> None:
    assert reaches(module, "tasks.stages") == []


@pytest.mark.parametrize("module", modules_under("tasks.infra"))
def test_infrastructure_imports_no_release_or_serving_code(module: str) -> None:
    assert reaches(module, "tasks.release") == []
    assert reaches(module, "tasks.serving") == []


def test_the_rule_would_catch_a_violation(tmp_path) -> None:
    """The check follows imports inside functions too (the usual way around it)."""
    for package in ("tasks", "tasks/serving", "tasks/stages"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "tasks/stages/clustering.py").write_text("X = 1\n")
    (tmp_path / "tasks/serving/model.py").write_text(
        "def load():\n    from tasks.stages.clustering import X\n    return X\n"
    )
    found = project_modules("tasks.serving.model", root=tmp_path)
    assert "tasks.stages.clustering" in found
