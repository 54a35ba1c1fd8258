"""CoTAccelController on the bundled model with tiny settings: lossless equals plain greedy token for token;
the budget caps thinking; early exit stops once probes agree and its side branch leaves the main sequence
untouched; step speculation accepts or rewrites steps; evaluate's summaries add up."""

from __future__ import annotations

import itertools

import pytest
import torch

from accel.data.cot_tasks import arithmetic_tasks
from accel.runtime.loaders import load_model
from accel.schema import CoTConfig
from accel.speculative.cot_controller import CoTAccelController, CoTResult
from accel.speculative.decode import plain_generate
from accel.speculative.draft import ModelDraft, default_skip_layers, layer_skip_model
from accel.speculative.verifier import SamplingParams
from accel.tools.speculative import chat_input_ids

pytestmark = pytest.mark.slow

MAX_NEW = 14
SMALL = {"max_new_tokens": MAX_NEW, "answer_tokens": 6}
TASKS = arithmetic_tasks(2, seed=7)


@pytest.fixture(scope="module")
def bundled():
    torch.manual_seed(0)
    return load_model()


@pytest.fixture(scope="module")
def prompts(bundled) -> list[torch.Tensor]:
    return [chat_input_ids(bundled[1], task.prompt) for task in TASKS]


@pytest.fixture(scope="module")
def baselines(bundled, prompts) -> list[CoTResult]:
    model, tokenizer = bundled
    controller = CoTAccelController(model, tokenizer, config=CoTConfig(**SMALL))
    return [controller.baseline(ids) for ids in prompts]


def controller(bundled, draft=None, extract=None, **fields) -> CoTAccelController:
    model, tokenizer = bundled
    extra = {"extract": extract} if extract is not None else {}
    return CoTAccelController(model, tokenizer, draft, CoTConfig(**SMALL, **fields), **extra)


def test_baseline_is_plain_greedy(bundled, prompts, baselines):
    model, tokenizer = bundled
    plain, _ = plain_generate(model, prompts[0], MAX_NEW, SamplingParams(), tokenizer.eos_token_id)
    tokens = plain[0].tolist()
    assert baselines[0].thinking_ids == [t for t in tokens if t != tokenizer.eos_token_id]
    assert not baselines[0].lossy and baselines[0].mode == "baseline"


def test_lossless_equals_plain_greedy_token_for_token(bundled, prompts, baselines):
    model, tokenizer = bundled
    skip_view = layer_skip_model(model, default_skip_layers(model.config.num_hidden_layers))
    skip = CoTAccelController(model, tokenizer, config=CoTConfig(**SMALL), token_drafter=ModelDraft(skip_view))
    for cot, ids, reference in [(controller(bundled), prompts[0], baselines[0]), (skip, prompts[1], baselines[1])]:
        result = cot.generate(ids, baseline=reference)
        assert result.thinking_ids == reference.thinking_ids
        assert (result.text, result.answer, result.stop_reason) == (reference.text, reference.answer,
                                                                    reference.stop_reason)
        assert not result.lossy and result.thinking_tokens_saved == 0
        assert result.token_speculation["num_generated_tokens"] >= result.thinking_tokens
    assert result.token_speculation["num_drafts"] > 0


def test_budget_caps_thinking_then_forces_the_answer(bundled, prompts, baselines):
    result = controller(bundled, mode="budget", thinking_budget=6).generate(prompts[0], baseline=baselines[0])
    assert result.lossy and result.stop_reason == "budget" and result.thinking_tokens == 6
    assert result.thinking_ids == baselines[0].thinking_ids[:6]
    assert result.thinking_tokens_saved == baselines[0].thinking_tokens - 6
    assert "\nAnswer:" in result.text and 1 <= result.answer_tokens <= 6


def test_early_exit_stops_when_the_probes_agree(bundled, prompts, baselines):
    result = controller(bundled, extract=lambda text: 7, mode="early_exit", probe_interval=4,
                        early_exit_agreement=2).generate(prompts[0], baseline=baselines[0])
    assert result.stop_reason == "early_exit" and result.answer == 7
    assert result.probe_answers == [7, 7] and result.thinking_tokens == 8
    assert result.thinking_ids == baselines[0].thinking_ids[:8]
    assert result.thinking_tokens_saved == baselines[0].thinking_tokens - 8


def test_early_exit_probes_leave_the_main_sequence_untouched(bundled, prompts, baselines):
    counter = itertools.count()
    result = controller(bundled, extract=lambda text: next(counter), mode="early_exit", probe_interval=4,
                        early_exit_agreement=2).generate(prompts[0])  # the probes never agree
    assert result.thinking_ids == baselines[0].thinking_ids
    assert len(result.probe_answers) == (baselines[0].thinking_tokens - 1) // 4
    assert result.target_forward_passes > baselines[0].target_forward_passes  # the probes cost forwards


def test_early_exit_on_real_probes(bundled, prompts, baselines):
    result = controller(bundled, mode="early_exit", probe_interval=4, early_exit_agreement=1).generate(prompts[1])
    assert result.stop_reason == "early_exit" and result.thinking_tokens == 4
    assert result.answer == result.probe_answers[0] is not None
    assert result.text.startswith(baselines[1].text[:5])


@pytest.mark.parametrize(("threshold", "accepted"), [(0.0, True), (1.0, False)])
def test_step_speculation_keeps_or_rewrites_steps(bundled, prompts, baselines, threshold, accepted):
    # The target drafting for itself writes the steps the target would: accepting them or rewriting them
    # leaves the greedy text unchanged, so only the counters differ.
    model = bundled[0]
    result = controller(bundled, draft=model, mode="step_speculation", step_delimiter="\n",
                        step_accept_threshold=threshold).generate(prompts[0], baseline=baselines[0])
    assert result.lossy and result.thinking_ids == baselines[0].thinking_ids
    steps = result.draft_steps_accepted + result.draft_steps_rejected
    assert steps == len(result.step_scores) >= 2
    assert all(0.0 < score < 1.0 for score in result.step_scores)
    assert (result.draft_steps_accepted == steps) is accepted and (result.draft_steps_rejected == steps) is not accepted
    assert result.draft_forward_passes >= result.thinking_tokens
    if accepted:  # prefill, one scoring forward per step, the answer
        assert result.target_forward_passes < baselines[0].target_forward_passes


def test_step_speculation_needs_a_draft(bundled):
    with pytest.raises(ValueError, match="'step_speculation' needs a draft model"):
        controller(bundled, mode="step_speculation")


def test_evaluate_summarises_every_mode(bundled):
    cot = controller(bundled, thinking_budget=5, mode="budget")
    summaries = cot.evaluate(TASKS[:1], ["budget", "lossless"])
    assert list(summaries) == ["baseline", "budget", "lossless"]
    base, budget, lossless = summaries.values()
    assert base.answer_agreement == lossless.answer_agreement == 1.0 and not lossless.lossy and budget.lossy
    assert lossless.mean_thinking_tokens == base.mean_thinking_tokens and lossless.thinking_tokens_saved_pct == 0
    assert budget.mean_thinking_tokens == 5
    assert budget.thinking_tokens_saved_pct == pytest.approx(100 * (1 - 5 / base.mean_thinking_tokens))
    assert budget.accuracy == float(budget.results[0].answer == TASKS[0].answer)
    assert "results" not in budget.row() and budget.row()["tasks"] == 1
