"""drllm serve: the engine on a tiny model (batching by path is exact, per-row stops, echo logprobs, every bad
request named), and one real server on the embedded SmolLM2 through Ray Serve (the openai client, streaming,
greedy equal to the executor, 4xx bodies, a bounded load test that loses nothing)."""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
import torch

from conftest import tiny_model
from drllm.core.executor import PathExecutor
from drllm.core.paths import LayerPath
from drllm.serving.engine import Engine, RequestError, decode_groups
from drllm.serving.settings import BATCHING, ServeSettings

TINY = "tiny-serve"


def skipping_routers(name: str, num_layers: int, hidden_size: int, out_dir, bias=(1.0, 2.0, -5.0), scale=3.0):
    """Seeded random routers biased to skip, so prompts take different paths; saved to `out_dir`."""
    from drllm.routing.router import RouterStack
    from drllm.routing.router_config import RouterConfig

    stack = RouterStack(RouterConfig(name, num_layers, hidden_size), seed=0)
    with torch.no_grad():
        for router in stack.routers:
            router.fc2.bias.copy_(torch.tensor(bias))
            router.fc2.weight.mul_(scale)
    stack.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_dir):
    """A materialised 4-layer random llama with SmolLM2's tokenizer and chat template (context 256)."""
    from transformers import AutoTokenizer

    from drllm.core.artifacts import write_json
    from drllm.core.models import MANIFEST

    out = tmp_path_factory.mktemp("tiny_serve")
    model = tiny_model("llama", layers=4, vocab_size=49152, eos_token_id=2, bos_token_id=1, pad_token_id=2)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(out)
    write_json(out / MANIFEST, {"name": TINY, "source": "local", "path": str(out), "num_layers": 4,
                                "hidden_size": 64, "chat_template": True})
    skipping_routers(TINY, 4, 64, out / "routers", bias=(0.0, 0.0, -5.0), scale=30.0)
    return out


@pytest.fixture(scope="module")
def engine(tiny_dir):
    return Engine(ServeSettings.from_dict({"model": {"name": TINY, "source": "local"}, "model_dir": str(tiny_dir),
                                           "routers": str(tiny_dir / "routers"),
                                           "operating_points": ["router", "base"], "max_tokens_limit": 64}))


def run_all(engine: Engine, jobs):
    texts, finals = [""] * len(jobs), [None] * len(jobs)
    for events in engine.run(jobs):
        assert len(events) == len(jobs)
        for index, event in enumerate(events):
            if event is not None:
                assert finals[index] is None, "an event after the job finished"
                texts[index] += event.text
                if event.finished:
                    finals[index] = event
    assert all(final is not None for final in finals)
    return texts, finals


PROMPTS = ["What is the capital of France?", "Name a color.", "Write one word about the sea, please, now.", "2+2?",
           "Tell me a story about a cat and a dog who became friends.", "Hi"]


def test_decode_groups():
    a, b, c = (LayerPath(layers, 4) for layers in [(0, 1, 2, 3), (0, 2, 3), (1, 1, 3)])
    paths = [a, b, a, c, b, a]
    assert decode_groups(paths, "mixed") == [[0, 1, 2, 3, 4, 5]]
    assert decode_groups(paths, "by_path") == [[0, 2, 5], [1, 4], [3]]
    assert decode_groups(paths, "grouped") == [[0, 2, 5], [1, 4], [3]]
    assert decode_groups([a, b, c, a], "grouped") == [[0, 3], [1, 2]]  # the singletons as one mixed batch
    with pytest.raises(ValueError, match="batching"):
        decode_groups(paths, "sorted")


@pytest.mark.parametrize("batching", BATCHING)
def test_batch_rows_equal_each_row_alone(engine, batching, monkeypatch):
    """Every grouping gives each row the executor's own greedy tokens on its path, alone; paths really differ."""
    monkeypatch.setattr(engine, "settings", ServeSettings.from_dict({**engine.settings.to_dict(),
                                                                     "batching": batching}))
    jobs = [engine.chat_job({"model": f"{TINY}:{point}", "messages": [{"role": "user", "content": prompt}],
                             "max_tokens": 6}) for prompt in PROMPTS for point in ("router", "base")]
    _, finals = run_all(engine, jobs)
    routed = {final.path for job, final in zip(jobs, finals) if job.point == "router"}
    assert len(routed) >= 2  # the mixed-path batch is really mixed
    for job, final in zip(jobs, finals):
        alone = engine.executor.generate(torch.tensor([job.prompt_ids]), None, final.path, max_new_tokens=6,
                                         eos_token_id=engine.eos_ids)
        expected = alone.tokens[0, :int(alone.num_new[0])].tolist()
        assert final.token_ids + ([2] if final.finish_reason == "stop" else []) == expected
        assert final.completion_tokens == len(final.token_ids)


def test_rows_stop_on_their_own(engine):
    """max_tokens per row in one batch, and a stop string cuts the text before it."""
    jobs = [engine.completion_jobs({"model": TINY, "prompt": PROMPTS[i], "max_tokens": n})[0]
            for i, n in enumerate((1, 3, 7))]
    texts, finals = run_all(engine, jobs)
    assert [final.completion_tokens for final in finals] == [1, 3, 7]
    assert all(final.finish_reason == "length" for final in finals)
    full = texts[2]
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert stop.strip(), full
    job = engine.completion_jobs({"model": TINY, "prompt": PROMPTS[2], "max_tokens": 7, "stop": [stop]})[0]
    (text,), (final,) = run_all(engine, [job])
    assert text == full[:full.find(stop)] and final.finish_reason == "stop"


def test_echo_logprobs_are_the_executors_loglikelihood(engine):
    """echo + logprobs (lm-eval's local-completions scoring) gives log p(continuation | context)."""
    tokenizer = engine.tokenizer
    context, continuation = tokenizer("The sky is")["input_ids"], tokenizer(" blue today")["input_ids"]
    job = engine.completion_jobs({"model": f"{TINY}:base", "prompt": [context + continuation], "echo": True,
                                  "logprobs": 1, "max_tokens": 1})[0]
    (_,), (final,) = run_all(engine, [job])
    values = final.logprobs["token_logprobs"]
    assert values[0] is None and len(values) == len(context) + len(continuation) + 1
    scored = sum(values[len(context):-1])
    (expected,) = engine.executor.loglikelihood([(context, continuation)])
    assert scored == pytest.approx(expected.logprob, abs=1e-4)
    tops = final.logprobs["top_logprobs"][len(context):-1]
    greedy = all(value == max(top.values()) for value, top in zip(values[len(context):-1], tops))
    assert greedy == expected.is_greedy


BAD = [  # (endpoint, body, HTTP status, the field named)
    ("completions", {"model": TINY}, 400, "prompt"),
    ("completions", {"model": TINY, "prompt": ""}, 400, "prompt"),
    ("completions", {"model": TINY, "prompt": []}, 400, "prompt"),
    ("completions", {"model": TINY, "prompt": [10 ** 9]}, 400, "prompt"),
    ("completions", {"model": "gpt-4", "prompt": "hi"}, 404, "model"),
    ("completions", {"prompt": "hi"}, 400, "model"),
    ("completions", {"model": TINY, "prompt": "hi", "max_tokens": 65}, 400, "max_tokens"),
    ("completions", {"model": TINY, "prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ("completions", {"model": TINY, "prompt": "hi", "max_tokens": "8"}, 400, "max_tokens"),
    ("completions", {"model": TINY, "prompt": "hi " * 300}, 400, "prompt"),
    ("completions", {"model": TINY, "prompt": "hi " * 250, "max_tokens": 64}, 400, "max_tokens"),
    ("completions", {"model": f"{TINY}:static@2", "prompt": "hi"}, 400, "operating_point"),
    ("completions", {"model": TINY, "prompt": "hi", "operating_point": "router@0.3"}, 400, "operating_point"),
    ("completions", {"model": TINY, "prompt": "hi", "temperature": 0.7}, 400, "temperature"),
    ("completions", {"model": TINY, "prompt": "hi", "logprobs": 99}, 400, "logprobs"),
    ("completions", {"model": TINY, "prompt": "hi", "stop": [""]}, 400, "stop"),
    ("chat", {"model": TINY}, 400, "messages"),
    ("chat", {"model": TINY, "messages": []}, 400, "messages"),
    ("chat", {"model": TINY, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0]"),
    ("chat", {"model": TINY, "messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
]


@pytest.mark.parametrize("endpoint,body,status,param", BAD, ids=[f"{e}-{p}-{i}" for i, (e, _, _, p) in
                                                                 enumerate(BAD)])
def test_bad_requests_name_the_field(engine, endpoint, body, status, param):
    with pytest.raises(RequestError) as info:
        (engine.completion_jobs if endpoint == "completions" else engine.chat_job)(body)
    error = info.value
    assert (error.status, error.param) == (status, param)
    assert error.body()["error"]["param"] == param and error.message


def test_operating_points_refused_with_reasons(tiny_dir):
    base = {"model": {"name": TINY, "source": "local"}, "model_dir": str(tiny_dir)}
    for points, message in ((["oracle"], "gold answer"), (["random@1"], "per evaluation example"),
                            (["static"], "static@<k>"), (["router"], "needs routers"), (["nonsense"], "unknown"),
                            (["static@2"], "serve.influence")):
        with pytest.raises(ValueError, match=message):
            Engine(ServeSettings.from_dict({**base, "operating_points": points}))
    with pytest.raises(ValueError, match="serve.batching must be one of"):
        ServeSettings.from_dict({"batching": "fast"})
    with pytest.raises(ValueError, match="serve.*port"):
        ServeSettings.from_dict({"prot": 1})


def test_cli_print_config_is_a_ray_serve_config(capsys, tmp_path):
    """--print-config writes the settings (file + flags) as a Ray Serve config naming build_app."""
    import yaml

    from drllm.serving.cli import main

    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"serve": {"operating_points": ["base"], "max_batch_size": 4}}))
    assert main(["serve", "--config", str(config), "--operating-point", "router@certified", "--operating-point",
                 "base", "--num-replicas", "2", "--port", "8100", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    (app,) = printed["applications"]
    assert app["import_path"] == "drllm.serving.app:build_app" and printed["http_options"]["port"] == 8100
    settings = ServeSettings.from_dict(app["args"])
    assert settings.operating_points == ["router@certified", "base"]
    assert (settings.num_replicas, settings.max_batch_size) == (2, 4)


def test_cli_refuses_a_bad_setting(capsys):
    from drllm.serving.cli import main

    assert main(["serve", "--port", "70000", "--print-config"]) == 2
    assert "serve.port must be an integer >= 0 and <= 65535" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# One real server: the embedded SmolLM2 on Ray Serve
# ------------------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(smollm2_dir, tmp_path_factory):
    """The app on the embedded model, with `base` and seeded skipping routers as `router`, served in this process
    (drllm.serving.app.serve_in_process: the same routes and engine, LocalBatcher for Ray Serve's batching)."""
    from drllm.core.models import read_manifest
    from drllm.serving.app import serve_in_process

    manifest = read_manifest(smollm2_dir)
    routers = skipping_routers(manifest["name"], manifest["num_layers"], manifest["hidden_size"],
                               tmp_path_factory.mktemp("serve_routers"))
    settings = ServeSettings.from_dict({"model": {"name": manifest["name"]}, "model_dir": str(smollm2_dir),
                                        "routers": str(routers), "operating_points": ["base", "router"],
                                        "port": free_port(), "max_tokens_limit": 256})
    running = serve_in_process(settings)
    yield f"http://127.0.0.1:{settings.port}", manifest["name"]
    running.should_exit = True


@pytest.mark.slow
def test_ray_serve_application_answers(tiny_dir):
    """`drllm serve`'s path: a local Ray, the Serve application (FastAPI ingress, @serve.batch), its routes."""
    import ray
    from ray import serve

    from drllm.serving.cli import start

    settings = ServeSettings.from_dict({"model": {"name": TINY, "source": "local"}, "model_dir": str(tiny_dir),
                                        "routers": str(tiny_dir / "routers"), "operating_points": ["router", "base"],
                                        "port": free_port(), "threads": 1})
    for attempt in range(3):  # Ray gives its raylet 30 s and the HTTP proxy 60 s to start: on a loaded shared CPU
        try:                  # they may not make it (a bare Exception, an ActorDiedError): start again
            start(settings, blocking=False)
            break
        except Exception:  # noqa: BLE001
            if ray.is_initialized():
                serve.shutdown()
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        url = f"http://127.0.0.1:{settings.port}"
        status, body = http(f"{url}/v1/completions", {"model": TINY, "prompt": ["Hi", "Hello there"],
                                                      "max_tokens": 3})
        assert status == 200 and [c["index"] for c in body["choices"]] == [0, 1], body
        assert all(c["drllm"]["operating_point"] == "router" for c in body["choices"])
        status, body = http(f"{url}/v1/completions", {"model": "other", "prompt": "Hi"})
        assert status == 404 and body["error"]["param"] == "model"
        status, body = http(f"{url}/health", b"", method="GET")
        assert status == 200 and set(body["operating_points"]) == {"router", "base"}
    finally:
        serve.shutdown()
        ray.shutdown()


def http(url: str, body: bytes | dict, method: str = "POST") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data if method == "POST" else None, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_openai_client_completions_chat_and_stream(server, smollm2):
    from openai import OpenAI

    url, name = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert {model.id for model in client.models.list().data} == {name, f"{name}:base", f"{name}:router"}
    completion = client.completions.create(model=name, prompt="The capital of France is", max_tokens=6)
    assert completion.choices[0].text.strip() and completion.usage.completion_tokens <= 6
    assert completion.choices[0].model_extra["drllm"]["layers_executed"] == 30
    messages = [{"role": "user", "content": "Name one primary color."}]
    chat = client.chat.completions.create(model=f"{name}:router", messages=messages, max_tokens=8)
    extension = chat.choices[0].model_extra["drllm"]
    assert extension["operating_point"] == "router" and extension["layers_executed"] == len(extension["layers"])
    assert extension["layers_executed"] < 30
    assert extension["read_blocks"] == 0.0  # mlp routers read nothing beyond the blocks
    chunks = list(client.chat.completions.create(model=f"{name}:router", messages=messages, max_tokens=8,
                                                 stream=True))
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert streamed == chat.choices[0].message.content and len(chunks) >= 3
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason
    assert chunks[-1].model_extra["drllm"]["path"] == extension["path"]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["base", "router"])
def test_greedy_completion_is_the_executors_greedy_generation(server, smollm2, point):
    """Token for token: the server's greedy completion and PathExecutor.generate on the path it reports."""
    model, tokenizer = smollm2
    url, name = server
    ids = tokenizer("Question: Which planet is known as the red planet?\nAnswer:")["input_ids"]
    status, body = http(f"{url}/v1/completions", {"model": f"{name}:{point}", "prompt": ids, "max_tokens": 12,
                                                  "logprobs": 0})
    assert status == 200, body
    choice = body["choices"][0]
    path = LayerPath(tuple(choice["drllm"]["layers"]), 30)
    alone = PathExecutor(model).generate(torch.tensor([ids]), None, path, max_new_tokens=12)
    expected = alone.tokens[0, :int(alone.num_new[0])].tolist()
    assert choice["logprobs"]["tokens"] == [tokenizer.decode([token]) for token in expected]
    assert choice["text"] == tokenizer.decode([t for t in expected if t != tokenizer.eos_token_id],
                                              skip_special_tokens=True)


@pytest.mark.slow
def test_bad_requests_get_4xx_naming_the_field(server):
    url, name = server
    cases = [(b"{not json", 400, None, "invalid_json"),
             (b"[1, 2]", 400, None, "invalid_json"),
             ({"model": name}, 400, "prompt", None),
             ({"model": name, "prompt": ""}, 400, "prompt", None),
             ({"model": "nope", "prompt": "hi"}, 404, "model", "model_not_found"),
             ({"model": name, "prompt": "hi", "max_tokens": 100000}, 400, "max_tokens", None),
             ({"model": name, "prompt": "word " * 9000}, 400, "prompt", "context_length_exceeded"),
             ({"model": name, "prompt": "hi", "operating_point": "router@t0.5"}, 400, "operating_point", None)]
    for body, status, param, code in cases:
        got, answer = http(f"{url}/v1/completions", body)
        assert got == status and answer["error"]["param"] == param, (body, answer)
        assert answer["error"]["message"] and (code is None or answer["error"]["code"] == code)
    got, answer = http(f"{url}/v1/chat/completions", {"model": name, "messages": "hi"})
    assert got == 400 and answer["error"]["param"] == "messages"
    got, answer = http(f"{url}/v1/nowhere", {})
    assert got == 404 and "error" in answer
    got, answer = http(f"{url}/health", b"", method="GET")
    assert got == 200 and answer["status"] == "ok"


@pytest.mark.slow
def test_bounded_load_loses_nothing(server):
    """24 requests, 8 in flight, base and router interleaved: all answered, and batched together."""
    from drllm.serving.load import run_load

    url, name = server
    _, before = http(f"{url}/health", b"", method="GET")
    bodies = [{"model": f"{name}:{('base', 'router')[i % 2]}", "prompt": f"Count to {i}:", "max_tokens": 4}
              for i in range(24)]
    result = run_load(f"{url}/v1/completions", bodies, concurrency=8, timeout_s=300)
    assert result.summary()["lost"] == 0 and result.count("ok") == 24, [o.error for o in result.outcomes]
    _, after = http(f"{url}/health", b"", method="GET")
    assert after["batches"] - before["batches"] < 24  # some requests shared a batch


@pytest.mark.slow
def test_lm_eval_local_completions_scores_as_the_drllm_model(server, smollm2_dir):
    """lm-eval's local-completions through the server = lm-eval's drllm model, same operating point (base)."""
    import lm_eval
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    from drllm.evaluation.lmeval import DrLLM
    from drllm.evaluation.lmeval_tasks import PATH

    url, name = server
    scores = {}
    for label, lm in (("server", LocalCompletionsAPI(base_url=f"{url}/v1/completions", model=f"{name}:base",
                                                      tokenizer=str(smollm2_dir), tokenizer_backend="huggingface",
                                                      num_concurrent=8, max_retries=1)),
                      ("drllm", DrLLM(pretrained=str(smollm2_dir), device="cpu"))):
        results = lm_eval.simple_evaluate(model=lm, tasks=["arc_easy_offline"], limit=12, log_samples=True,
                                          task_manager=TaskManager(include_path=str(PATH)), random_seed=0,
                                          numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
        samples = sorted(results["samples"]["arc_easy_offline"], key=lambda s: s["doc_id"])
        scores[label] = ([s["acc"] for s in samples], [[r[0] for r in s["filtered_resps"]] for s in samples])
    assert scores["server"][0] == scores["drllm"][0]
    for served, own in zip(scores["server"][1], scores["drllm"][1]):
        assert served == pytest.approx(own, abs=2e-3)
