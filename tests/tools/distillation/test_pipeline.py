"""The distill job on the bundled model: the artifact verifies, records the run, and drafts losslessly through
the draft_model strategy; `sage infer distill` writes it, refuses to clobber checkpoints, and resumes."""

import json

import pytest
import torch

from accel.plugins import load_registry
from accel.runtime.artifact import load_artifact
from accel.runtime.loaders import load_model
from accel.schema import SpeculativeConfig
from accel.speculative.decode import plain_generate, speculative_generate
from accel.speculative.verifier import SamplingParams
from accel.tools.distillation import DistillationConfig, distill_loaded
from accel.tools.speculative import build_drafter, chat_input_ids

from ...conftest import run_sage

pytestmark = pytest.mark.slow


def test_distilled_draft_is_an_artifact_and_decoding_with_it_is_lossless(tmp_path):
    target, tokenizer = load_model()
    config = DistillationConfig(num_layers=2, steps=2, seq_len=16, batch_size=1, eval_tokens=32)
    out = tmp_path / "draft"
    report = distill_loaded(target, tokenizer, config, source="bundled", out=out, progress=False)
    assert report.artifact == str(out) and (tmp_path / "draft.checkpoints" / "step-00000002").is_dir()
    draft, _, manifest = load_artifact(out)
    assert draft.config.num_hidden_layers == 2 and len(draft.model.layers) == 2
    record = manifest["distillation"]
    assert record["target"] == "bundled" and record["layers"] == [0, 1] and record["steps"] == 2
    assert record["final_loss"] == record["losses"][-1] and len(record["losses"]) == 2
    assert record["heldout_before"]["num_tokens"] == record["heldout_after"]["num_tokens"] == 32
    assert 0.0 <= record["heldout_after"]["top1_agreement"] <= 1.0 and record["heldout_after"]["kl"] > 0
    assert record["config"] == config.to_dict()

    spec = SpeculativeConfig(strategy="draft_model", draft_model=str(out))
    drafter = build_drafter(load_registry(), spec, target, tokenizer)
    ids = chat_input_ids(tokenizer, "Name three colours of the rainbow.")
    params = SamplingParams()
    expected, _ = plain_generate(target, ids, 16, params, tokenizer.eos_token_id)
    tokens, metrics = speculative_generate(target, ids, drafter, 16, params, spec, tokenizer.eos_token_id)
    assert torch.equal(tokens, expected)
    assert metrics.num_drafts > 0


def test_cli_distill_writes_refuses_and_resumes(tmp_path):
    out = tmp_path / "draft"
    args = ("infer", "distill", "--layers", "1", "--steps", "2", "--seq-len", "16", "--batch", "1",
            "--eval-tokens", "32", "--out", str(out))
    first = run_sage(*args, "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads(first.stdout)
    assert report["artifact"] == str(out) and report["layers"] == [0] and report["resumed_from"] is None
    again = run_sage(*args)
    assert again.returncode == 2 and "pass --resume to continue them" in " ".join(again.stderr.split())
    resumed = run_sage(*args, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["resumed_from"] == 2


def test_cli_distill_names_a_bad_option():
    result = run_sage("infer", "distill", "--layer-selection", "last")
    assert result.returncode == 2
    assert "distill options: layer_selection: got 'last'" in " ".join(result.stderr.split())


def test_cli_distill_trains_medusa_heads_on_generated_text(tmp_path):
    out = tmp_path / "heads"
    result = run_sage("infer", "distill", "--medusa-heads", "2", "--steps", "2", "--seq-len", "16", "--batch", "1",
                      "--eval-tokens", "32", "--text-source", "generated", "--generate-prompts", "8",
                      "--generate-tokens", "16", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["num_heads"] == 2 and report["steps"] == 2 and len(report["heldout_top1_agreement_after"]) == 2
    assert report["config"]["text_source"] == "generated"
    from accel.speculative.medusa import load_heads

    heads, stored = load_heads(out)
    assert heads.num_heads == 2 and stored["report"]["out"] == str(out)
