"""Mixed-path batches: rows on different paths computed together equal each row alone along its path."""
from __future__ import annotations

import pytest
import torch

from conftest import block_calls, random_prompts as prompts, tiny_model
from drllm.core import path_batch
from drllm.core.executor import ChoiceBatch, PathExecutor
from drllm.routing.inference import pad_left
from drllm.core.path_batch import PathBatch
from drllm.core.paths import LayerPath

LAYERS = 6
# skips, repeats, the full path, a repeat at the first and last block, and no block at all
COUNTS = [[1, 1, 1, 1, 1, 1], [1, 0, 2, 1, 0, 1], [2, 1, 1, 0, 0, 2], [0, 1, 1, 2, 1, 1], [0] * 6,
          [1, 0, 1, 1, 2, 0]]
PATHS = [LayerPath.from_counts(counts) for counts in COUNTS]


@pytest.fixture(params=["llama", "qwen2", "gemma3"])
def executor(request):
    return PathExecutor(tiny_model(request.param, layers=LAYERS))


def test_steps_rebuild_the_paths_in_block_order():
    batch = PathBatch.of(PATHS)
    assert batch.paths() == PATHS
    assert [step.layer for step in batch.steps] == sorted(step.layer for step in batch.steps)
    assert batch.row_steps().tolist() == [len(path) for path in PATHS]
    # one step per distinct (block, execution); every row on a step that all rows run shares the full batch
    assert len(batch.steps) == sum(max(counts[layer] for counts in COUNTS) for layer in range(LAYERS))
    with pytest.raises(ValueError, match="block order"):
        batch.add_block(0, [1] * len(PATHS))


def test_mixed_generation_equals_each_row_alone_along_its_path(executor):
    batch = prompts()
    input_ids, attention_mask = pad_left(batch)
    state = path_batch.prefill(executor, input_ids, attention_mask, PATHS)
    together = path_batch.continue_generation(executor, state, max_new_tokens=8, eos_token_id=2)
    assert together.paths == PATHS
    for row, (ids, path) in enumerate(zip(batch, PATHS)):
        alone = executor.generate(torch.tensor([ids]), None, path, max_new_tokens=8, eos_token_id=2)
        count = int(alone.num_new[0])
        assert int(together.num_new[row]) == count
        assert together.tokens[row, :count].tolist() == alone.tokens[0, :count].tolist()
        assert torch.allclose(together.logprobs[row, :count], alone.logprobs[0, :count], atol=1e-4)
        assert int(together.layer_applications[row]) == int(alone.layer_applications[0])


def test_mixed_prefill_logits_equal_each_row_alone(executor):
    batch = prompts((4, 8, 8, 6, 5, 7), seed=1)
    input_ids, attention_mask = pad_left(batch)
    state = path_batch.prefill(executor, input_ids, attention_mask, PATHS, use_cache=False, logits="all")
    for row, (ids, path) in enumerate(zip(batch, PATHS)):
        alone = executor.prefill(torch.tensor([ids]), None, path)
        assert torch.allclose(state.logits[row, -len(ids):], alone.logits[0], atol=1e-4)


def test_a_decode_step_runs_each_block_execution_once_for_the_whole_batch(executor):
    """Per decoded token the batch pays one block call per distinct (block, execution), and computes exactly
    the rows' path lengths; decoding each distinct path as its own batch would pay one call per path step."""
    input_ids, attention_mask = pad_left(prompts())
    state = path_batch.prefill(executor, input_ids, attention_mask, PATHS)
    with block_calls(executor) as calls:
        path_batch.decode_step(executor, state, torch.full((len(PATHS),), 5))
    assert len(calls) == len(state.batch.steps) < sum(len(path) for path in set(PATHS))
    assert sum(calls) == sum(len(path) for path in PATHS)


def test_path_count_must_match_the_batch(executor):
    input_ids, attention_mask = pad_left(prompts())
    with pytest.raises(ValueError, match="5 paths for a batch of 6 rows"):
        path_batch.prefill(executor, input_ids, attention_mask, PATHS[:5])


def test_an_embedding_quirk_in_the_executor_reaches_every_mixed_path_forward(executor, monkeypatch, no_tie_guard):
    """One model seam: a made-up architecture quirk (an embedding multiplier) put in `executor.embed` alone is what
    every mixed-path entry point starts from, so their rows still equal the executor's own runs."""
    original, calls = executor.embed, []

    def scaled(input_ids):
        calls.append(tuple(input_ids.shape))
        return original(input_ids) * 3.0

    batch, paths = prompts((4, 8, 6), seed=2), PATHS[:3]
    input_ids, attention_mask = pad_left(batch)
    plain = path_batch.prefill(executor, input_ids, attention_mask, paths).logits
    monkeypatch.setattr(executor, "embed", scaled)
    state = path_batch.prefill(executor, input_ids, attention_mask, paths)
    assert calls == [(3, 8)] and not torch.allclose(state.logits, plain, atol=1e-3)
    for row, (ids, path) in enumerate(zip(batch, paths)):
        alone = executor.prefill(torch.tensor([ids]), None, path, logits="last")
        assert torch.allclose(state.logits[row], alone.logits[0], atol=1e-4)
    calls.clear()
    path_batch.decode_step(executor, state, torch.full((3,), 5))
    assert calls == [(3, 1)]
    calls.clear()
    scored = path_batch.score_together(executor, [path_batch.ScoreRequest(choices, path) for choices, path in
                                                  zip(choice_batches()[:2], paths)], max_padding=float("inf"))
    assert calls == [(6, 10)]  # both option batches in one mixed-path pass
    for (got, _), choices, path in zip(scored, choice_batches()[:2], paths):
        want, _ = executor.score(choices, path)
        assert torch.allclose(torch.tensor([r.logprob for r in got]), torch.tensor([r.logprob for r in want]),
                              atol=1e-4)
    calls.clear()
    generated = path_batch.generate_together(executor, [path_batch.GenerateRequest(ids, path, 3)
                                                        for ids, path in zip(batch, paths)],
                                             eos_token_id=[], max_padding=float("inf"))
    assert calls[0] == (3, 8)  # the batch's prefill, then its decode steps
    for got, ids, path in zip(generated, batch, paths):
        want = executor.generate(torch.tensor([ids]), None, path, max_new_tokens=3, eos_token_id=[])
        assert got.tokens.tolist() == want.tokens.tolist()


@pytest.mark.slow
def test_mixed_smollm2_batch_equals_each_prompt_alone(smollm2):
    """The real embedded model: chat prompts on different paths (skips, a repeat) decoded as one batch."""
    model, tokenizer = smollm2[:2]
    executor = PathExecutor(model)
    full = list(range(30))
    paths = [LayerPath(tuple(full), 30), LayerPath(tuple(l for l in full if l not in (20, 24, 27)), 30),
             LayerPath(tuple(sorted(full + [14])), 30), LayerPath(tuple(l for l in full if l not in (3, 25)), 30)]
    texts = ["What is the capital of France?", "Name a prime number larger than ten.", "Say hello.",
             "Which planet is largest?"]
    batch = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False) for text in texts]
    input_ids, attention_mask = pad_left(batch, tokenizer.pad_token_id or 0)
    state = path_batch.prefill(executor, input_ids, attention_mask, paths)
    together = path_batch.continue_generation(executor, state, max_new_tokens=12)
    for row, (ids, path) in enumerate(zip(batch, paths)):
        alone = executor.generate(torch.tensor([ids]), None, path, max_new_tokens=12)
        count = int(alone.num_new[0])
        assert together.tokens[row, :count].tolist() == alone.tokens[0, :count].tolist()
        assert torch.allclose(together.logprobs[row, :count], alone.logprobs[0, :count], atol=1e-3)


def choice_batches(seed=0, vocab=97):
    """Option batches of different widths and option counts (some with a shared context)."""
    generator = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(3, vocab, (n,), generator=generator).tolist()

    shapes = [(7, [1, 3, 2, 4]), (3, [2, 2]), (11, [1, 1, 5]), (5, [6])]
    return [ChoiceBatch.build([(ids(context), ids(option)) for option in options]) for context, options in shapes]


def test_width_groups_bound_the_padding():
    assert path_batch.width_groups([4, 10, 10, 15], [1, 1, 1, 1], 0.25) == [[0], [1, 2], [3]]
    assert path_batch.width_groups([10, 4, 15], [2, 9, 2], 0.0) == [[1], [0], [2]]
    assert path_batch.width_groups([10, 4, 15], [2, 9, 2], float("inf")) == [[1, 0, 2]]


@pytest.mark.parametrize("max_padding", [0.25, float("inf")])  # several groups, one mixed batch
def test_scoring_several_batches_together_equals_each_alone_with_resumes(executor, max_padding):
    batches = choice_batches()
    earlier = [executor.score(batch, PATHS[number], keep_hidden=True)[1] for number, batch in enumerate(batches)]
    targets = [PATHS[0], PATHS[3], PATHS[5], LayerPath((1, 2, 3, 4, 5), LAYERS)]
    requests = []
    for number, (batch, path) in enumerate(zip(batches, targets)):
        step = path.common_prefix(earlier[number].path) if number != 1 else 0  # one request from scratch
        requests.append(path_batch.ScoreRequest(batch, path, earlier[number] if step else None, step))
    assert [request.resume_step for request in requests] == [6, 0, 1, 3]  # 6: nothing left to run
    together = path_batch.score_together(executor, requests, keep_hidden=True, max_padding=max_padding)
    for request, (scored, state) in zip(requests, together):
        alone, alone_state = executor.score(request.batch, request.path, keep_hidden=True)
        assert [r.num_tokens for r in scored] == [r.num_tokens for r in alone]
        assert torch.allclose(torch.tensor([r.logprob for r in scored]), torch.tensor([r.logprob for r in alone]),
                              atol=1e-4)
        assert [r.is_greedy for r in scored] == [r.is_greedy for r in alone]
        assert len(state.hidden) == len(alone_state.hidden) == len(request.path) + 1
        for got, want in zip(state.hidden, alone_state.hidden):
            assert torch.allclose(got, want, atol=1e-4)
        # the state resumes like score's own
        later = PATHS[4] if request.path is not PATHS[4] else PATHS[1]
        step = later.common_prefix(request.path)
        resumed, _ = executor.score(request.batch, later, resume=state, resume_step=step)
        fresh, _ = executor.score(request.batch, later)
        assert torch.allclose(torch.tensor([r.logprob for r in resumed]), torch.tensor([r.logprob for r in fresh]),
                              atol=1e-4)


def generation_requests(executor, eos):
    """Six prompts of different lengths, each with its own limit; five resume a kept run of the same prompt at
    some step (one with nothing left to compute), one starts from scratch."""
    batch = prompts()
    earlier = [executor.generate(torch.tensor([ids]), None, PATHS[number], max_new_tokens=2, eos_token_id=eos,
                                 keep_hidden=True).prefill for number, ids in enumerate(batch)]
    targets = [PATHS[0], PATHS[3], PATHS[5], LayerPath((1, 2, 3, 4, 5), LAYERS), PATHS[2], PATHS[1]]
    requests = []
    for number, (ids, path) in enumerate(zip(batch, targets)):
        step = path.common_prefix(earlier[number].path) if number != 1 else 0
        requests.append(path_batch.GenerateRequest(ids, path, (8, 3, 6, 8, 5, 7)[number],
                                                   earlier[number] if step else None, step))
    assert [request.resume_step for request in requests] == [6, 0, 1, 3, 0, 2]
    return requests


@pytest.fixture
def no_tie_guard(monkeypatch):
    """Every batched row keeps the batch's tokens (no near-tie is regenerated alone): what the tests compare."""
    monkeypatch.setitem(path_batch.TIE_TOLERANCE, torch.float32, 0.0)
    monkeypatch.setattr(path_batch, "GENERATION_COUNTS", {"batched": 0, "near_tie_alone": 0})
    return path_batch.GENERATION_COUNTS


@pytest.mark.parametrize("max_padding", [0.25, float("inf")])  # several groups, one mixed batch
def test_generating_several_prompts_together_equals_each_alone_with_resumes(executor, max_padding, no_tie_guard):
    # an EOS the first prompt emits after a few tokens, so rows stop at different steps (EOS or their limit)
    first = executor.generate(torch.tensor([prompts()[0]]), None, PATHS[0], max_new_tokens=8,
                              eos_token_id=[]).tokens[0].tolist()
    stop_at = next(index for index in range(1, 8) if first[index] not in first[:index])
    stop = first[stop_at]
    requests = generation_requests(executor, [stop])
    together = path_batch.generate_together(executor, requests, eos_token_id=[stop], keep_hidden=True,
                                            max_padding=max_padding)
    counts = []
    for request, got in zip(requests, together):
        want = executor.generate(torch.tensor([request.input_ids]), None, request.path,
                                 max_new_tokens=request.max_new_tokens, eos_token_id=[stop], keep_hidden=True)
        count = int(want.num_new[0])
        counts.append(count)
        assert int(got.num_new[0]) == count and got.path == want.path
        assert got.tokens[0, :count].tolist() == want.tokens[0, :count].tolist()
        assert torch.allclose(got.logprobs[0, :count], want.logprobs[0, :count], atol=1e-4)
        assert int(got.layer_applications[0]) == int(want.layer_applications[0])
        # the kept run is the prompt's own, as generate leaves it: hidden states, cache slots, logits
        state, alone = got.prefill, want.prefill
        assert state.input_ids.tolist() == alone.input_ids.tolist() and state.attention_mask is None
        assert len(state.hidden) == len(alone.hidden) == len(request.path) + 1
        for mine, theirs in zip(state.hidden, alone.hidden):
            assert mine.shape == theirs.shape and torch.allclose(mine, theirs, atol=1e-4)
        assert len(state.cache.layers) == len(alone.cache.layers) == len(request.path)
        for mine, theirs in zip(state.cache.layers, alone.cache.layers):
            assert mine.keys.shape == theirs.keys.shape and mine.get_seq_length() == theirs.get_seq_length()
            assert torch.allclose(mine.keys, theirs.keys, atol=1e-4)
            assert torch.allclose(mine.values, theirs.values, atol=1e-4)
        assert torch.allclose(state.logits, alone.logits, atol=1e-4)
        # and it resumes like generate's own
        later = LayerPath(request.path.layers[:-1], LAYERS) if len(request.path) > 1 else PATHS[1]
        step = later.common_prefix(request.path)
        resumed = executor.generate(torch.tensor([request.input_ids]), None, later, max_new_tokens=6,
                                    eos_token_id=[], resume=state, resume_step=step)
        fresh = executor.generate(torch.tensor([request.input_ids]), None, later, max_new_tokens=6, eos_token_id=[])
        assert resumed.tokens.tolist() == fresh.tokens.tolist()
    assert no_tie_guard["batched"] >= 5 and no_tie_guard["near_tie_alone"] == 0
    # rows stopped at the EOS and at their own limits
    assert counts[0] == stop_at + 1 < 8 and any(count == request.max_new_tokens for count, request in zip(counts, requests))


def test_near_ties_are_generated_alone(executor, monkeypatch):
    """A row whose greedy choices came within the tolerance of a tie is generated again alone; the others keep
    the batch's tokens."""
    requests = generation_requests(executor, [])
    monkeypatch.setattr(path_batch, "GENERATION_COUNTS", {"batched": 0, "near_tie_alone": 0})
    monkeypatch.setitem(path_batch.TIE_TOLERANCE, torch.float32, 0.0)
    batched = path_batch.generate_together(executor, requests, eos_token_id=[], max_padding=float("inf"))
    assert path_batch.GENERATION_COUNTS == {"batched": 6, "near_tie_alone": 0}
    monkeypatch.setitem(path_batch.TIE_TOLERANCE, torch.float32, float("inf"))
    with block_calls(executor) as calls:
        alone = path_batch.generate_together(executor, requests, eos_token_id=[], max_padding=float("inf"))
    assert path_batch.GENERATION_COUNTS == {"batched": 12, "near_tie_alone": 6}
    assert max(calls) == 6  # the batch ran, then each row alone
    for first, second in zip(batched, alone):
        count = int(second.num_new[0])
        assert int(first.num_new[0]) == count and first.tokens[0, :count].tolist() == second.tokens[0].tolist()


def test_finished_rows_leave_the_decoding_batch(executor, no_tie_guard):
    """Once a quarter of the rows have stopped, the decode steps compute only the live rows."""
    batch = prompts()
    requests = [path_batch.GenerateRequest(ids, path, limit) for ids, path, limit in zip(batch, PATHS,
                                                                                        (1, 9, 1, 9, 9, 9))]
    with block_calls(executor) as calls:
        together = path_batch.generate_together(executor, requests, eos_token_id=[], max_padding=float("inf"))
    assert [int(generation.num_new[0]) for generation in together] == [1, 9, 1, 9, 9, 9]
    prefill = len(PathBatch.of(PATHS).steps)
    live = PathBatch.of([PATHS[row] for row in (1, 3, 4, 5)])
    assert sum(calls[prefill:]) == 8 * sum(len(PATHS[row]) for row in (1, 3, 4, 5))
    assert len(calls) == prefill + 8 * len(live.steps)


@pytest.mark.slow
def test_smollm2_generation_together_equals_each_prompt_alone(smollm2, no_tie_guard):
    """The real embedded model on the paper's formats: ARC letter prompts (chat template) and MATH prompts
    answered in \\boxed{}, each resumed from an earlier run of its own on a parent path, generated as one batch:
    the same tokens, graded answers and run states as generating each alone (the batch's own tokens: the
    near-tie guard is off)."""
    from drllm.data.registry import load_benchmark
    from drllm.formats.answers import get_format

    model, tokenizer = smollm2[:2]
    executor = PathExecutor(model)
    full = tuple(range(30))
    parents = [full, tuple(l for l in full if l != 27), tuple(sorted(full + (14,))), tuple(l for l in full if l != 5)]
    # children as the search makes them: one more edit after the parent's, so they share a prefix
    children = [tuple(l for l in full if l not in (20, 21)), tuple(l for l in full if l not in (27, 29)),
                tuple(sorted(full + (14, 25))), tuple(l for l in full if l not in (5, 6))]
    cases = []
    for name, benchmark, split in (("letter", "arc_easy", "validation"), ("boxed", "dart", "test")):
        answer_format = get_format(name)
        for example in load_benchmark(benchmark, split, limit=4):
            cases.append((answer_format, answer_format.encode(example, tokenizer, chat_template=True)))
    eos = cases[0][0].stop_ids(executor, cases[0][1])
    requests = []
    for number, (answer_format, encoded) in enumerate(cases):
        parent, child = LayerPath(parents[number % 4], 30), LayerPath(children[number % 4], 30)
        earlier = executor.generate(torch.tensor([encoded.input_ids]), None, parent, max_new_tokens=1,
                                    eos_token_id=eos, keep_hidden=True).prefill
        requests.append(path_batch.GenerateRequest(encoded.input_ids, child, encoded.max_new_tokens, earlier,
                                                   child.common_prefix(parent)))
    assert min(request.resume_step for request in requests) >= 5
    together = path_batch.generate_together(executor, requests, eos_token_id=eos, keep_hidden=True,
                                            max_padding=float("inf"))
    for (answer_format, encoded), request, got in zip(cases, requests, together):
        want = executor.generate(torch.tensor([encoded.input_ids]), None, request.path,
                                 max_new_tokens=encoded.max_new_tokens, eos_token_id=eos, keep_hidden=True)
        count = int(want.num_new[0])
        assert int(got.num_new[0]) == count
        assert got.tokens[0, :count].tolist() == want.tokens[0, :count].tolist()
        assert torch.allclose(got.logprobs[0, :count], want.logprobs[0, :count], atol=1e-3)
        assert answer_format.grade_generation(encoded, got, eos) == answer_format.grade_generation(encoded, want, eos)
        for mine, theirs in zip(got.prefill.hidden, want.prefill.hidden):
            assert torch.allclose(mine, theirs, atol=1e-3)
    assert no_tie_guard == {"batched": len(cases), "near_tie_alone": 0}  # the batch's own tokens were compared
