"""Sparsity: mask formats (N:M, block, unstructured) and pruning criteria."""
