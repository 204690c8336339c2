"""Shared fixtures: tiny random models (milliseconds per forward) and the real embedded SmolLM2."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
REPO = Path(__file__).resolve().parents[1]
PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"  # toy extension-point entries (toy_plugins)


@pytest.fixture
def toy_plugins():
    """The toy reward, labeler, router kind and method registered for one test, removed afterwards."""
    import sys

    if str(PLUGINS_DIR) not in sys.path:
        sys.path.insert(0, str(PLUGINS_DIR))
    import toy_plugins as module

    module.register_all()
    yield module
    module.unregister_all()


@pytest.fixture
def toy_method(toy_plugins):
    return toy_plugins.TOY_METHOD


def tiny_model(kind: str = "llama", layers: int = 4, seed: int = 0, **overrides):
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    common = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    common.update(overrides)
    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif kind == "mistral":
        model = MistralForCausalLM(MistralConfig(sliding_window=6, **common))
    elif kind == "gemma3":  # sliding and full attention layers, rotary embeddings per attention type
        types = ["sliding_attention", "sliding_attention", "full_attention"]
        model = Gemma3ForCausalLM(Gemma3TextConfig(head_dim=16, sliding_window=4, **common,
                                                   layer_types=[types[i % 3] for i in range(layers)]))
    else:
        raise ValueError(kind)
    return model.eval().requires_grad_(False)


def certified_point(axis: str, value: float) -> dict:
    """A calibration file's `certified` object as calibrate writes it: `value` on `axis` (knob | threshold),
    certified on 100 calibration prompts whose answers never change (accuracy drop, the default loss)."""
    from drllm.calibration.calibration import PointLosses, certify_point
    from drllm.calibration.certify import CertifyConfig

    losses = PointLosses([0.0] * 100, [0.0] * 100, [1.0] * 100)
    return certify_point({(axis, value): losses}, CertifyConfig(0.05, 0.1))


@contextlib.contextmanager
def block_calls(executor):
    """Record the batch size of every block call `executor` makes inside the block."""
    calls = []
    original = executor.apply_block

    def counting(hidden, layer, *args, **kwargs):
        calls.append(hidden.shape[0])
        return original(hidden, layer, *args, **kwargs)

    executor.apply_block = counting
    try:
        yield calls
    finally:
        del executor.apply_block


def random_prompts(lengths=(5, 9, 12, 7, 9, 3), seed=0, vocab=97):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


@pytest.fixture(params=["llama", "qwen2"])
def tiny(request):
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The embedded SmolLM2 materialised once per session through `source: gguf` at the packaged file (the
    embedded source is that same spec: test_models checks it), or reused from resources/ if the demo made it
    from the same GGUF file with the current manifest."""
    from drllm.core.models import MANIFEST, ModelSpec, embedded_gguf, file_sha256, materialize, read_manifest

    gguf = embedded_gguf()
    prepared = REPO / "resources" / "models" / "smollm2-135m-instruct"
    if (prepared / MANIFEST).is_file() and read_manifest(prepared).get("gguf_sha256") == file_sha256(gguf):
        return prepared
    out = tmp_path_factory.mktemp("smollm2")
    materialize(ModelSpec(name="smollm2-135m-instruct", source="gguf", path=str(gguf)), out)
    return out


@pytest.fixture(scope="session")
def slurm_slice(tmp_path_factory, smollm2_dir):
    """tests/test_slurm.py's scheduler run (a slice of the tiny config through real SLURM jobs), started once."""
    from test_slurm import SlurmSlice

    run = SlurmSlice(tmp_path_factory.mktemp("slurm"), smollm2_dir)
    yield run
    run.stop()


@pytest.fixture(scope="session", autouse=True)
def _slurm_slice_starts_early(request):
    """When the SLURM test is selected and a cluster answers, its run starts at the session's first test: its
    scheduler round trips are mostly waiting, so they overlap the suite instead of adding ~100 s to it."""
    if any(getattr(item, "module", None) is not None and item.module.__name__ == "test_slurm"
           for item in request.session.items):
        from test_slurm import cluster_up

        if cluster_up():
            request.getfixturevalue("slurm_slice")


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    from drllm.core.models import load_model

    model, tokenizer, manifest = load_model(smollm2_dir, device="cpu", dtype="float32")
    return model, tokenizer
