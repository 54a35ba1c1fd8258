"""Checkpoints restore model, optimizer, scheduler and RNG state; only the latest is kept; no pickle."""

import json

import pytest
import torch

from accel.errors import ArtifactError
from accel.tools.distillation.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

from .conftest import tiny_llama


def trained_state():
    model = tiny_llama(2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    for _ in range(2):
        model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def test_round_trip_restores_everything(tmp_path):
    model, optimizer, scheduler = trained_state()
    torch.manual_seed(123)
    path = save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {"losses": [1.0, 0.5]})
    expected_random = torch.rand(3)
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                     "trainer-state.json"]
    fresh = tiny_llama(2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda step: 1.0 / (step + 1))
    torch.manual_seed(0)
    restored = load_checkpoint(path, fresh, fresh_optimizer, fresh_scheduler)
    assert restored == {"step": 2, "state": {"losses": [1.0, 0.5]}}
    assert torch.equal(torch.rand(3), expected_random)  # RNG state restored
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for index, values in saved["state"].items():
        for name, value in values.items():
            assert torch.equal(value, loaded["state"][index][name]), (index, name)
    assert fresh_scheduler.state_dict() == scheduler.state_dict()


def test_only_the_latest_is_kept(tmp_path):
    model, optimizer, scheduler = trained_state()
    assert latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {})
    latest = save_checkpoint(tmp_path, 10, model, optimizer, scheduler, {})
    (tmp_path / ".step-00000012.tmp-x").mkdir()  # an interrupted write is ignored
    assert latest_checkpoint(tmp_path) == latest and latest.name == "step-00000010"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".step-00000012.tmp-x", "step-00000010"]
    assert json.loads((latest / "trainer-state.json").read_text())["step"] == 10


def test_a_damaged_checkpoint_says_what_to_do(tmp_path):
    model, optimizer, scheduler = trained_state()
    path = save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {})
    (path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match="unreadable checkpoint"):
        load_checkpoint(path, model, optimizer, scheduler)
