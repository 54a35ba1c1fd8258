"""Prompt-lookup drafting against a brute-force search."""

import torch

from accel.schema import SpeculativeConfig
from accel.speculative.draft import NGramDraft


def test_continues_the_latest_match_of_the_longest_suffix():
    tokens = torch.tensor([1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 4, 2, 3])
    draft = NGramDraft(1, 3).propose(tokens, 3)
    # The suffix [2, 3] last occurred at positions 6-7, followed by 7, 8, 4.
    assert draft.tokens.tolist() == [7, 8, 4]
    assert draft.probs is None


def test_falls_back_to_shorter_ngrams_and_to_nothing():
    assert NGramDraft(1, 3).propose(torch.tensor([5, 1, 6, 1]), 2).tokens.tolist() == [6, 1]
    assert NGramDraft(2, 3).propose(torch.tensor([5, 1, 6, 1]), 2).tokens.tolist() == []
    assert NGramDraft(1, 4).propose(torch.tensor([4]), 2).tokens.tolist() == []


def test_proposal_stops_at_the_end_of_the_sequence():
    assert NGramDraft(1, 1).propose(torch.tensor([3, 4, 3]), 5).tokens.tolist() == [4, 3]


def test_from_config():
    drafter = NGramDraft.from_config(SpeculativeConfig(prompt_lookup_min=2, prompt_lookup_max=5))
    assert (drafter.min_n, drafter.max_n) == (2, 5)
