"""The student keeps copies of the chosen layers, renumbered, and computes what the target would with the
other layers bypassed."""

import pytest
import torch
from transformers import DynamicCache

from accel.speculative.draft import layer_skip_model
from accel.tools.distillation import make_student, select_layers

from .conftest import tiny_llama


def test_select_layers():
    assert select_layers(30, 6, "first") == [0, 1, 2, 3, 4, 5]
    assert select_layers(30, 6, "strided") == [0, 6, 12, 17, 23, 29]
    assert select_layers(30, 1, "strided") == [0]
    assert select_layers(4, 4, "strided") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cannot keep 31 of the target's 30 layers"):
        select_layers(30, 31, "first")


@torch.no_grad()
@pytest.mark.parametrize("layers", [[0, 2, 3], [0, 1, 2, 3]])
def test_student_matches_the_target_with_the_other_layers_skipped(target, layers):
    student = make_student(target, layers)
    assert student.config.num_hidden_layers == len(layers) and len(student.model.layers) == len(layers)
    assert target.config.num_hidden_layers == 4  # the target is not changed
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == list(range(len(layers)))
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    skipped = [i for i in range(4) if i not in layers]
    expected = layer_skip_model(target, skipped)(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(student(input_ids=ids, use_cache=False).logits, expected)
    # Its own KV cache has one entry per kept layer, and incremental decoding matches a full forward.
    cache = DynamicCache()
    student(input_ids=ids[:, :4], cache=cache, use_cache=True)
    last = student(input_ids=ids[:, 4:], cache=cache, use_cache=True).logits
    assert len(cache.layers) == len(layers)
    torch.testing.assert_close(last, expected[:, 4:])


def test_student_owns_its_weights(target):
    student = make_student(target, [0, 3])
    assert student.lm_head.weight is student.model.embed_tokens.weight  # tying kept
    target_ptrs = {p.data_ptr() for p in target.parameters()}
    assert not any(p.data_ptr() in target_ptrs for p in student.parameters())
    torch.testing.assert_close(student.model.layers[1].mlp.up_proj.weight, target.model.layers[3].mlp.up_proj.weight)


def test_untied_output_head_is_copied():
    target = tiny_llama(tie=False)
    student = make_student(target, [0, 1])
    assert student.lm_head.weight is not student.model.embed_tokens.weight
    torch.testing.assert_close(student.lm_head.weight, target.lm_head.weight)


@pytest.mark.parametrize("layers", [[], [2, 1], [0, 4], [1, 1]])
def test_bad_layer_lists_are_refused(target, layers):
    with pytest.raises(ValueError, match="layers must be increasing indices in 0..3"):
        make_student(target, layers)
