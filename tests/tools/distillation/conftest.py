"""A tiny random Llama (4 layers, vocab 64) and a token stream for it: training runs in milliseconds."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.tools.distillation.data import TokenWindows


def tiny_llama(layers: int = 4, tie: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                         tie_word_embeddings=tie)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def target() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture
def windows() -> TokenWindows:
    tokens = torch.randint(0, 64, (2000,), generator=torch.Generator().manual_seed(1))
    return TokenWindows(tokens, seq_len=16, batch_size=2, seed=0)
