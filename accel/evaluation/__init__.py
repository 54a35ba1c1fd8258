"""Quality measurements of a model: perplexity on held-out text."""

from accel.evaluation.perplexity import PerplexityResult, evaluate_perplexity, perplexity

__all__ = ["PerplexityResult", "evaluate_perplexity", "perplexity"]
