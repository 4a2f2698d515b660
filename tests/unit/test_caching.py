"""The one cache mechanism: Prefect's INPUTS policy plus the source of the stage's
module and of every project module it imports (no module list kept by hand)."""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.infra.caching import (
    PROJECT_ROOT,
    _stage_code_policy,
    import_statements,
    project_modules,
    source_version,
)
from tasks.stages.training import TrainingConfig

STAGE_MODULES = {
    "ingestion": "tasks.stages.ingestion",
    "preparation": "tasks.stages.preparation",
    "preprocessing": "tasks.stages.preprocessing",
    "features": "tasks.stages.features",
    "clustering": "tasks.stages.clustering",
    "categories": "tasks.stages.categories",
    "training": "tasks.stages.training",
}


def test_a_stage_version_covers_the_helpers_it_imports_and_only_those() -> None:
    modules = project_modules("tasks.stages.preprocessing")
    assert "tasks.ml.text" in modules  # what it tokenises with
    assert "tasks.infra.store" in modules and "data_contracts.schemas" in modules
    assert "tasks.stages" in modules  # packages run on import too
    assert "tasks.stages.features" not in modules
    assert "tasks.release.publishing" not in modules
    # A package stage covers its submodules through its own imports.
    ingestion = project_modules("tasks.stages.ingestion")
    assert "tasks.stages.ingestion.threads" in ingestion
    assert "tasks.stages.ingestion.readers" in ingestion


def every_import(source: str) -> list[str]:
    """Every import statement of a module, from its whole syntax tree."""
    return sorted(
        ast.dump(node)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
    )


def test_the_import_scan_finds_every_import_of_every_project_module() -> None:
    files = [
        path
        for package in ("tasks", "data_contracts", "flows")
        for path in sorted((PROJECT_ROOT / package).rglob("*.py"))
    ]
    assert len(files) > 40
    for path in files:
        source = path.read_text()
        scanned = sorted(ast.dump(node) for node in import_statements(source))
        assert scanned == every_import(source), path


def test_the_import_scan_reads_continued_and_nested_imports_and_skips_prose() -> None:
    source = (
        '"""Docs.\n\nfrom the store import nothing here\n"""\n'
        "from tasks.infra import (\n    store,\n    caching,\n)\n"
        "from tasks.ml.text import tokenise, \\\n    STOP_WORDS\n"
        "def f():\n    if True:\n        import tasks.ml.bundle as b\n"
        "    from . import sibling\n"
    )
    names = [ast.unparse(node) for node in import_statements(source)]
    assert names == [
        "from tasks.infra import store, caching",
        "from tasks.ml.text import tokenise, STOP_WORDS",
        "import tasks.ml.bundle as b",
        "from . import sibling",
    ]
    assert sorted(map(ast.dump, import_statements(source))) == every_import(source)


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """The project's packages copied, so their source can be edited safely."""
    for package in ("tasks", "data_contracts", "flows"):
        shutil.copytree(
            PROJECT_ROOT / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    return tmp_path


def versions(root: Path) -> dict[str, str]:
    return {
        stage: source_version(module, root=root)
        for stage, module in STAGE_MODULES.items()
    }


def test_editing_a_helper_invalidates_the_stage_using_it_and_no_other(
    project_copy: Path,
) -> None:
    before = versions(project_copy)
    assert before == versions(PROJECT_ROOT)  # same source, same versions
    helper = project_copy / "tasks" / "ml" / "text.py"
    helper.write_text(helper.read_text() + "\n# an edit to the tokeniser\n")
    after = versions(project_copy)
    changed = {stage for stage in STAGE_MODULES if before[stage] != after[stage]}
    assert changed == {"preprocessing"}


def test_editing_a_stage_invalidates_that_stage_only(project_copy: Path) -> None:
    before = versions(project_copy)
    stage = project_copy / "tasks" / "stages" / "categories.py"
    stage.write_text(stage.read_text() + "\n# an edit to naming\n")
    after = versions(project_copy)
    assert {s for s in STAGE_MODULES if before[s] != after[s]} == {"categories"}


@dataclass
class _Task:
    fn: object


@dataclass
class _Context:
    task: _Task


def test_the_cache_key_is_inputs_and_code() -> None:
    from tasks.stages.features import build_features
    from tasks.stages.training import train

    policy = _stage_code_policy()
    training = _Context(_Task(train.fn))
    inputs = {"seed": 1, "config": TrainingConfig(), "artifacts_dir": "/a"}
    key = policy.compute_key(training, inputs, {})
    assert key == policy.compute_key(training, dict(inputs), {})
    assert key != policy.compute_key(training, {**inputs, "seed": 2}, {})
    changed = {**inputs, "config": TrainingConfig(C=2.0)}
    assert key != policy.compute_key(training, changed, {})
    assert key != policy.compute_key(_Context(_Task(build_features.fn)), inputs, {})
