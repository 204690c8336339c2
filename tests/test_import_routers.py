"""Routers from elsewhere (drllm.release.imported, workflow/scripts/import_routers.py): a release folder or a hub
repository checked against the model's manifest and copied in, with clear refusals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from conftest import REPO, certified_point
from drllm.core.artifacts import ArtifactError
from drllm.core.models import MANIFEST, file_sha256, read_manifest
from drllm.calibration.calibration import CERTIFIED, read_calibration
from drllm.release.imported import SOURCE_FILE, import_routers, resolve_router_source
from drllm.routing.router import CALIBRATION_FILE, CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, RouterStack
from drllm.routing.router_config import RouterConfig

sys.path.insert(0, str(REPO / "workflow" / "scripts"))
import import_routers as import_script  # noqa: E402

# the embedded model's identity and shape as its manifest records them (a placeholder hash: no model is loaded)
MANIFEST_FIELDS = {"name": "smollm2-135m-instruct", "num_layers": 30, "hidden_size": 576, "revision": None,
                   "weights_sha256": "e4" * 32}


def make_release(out: Path, manifest: dict, card: bool = True, **config) -> RouterStack:
    """A release folder as release_routers.py writes it, routers built for `manifest` (small router MLPs)."""
    fields = dict(base_model=manifest["name"], num_layers=manifest["num_layers"],
                  hidden_size=manifest["hidden_size"], hidden=16, base_model_revision=manifest.get("revision"),
                  base_model_sha256=manifest.get("weights_sha256"))
    stack = RouterStack(RouterConfig(**{**fields, **config}), seed=0)
    stack.save_pretrained(out)
    certified = certified_point("knob", -0.3)
    (out / CALIBRATION_FILE).write_text(json.dumps({"knob": -0.25, "threshold": None, "model": manifest["name"],
                                                    "num_layers": manifest["num_layers"], "certified": certified}))
    if card:
        (out / CARD_FILE).write_text(f"# Dr.LLM routers for {manifest['name']}\n")
    return stack


def model_dir(tmp_path: Path, manifest: dict) -> Path:
    """A model directory as far as the import reads it: its manifest."""
    path = tmp_path / "model"
    path.mkdir(exist_ok=True)
    (path / MANIFEST).write_text(json.dumps(manifest))
    return path


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """huggingface_hub offline, with an empty cache of its own (it reads both settings when imported, so the
    module constants are patched as well as the environment)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_release_folder_imports_and_loads_with_the_loader(tmp_path):
    manifest = dict(MANIFEST_FIELDS)
    stack = make_release(tmp_path / "release", manifest)
    source = resolve_router_source(str(tmp_path / "release"), None)
    assert source == tmp_path / "release"  # a local directory is used as is
    out = tmp_path / "routers"
    record = import_routers(source, manifest, out, source=str(tmp_path / "release"))
    names = [WEIGHTS_FILE, CONFIG_FILE, CALIBRATION_FILE, CARD_FILE]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, SOURCE_FILE])  # no temp files left
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "release" / name).read_bytes(), name
    assert json.loads((out / SOURCE_FILE).read_text()) == record
    assert record["files"] == {name: file_sha256(out / name) for name in names}
    assert record["hub"] is None and record["source"] == str(tmp_path / "release")
    assert record["model"] == {"name": "smollm2-135m-instruct", "revision": None, "weights_sha256": "e4" * 32}
    loaded = RouterStack.for_model(out, manifest)  # what evaluation and calibration call
    assert loaded.config == stack.config
    for (name, a), (_, b) in zip(stack.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert read_calibration(out / CALIBRATION_FILE) == (-0.25, None)
    assert read_calibration(out / CALIBRATION_FILE, CERTIFIED) == (-0.3, None)


@pytest.mark.parametrize("field, value, message", [
    ("name", "llama-3.2-3b", "trained for model 'smollm2-135m-instruct', not 'llama-3.2-3b'"),
    ("weights_sha256", "0" * 64, rf"weights \(sha256\) '(e4){{32}}', not '0{{64}}'"),
    ("revision", "abc123", "has no base_model_revision, so they cannot be checked against the model's revision "
                           "'abc123'"),
    ("num_layers", 24, "trained for 30 layers, but the model has 24"),
    ("hidden_size", 960, "expect hidden size 576, but the model has 960"),
])
def test_routers_for_another_model_are_refused(tmp_path, field, value, message):
    make_release(tmp_path / "release", MANIFEST_FIELDS)
    with pytest.raises(ArtifactError, match=message):
        import_routers(tmp_path / "release", {**MANIFEST_FIELDS, field: value}, tmp_path / "routers")
    assert not (tmp_path / "routers").exists()


def test_revision_mismatch_names_both(tmp_path):
    manifest = {**MANIFEST_FIELDS, "revision": "abc123"}
    make_release(tmp_path / "release", manifest, base_model_revision="def456")
    with pytest.raises(ArtifactError, match="revision 'def456', not 'abc123'"):
        import_routers(tmp_path / "release", manifest, tmp_path / "routers")


def test_routers_that_do_not_name_the_weights_are_refused(tmp_path):
    make_release(tmp_path / "release", MANIFEST_FIELDS, base_model_sha256=None)
    with pytest.raises(ArtifactError, match=r"router_config.json has no base_model_sha256, so they cannot be "
                                            r"checked against the model's weights_sha256 '(e4){32}'"):
        import_routers(tmp_path / "release", MANIFEST_FIELDS, tmp_path / "routers")


def test_missing_and_malformed_files_are_named(tmp_path):
    release = tmp_path / "release"
    make_release(release, MANIFEST_FIELDS)
    (release / CALIBRATION_FILE).rename(tmp_path / "calibration.json")
    with pytest.raises(ArtifactError, match="calibration.json missing.*required.*release_routers.py"):
        import_routers(release, MANIFEST_FIELDS, tmp_path / "routers")
    (tmp_path / "calibration.json").rename(release / CALIBRATION_FILE)
    calibration = json.loads((release / CALIBRATION_FILE).read_text())
    (release / CALIBRATION_FILE).write_text(json.dumps({**calibration, "model": "other-model"}))
    with pytest.raises(ArtifactError, match="made for model 'other-model', but the model has "
                                            "'smollm2-135m-instruct'"):
        import_routers(release, MANIFEST_FIELDS, tmp_path / "routers")
    (release / CALIBRATION_FILE).write_text(json.dumps({**calibration, "knob": 3.0}))
    with pytest.raises(ArtifactError, match="'knob' must be a number in"):
        import_routers(release, MANIFEST_FIELDS, tmp_path / "routers")
    certified = {key: value for key, value in calibration["certified"].items() if key != "certificate"}
    (release / CALIBRATION_FILE).write_text(json.dumps({**calibration, "certified": certified}))
    with pytest.raises(ArtifactError, match=r"the 'certified' object lacks \['certificate'\]"):
        import_routers(release, MANIFEST_FIELDS, tmp_path / "routers")  # the report would show it
    (release / CALIBRATION_FILE).write_text(json.dumps(calibration))
    config = json.loads((release / CONFIG_FILE).read_text())
    (release / CONFIG_FILE).write_text(json.dumps({**config, "hidden": 32}))  # a config that lies about the weights
    with pytest.raises(ArtifactError, match="do not match router_config.json"):
        import_routers(release, MANIFEST_FIELDS, tmp_path / "routers")
    (release / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match="routers.safetensors missing"):
        import_routers(release, MANIFEST_FIELDS, tmp_path / "routers")
    assert not (tmp_path / "routers").exists()


def test_reimport_replaces_a_previous_import(tmp_path):
    make_release(tmp_path / "first", MANIFEST_FIELDS)
    out = tmp_path / "routers"
    import_routers(tmp_path / "first", MANIFEST_FIELDS, out)
    make_release(tmp_path / "second", MANIFEST_FIELDS, card=False, windows=4)
    record = import_routers(tmp_path / "second", MANIFEST_FIELDS, out, source=str(tmp_path / "second"))
    assert not (out / CARD_FILE).exists()  # the first import's card described other routers
    assert set(record["files"]) == {WEIGHTS_FILE, CONFIG_FILE, CALIBRATION_FILE}
    assert RouterStack.for_model(out, MANIFEST_FIELDS).config.windows == 4
    with pytest.raises(ArtifactError, match="the import source and --out-dir are the same directory"):
        import_routers(out, MANIFEST_FIELDS, out)


@pytest.mark.parametrize("source, message", [
    ("no-such-directory", "neither an existing directory nor a valid hub repository id"),
    ("results/routers/no-such", "neither an existing directory nor a valid hub repository id"),
    ("owner/bad--name", "neither an existing directory nor a valid hub repository id"),
])
def test_a_source_that_is_neither_a_directory_nor_a_hub_id(tmp_path, monkeypatch, offline_hub, source, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match=f"routers '{source}': {message}"):
        resolve_router_source(source, None)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ArtifactError, match="'file.txt': not a directory"):
        resolve_router_source("file.txt", None)
    (tmp_path / "release").mkdir()
    with pytest.raises(ArtifactError, match="a revision \\('v1'\\) applies only to a hub repository"):
        resolve_router_source("release", "v1")


def test_an_unreachable_hub_repository_is_named_with_the_hubs_error(tmp_path, monkeypatch, offline_hub):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError) as info:
        resolve_router_source("someone/no-such-routers", "v2")
    message = str(info.value)
    assert message.startswith("routers 'someone/no-such-routers': no such local directory, and not a reachable "
                              "hub repository at revision 'v2' (LocalEntryNotFoundError: ")
    assert "HF_HUB_OFFLINE" in message and "\n" not in message


def test_a_hub_repository_in_the_local_cache_imports_with_its_commit(tmp_path, monkeypatch, offline_hub):
    """Offline, snapshot_download serves a repository from the hub cache (refs/<revision> names the commit,
    snapshots/<commit>/ holds the files): the real hub code, no network."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--someone--smollm2-routers"
    make_release(repo / "snapshots" / commit, MANIFEST_FIELDS)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.chdir(tmp_path)
    source = resolve_router_source("someone/smollm2-routers", None)
    assert source == repo / "snapshots" / commit
    record = import_routers(source, MANIFEST_FIELDS, tmp_path / "routers", source="someone/smollm2-routers")
    assert record["hub"] == {"repo_id": "someone/smollm2-routers", "revision": None, "commit": commit}
    assert RouterStack.for_model(tmp_path / "routers", MANIFEST_FIELDS).num_layers == 30
    with pytest.raises(ArtifactError, match="not a reachable hub repository at revision 'v9'"):
        resolve_router_source("someone/smollm2-routers", "v9")  # a revision the cache does not hold


def test_cli(tmp_path, monkeypatch, offline_hub, capsys):
    make_release(tmp_path / "release", MANIFEST_FIELDS)
    model = model_dir(tmp_path, MANIFEST_FIELDS)
    out = tmp_path / "routers"
    assert import_script.main(["--source", str(tmp_path / "release"), "--model-dir", str(model),
                               "--out-dir", str(out)]) == 0
    assert f"-> {out}: routers for smollm2-135m-instruct" in capsys.readouterr().out
    assert (out / SOURCE_FILE).is_file()
    for argv, message in [
        (["--source", str(tmp_path / "release"), "--model-dir", str(tmp_path / "none")], "drllm_model.json missing"),
        (["--source", "no-such-dir", "--model-dir", str(model)], "neither an existing directory nor a valid hub"),
        (["--source", str(tmp_path / "release"), "--revision", "v1", "--model-dir", str(model)],
         "applies only to a hub repository"),
    ]:
        assert import_script.main([*argv, "--out-dir", str(tmp_path / "other")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("import_routers: error: ") and message in err, err
    model_dir(tmp_path, {**MANIFEST_FIELDS, "name": "other-model"})
    assert import_script.main(["--source", str(tmp_path / "release"), "--model-dir", str(model),
                               "--out-dir", str(tmp_path / "other")]) == 2
    assert "trained for model 'smollm2-135m-instruct', not 'other-model'" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_cli_with_hf_hub_offline_in_the_environment(tmp_path):
    """The script as a rule runs it: HF_HUB_OFFLINE=1 set before huggingface_hub is imported."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("HF_HUB_CACHE", None)
    model = model_dir(tmp_path, MANIFEST_FIELDS)
    result = subprocess.run([sys.executable, str(REPO / "workflow" / "scripts" / "import_routers.py"),
                             "--source", "someone/no-such-routers", "--model-dir", str(model),
                             "--out-dir", str(tmp_path / "routers")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("import_routers: error: routers 'someone/no-such-routers': no such local "
                                    "directory, and not a reachable hub repository (LocalEntryNotFoundError")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "routers").exists()


@pytest.mark.slow
def test_imported_routers_route_the_real_model_as_the_release_does(tmp_path, smollm2_dir, capsys):
    """The CLI against the materialised embedded model: the copy it makes routes every prompt along the path the
    release folder's own stack picks."""
    from drllm.core.executor import PathExecutor
    from drllm.core.models import load_model
    from drllm.routing.inference import RoutedModel

    manifest = read_manifest(smollm2_dir)
    make_release(tmp_path / "release", manifest)
    assert import_script.main(["--source", str(tmp_path / "release"), "--model-dir", str(smollm2_dir),
                               "--out-dir", str(tmp_path / "routers")]) == 0
    assert f"routers for {manifest['name']}" in capsys.readouterr().out
    record = json.loads((tmp_path / "routers" / SOURCE_FILE).read_text())
    assert record["model"]["weights_sha256"] == manifest["weights_sha256"]
    model, tokenizer, _ = load_model(smollm2_dir, device="cpu", dtype="float32")
    executor = PathExecutor(model)
    prompts = [tokenizer(text)["input_ids"] for text in ("Name a prime number larger than ten.",
                                                         "Question: Which gas do plants take in? Answer:",
                                                         "The capital of France is")]
    paths = {}
    for name in ("release", "routers"):
        routed = RoutedModel(executor, RouterStack.for_model(tmp_path / name, manifest), tokenizer=tokenizer)
        paths[name] = routed.route_ids(prompts)
    assert paths["routers"] == paths["release"]
    assert any(path != executor.default_path() for path in paths["release"])  # the routers do route
