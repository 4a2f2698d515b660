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


# What a command must not import before it needs them: the numeric and ML
# libraries (a warm run and --help use none of them).
HEAVY_LIBRARIES = (
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "sklearn",
    "gensim",
    "mlflow",
    "pandera",
    "matplotlib",
    "joblib",
)


def test_importing_the_flows_imports_no_numeric_or_ml_library() -> None:
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import flows.retrain, flows.batch_inference, flows.promote\n"
        f"print(sorted(m for m in {HEAVY_LIBRARIES!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_a_lazy_module_is_the_module_once_used() -> None:
    import json

    from tasks.infra.lazy import LazyModule

    lazy = LazyModule("json")
    assert "json" in repr(lazy)
    assert lazy.dumps({"a": 1}) == json.dumps({"a": 1})
    assert lazy.JSONDecodeError is json.JSONDecodeError
