"""Docs that stay true: the configuration reference equals what the settings and the schema say, shipped values
that differ from a default say why, every `snakemake` command shown passes a dry run, relative links resolve, and
no citation points at a file that is not there."""
from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import config_reference  # noqa: E402

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "RESULTS.md", REPO / "BENCHMARKS.md"]
COMMAND_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
# Files a shown command needs that the reader makes with another command shown beside it (the GGUF assembled from
# PyPI in docs/running.md), stubbed for the dry run, which only plans.
STUBS = {"resources/gguf/gemma-3-270m-q4_k_m.gguf": b"GGUF"}


def test_configuration_reference_is_generated_from_the_settings():
    text = config_reference.DOC.read_text()
    assert config_reference.problems(text) == []


def test_a_wrong_default_fails_whether_planted_in_the_docs_or_in_the_settings(monkeypatch):
    text = config_reference.DOC.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `train.lr` |"))
    assert "| `0.001` |" in row
    planted = text.replace(row, row.replace("| `0.001` |", "| `0.002` |"))
    assert any("block train: stale rows" in problem and "train.lr" in problem
               for problem in config_reference.problems(planted))

    from drllm.training.train_settings import TrainConfig
    lr = next(field for field in dataclasses.fields(TrainConfig) if field.name == "lr")
    monkeypatch.setattr(lr, "default", 2e-3)
    assert any("train.lr" in problem for problem in config_reference.problems(text))


def test_a_new_key_needs_a_meaning():
    text = config_reference.DOC.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `train.gamma` |"))
    assert "train.gamma: no meaning written" in config_reference.problems(text.replace(row + "\n", ""))


def test_shipped_values_that_differ_from_the_defaults_say_why():
    shipped = config_reference.SHIPPED_PATH.read_text()
    assert config_reference.uncommented_overrides(shipped) == []
    planted = shipped.replace("  epochs: 25                 # paper 25; authors' code 15", "  epochs: 30")
    assert planted != shipped
    assert [line.split(":")[0] for line in config_reference.uncommented_overrides(planted)] == ["train.epochs"]


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(heading) for heading in re.findall(r"^#+ (.+)$", split_fences(path.read_text())[1], re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_relative_links_resolve(doc):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", split_fences(doc.read_text())[1]):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    assert broken == []


def test_no_citation_of_a_method_file_that_is_not_there():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    citing = [name for name in tracked if (REPO / name).is_file() and name != "tests/test_docs.py"
              and "METHOD.md" in (REPO / name).read_text(errors="ignore")]
    assert citing == []
    assert (REPO / "docs" / "method.md").is_file()


def split_fences(text: str) -> tuple[list[tuple[str, str]], str]:
    """A Markdown text's fenced code blocks as (info string, body), and its prose without them."""
    blocks, prose, info, body = [], [], None, []
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if info is None:
                info, body = line[3:].strip(), []
            else:
                blocks.append((info, "".join(body)))
                info = None
        elif info is None:
            prose.append(line)
        else:
            body.append(line)
    return blocks, "".join(prose)


def shown_files() -> dict[str, str]:
    """Code blocks labelled with a file name (```yaml my.yaml): the files the docs tell the reader to write."""
    files = {}
    for doc in COMMAND_DOCS:
        for info, body in split_fences(doc.read_text())[0]:
            if len(info.split()) == 2:
                name = info.split()[1]
                assert files.setdefault(name, body) == body, f"{name} is shown twice, differently"
    return files


def shown_commands() -> list[str]:
    """Every `snakemake` command in the README and docs/: inline code and lines of shell code blocks."""
    commands = []
    for doc in COMMAND_DOCS:
        blocks, prose = split_fences(doc.read_text())
        lines = [line.split("  #")[0].strip() for info, body in blocks if info in ("", "bash", "sh")
                 for line in body.splitlines()]
        for command in lines + re.findall(r"`([^`\n]+)`", prose):
            command = command.removeprefix(".venv/bin/")
            if command.startswith("snakemake ") and command not in commands:
                commands.append(command)
    return commands


@pytest.fixture(scope="module")
def doc_workdir(tmp_path_factory):
    """The workflow with the files the docs show written beside it."""
    work = tmp_path_factory.mktemp("docs")
    for item in ["Snakefile", "rules", "workflow", "config", "envs", "profiles", "slurm", "slurm-ci"]:
        (work / item).symlink_to(REPO / item)
    for name, body in {**shown_files(), **STUBS}.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(body if isinstance(body, bytes) else body.encode())
    return work


def test_the_docs_show_the_everyday_commands():
    commands = shown_commands()
    for expected in ["snakemake --cores all --profile slurm", "snakemake --cores all -R train_routers",
                     "snakemake --cores all --configfile my.yaml", "snakemake --cores all --configfile my_mc.yaml",
                     "snakemake --cores all --configfile capitals.yaml"]:
        assert expected in commands
    assert {"my.yaml", "my_mc.yaml", "capitals.yaml", "data/my_mc.jsonl", "data/capitals.jsonl"} <= set(shown_files())


# `snakemake --report` packs finished results into HTML: it plans nothing, so it has no dry run.
@pytest.mark.parametrize("command", [command for command in shown_commands() if "--report" not in command])
def test_every_snakemake_command_shown_passes_a_dry_run(command, doc_workdir):
    args = shlex.split(command)[1:]
    result = subprocess.run([SNAKEMAKE, *args, "--dry-run"], cwd=doc_workdir, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
