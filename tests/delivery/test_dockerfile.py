"""Dockerfile invariants, read with dockerfile-parse (no image can be built here), and the entry points
it names, run from the local environment."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
from delivery_support import BIN, REPO, run
from dockerfile_parse import DockerfileParser

FINAL_TARGETS = {"operator": "rectrain-operator", "trainer": "rectrain-train"}


def stages() -> dict[str, dict]:
    """{stage name: {"from": image, "instructions": [(INSTRUCTION, value)]}}, ARG defaults substituted."""
    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    args: dict[str, str] = {}
    out: dict[str, dict] = {}
    current = None
    for item in parser.structure:
        ins, value = item["instruction"], item["value"]
        if ins == "COMMENT":
            continue
        if ins == "ARG" and current is None and "=" in value:
            key, _, default = value.partition("=")
            args[key] = default
        elif ins == "FROM":
            image, _, name = value.partition(" AS ") if " AS " in value else value.partition(" as ")
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image.strip())
            current = name.strip()
            out[current] = {"from": image, "instructions": []}
        else:
            assert current is not None, f"{ins} before the first FROM"
            out[current]["instructions"].append((ins, value))
    return out


def ancestry(all_stages: dict[str, dict], name: str) -> list[str]:
    """The stage and every stage it copies from or builds on."""
    seen, todo = [], [name]
    while todo:
        stage = todo.pop()
        if stage in seen:
            continue
        seen.append(stage)
        if all_stages[stage]["from"] in all_stages:
            todo.append(all_stages[stage]["from"])
        for ins, value in all_stages[stage]["instructions"]:
            m = re.search(r"--from=(\S+)", value)
            if ins == "COPY" and m:
                todo.append(m.group(1))
    return seen


def values(stage: dict, instruction: str) -> list[str]:
    return [v for i, v in stage["instructions"] if i == instruction]


def test_stage_layout_and_pinned_bases():
    s = stages()
    assert {"operator", "trainer"} <= set(s)
    for name, stage in s.items():
        image = stage["from"]
        if image in s:
            continue
        repo, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"stage {name}: base image {image} is not pinned"
    assert s["operator"]["from"].startswith("python:3.11") and "slim" in s["operator"]["from"]
    trainer_base = s["trainer"]["from"]
    assert trainer_base.startswith("pytorch/pytorch:") and "cuda" in trainer_base and trainer_base.endswith("-runtime")
    # The torch version in the base image is the one the project pins (local label such as +cpu aside).
    pins = dict(line.split("==") for line in (REPO / "requirements" / "constraints.txt").read_text().split() if "==" in line)
    assert trainer_base.split(":")[1].startswith(pins["torch"].split("+")[0] + "-")


@pytest.mark.parametrize("target", sorted(FINAL_TARGETS))
def test_final_stages_are_non_root_labelled_and_without_build_tools(target):
    s = stages()
    stage = s[target]
    (user,) = values(stage, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "numeric non-root USER (runAsNonRoot needs a numeric uid)"
    labels = " ".join(values(stage, "LABEL"))
    for key in ("title", "description", "source", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    # Final stages only COPY a ready virtualenv: nothing is compiled, downloaded or cached there.
    assert not values(stage, "RUN"), f"{target}: RUN in the final stage"
    assert not values(stage, "ADD")
    for value in values(stage, "COPY"):
        assert value.startswith("--from="), f"{target}: copies from the build context: {value}"
    env = " ".join(values(stage, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PATH=/opt/rectrain/bin" in env
    # Build stages leave no pip cache and no pip behind.
    for name in ancestry(s, target):
        for run_ in values(s[name], "RUN"):
            if "pip install" in run_:
                assert "--no-cache-dir" in run_, f"{name}: pip install without --no-cache-dir"
            assert "apt-get install" not in run_ or "rm -rf /var/lib/apt/lists" in run_


@pytest.mark.parametrize("target,entry", sorted(FINAL_TARGETS.items()))
def test_entrypoint_is_exec_form_and_runs_here(target, entry):
    stage = stages()[target]
    (raw,) = values(stage, "ENTRYPOINT")
    entrypoint = json.loads(raw)
    assert entrypoint == [entry]
    # The console script exists in the project (pyproject) and runs in this environment.
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'^{re.escape(entry)} = "', pyproject, re.M), f"{entry} is not a [project.scripts] entry"
    result = run([str(BIN / entry), "--help"], timeout=60)
    assert "usage" in result.stdout.lower()


def test_operator_image_has_no_torch_and_trainer_image_checks_nccl():
    s = stages()
    operator_runs = " ".join(r for name in ancestry(s, "operator") for r in values(s[name], "RUN"))
    assert "[operator]" in operator_runs and "[trainer]" not in operator_runs and "torch" not in operator_runs
    assert all(s[name]["from"].startswith("python:") for name in ancestry(s, "operator"))
    trainer_runs = " ".join(r for name in ancestry(s, "trainer") for r in values(s[name], "RUN"))
    assert "[trainer]" in trainer_runs and "is_nccl_available()" in trainer_runs
    # The trainer venv sees the base image's CUDA torch instead of downloading another.
    assert "--system-site-packages" in trainer_runs
    # ... which only works if the CPU torch pin (torch==X+cpu) does not constrain that install.
    assert "grep -v '^torch==' /tmp/constraints.txt > /tmp/constraints-cuda.txt" in trainer_runs
    assert "-c /tmp/constraints-cuda.txt" in trainer_runs and "-c /tmp/constraints.txt \"[trainer]" not in trainer_runs
    # The operator extra really does not pull torch.
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(dep.startswith("torch") for dep in extras["operator"])


def test_copy_sources_exist_and_are_not_dockerignored():
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for must in (".venv", ".git", ".rectrain", "tests"):
        assert must in ignored
    s = stages()
    for name, stage in s.items():
        for value in values(stage, "COPY"):
            if value.startswith("--from="):
                continue
            *sources, _dest = shlex.split(value)
            for src in sources:
                path = REPO / src
                assert path.exists(), f"stage {name}: COPY {src}: no such path"
                top = src.rstrip("/").split("/")[0]
                assert not any(fnmatch.fnmatch(top, pat) or fnmatch.fnmatch(src.rstrip("/"), pat) for pat in ignored), \
                    f"stage {name}: COPY {src} is excluded by .dockerignore"
    # Every package directory pyproject maps is in the wheel stage's context.
    import tomllib

    package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    wheel_copies = " ".join(values(s["wheel"], "COPY"))
    for d in package_dirs:
        assert Path(d).parts[0] + "/" in wheel_copies, f"{d} not copied into the wheel stage"
