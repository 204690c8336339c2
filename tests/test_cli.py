"""The stage scripts' shared helpers (drllm.core.cli: `--*-json` arguments, the error -> exit 2 path;
drllm.core.blocks: unknown keys), and that every script in workflow/scripts goes through them. Fast: no model."""
from __future__ import annotations

import ast
import importlib.util
import json

import pytest

from conftest import REPO
from drllm.core.artifacts import ArtifactError
from drllm.core.blocks import check_keys
from drllm.core.cli import EXPECTED_ERRORS, fail, json_argument, run_script

SCRIPTS = sorted((REPO / "workflow" / "scripts").glob("*.py"))
PARSED_IN = {"evaluate": "evaluation/stage.py", "cross_model_report": "evaluation/summary.py"}  # parse_in_domain


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"drllm_cli_test_{name}", REPO / "workflow" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- json_argument --------------------------------------------------------------------------------------------

def test_json_argument_parses_and_checks_the_top_level():
    assert json_argument('{"seed": 1}', "--settings-json") == {"seed": 1}
    assert json_argument('["a", "b"]', "--in-domain-json", list, items=str) == ["a", "b"]


@pytest.mark.parametrize("text, kwargs, message", [
    ("{not json", {}, "--settings-json is not valid JSON: Expecting property name"),
    ("[1, 2]", {}, "--settings-json must be a JSON object, got [1, 2]"),
    ("null", {}, "--settings-json must be a JSON object, got None"),
    ('"arc"', {"kind": list, "null": True, "items": str, "what": "a list of benchmark names"},
     "--settings-json must be null or a list of benchmark names, got 'arc'"),
    ('["arc", 3]', {"kind": list, "items": str}, "--settings-json must be a JSON list, got ['arc', 3]"),
])
def test_json_argument_errors_name_the_flag(text, kwargs, message):
    with pytest.raises(ValueError) as error:
        json_argument(text, "--settings-json", **kwargs)
    assert str(error.value).startswith(message), str(error.value)


def test_json_argument_null_and_blank():
    for text in ("null", "", "  ", None):
        assert json_argument(text, "--hub-json", null=True) is None
    assert json_argument("{}", "--hub-json", null=True) == {}


def test_json_argument_from_a_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"epochs": 2}))
    assert json_argument(str(path), "--config-json", file=True) == {"epochs": 2}
    assert json_argument('{"epochs": 3}', "--config-json", file=True) == {"epochs": 3}
    with pytest.raises(ValueError, match=r"--config-json is neither valid JSON \(.*\) nor an existing file: 'x.json'"):
        json_argument("x.json", "--config-json", file=True)
    path.write_text("{broken")
    with pytest.raises(ArtifactError, match=r"--config-json file .*train.json is not valid JSON"):
        json_argument(str(path), "--config-json", file=True)
    path.write_text("[]")
    with pytest.raises(ValueError, match="--config-json must be a JSON object, got"):
        json_argument(str(path), "--config-json", file=True)


def test_a_huge_value_is_shortened_in_the_message():
    with pytest.raises(ValueError) as error:
        json_argument(json.dumps(["x" * 1000] * 100), "--settings-json")
    assert len(str(error.value)) < 400


# -- run_script / fail ----------------------------------------------------------------------------------------

def test_expected_errors_exit_2_with_the_script_prefix(capsys):
    def bad_input():
        raise ArtifactError("samples.parquet not found")

    assert run_script("train_routers", bad_input) == 2
    assert capsys.readouterr().err == "train_routers: error: samples.parquet not found\n"
    assert run_script("report", lambda: json_argument("{oops", "--skipped-json")) == 2
    assert capsys.readouterr().err.startswith("report: error: --skipped-json is not valid JSON: ")


def test_run_script_returns_the_body_code_and_lets_bugs_through(capsys):
    assert run_script("x", lambda: None) == 0
    assert run_script("x", lambda: 130) == 130

    def bug():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_script("x", bug)
    assert run_script("x", bug, EXPECTED_ERRORS + (RuntimeError,)) == 2
    assert capsys.readouterr().err == "x: error: a bug\n"
    assert fail("search", ValueError("lost the cluster"), code=1) == 1
    assert capsys.readouterr().err == "search: error: lost the cluster\n"


def test_scripts_report_bad_json_arguments_naming_the_flag(tmp_path, capsys):
    cross = load_script("cross_model_report")
    assert cross.main(["--summary", f"a={tmp_path / 's.parquet'}", "--in-domain-json", "{oops",
                       "--out-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("cross_model_report: error: --in-domain-json is not valid JSON: ")
    train = load_script("train_routers")
    assert train.main(["--model-dir", str(tmp_path), "--samples", "s.parquet", "--config-json", "[1]",
                       "--out-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "train_routers: error: --config-json must be a JSON object, got [1]\n"
    prepare = load_script("prepare_model")
    assert prepare.main(["--model-json", '["x"]', "--out-dir", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err == "prepare_model: error: --model-json must be a JSON object, got ['x']\n"
    assert not (tmp_path / "out").exists() and not (tmp_path / "m").exists()


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.stem)
def test_every_script_goes_through_the_shared_helpers(path):
    """No script parses JSON or prints its own error line: drllm.core.cli does both, one way."""
    text = path.read_text()
    tree = ast.parse(text)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "drllm.core.cli" for alias in node.names}
    assert imported & {"run_script", "fail"}, f"{path.name} does not use run_script / fail"
    assert "json.loads" not in text and ": error:" not in text, path.name
    if "-json" in text:  # parsed by json_argument here, or in the library function the script hands it to
        parser = REPO / "src" / "drllm" / PARSED_IN[path.stem] if path.stem in PARSED_IN else path
        assert "json_argument" in parser.read_text(), f"{path.name} takes a --*-json argument without json_argument"


# -- check_keys -----------------------------------------------------------------------------------------------

def test_check_keys_names_the_block_the_keys_and_the_known_ones():
    check_keys("train config", {"epochs": 1}, ["epochs", "lr"])
    with pytest.raises(ValueError) as error:
        check_keys("train config", {"epochz": 1, "colour": 2, "lr": 3}, ("lr", "epochs"))
    assert str(error.value) == "train config: unknown key(s) ['colour', 'epochz']; known: ['epochs', 'lr']"
    with pytest.raises(ArtifactError, match=r"answer format 'cloze': unknown option\(s\) \['normalise'\]; known: "
                                            r"\['normalize'\]"):
        check_keys("answer format 'cloze'", {"normalise": "chars"}, {"normalize"}, noun="option", error=ArtifactError)
