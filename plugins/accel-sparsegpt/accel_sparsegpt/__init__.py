"""accel-sparsegpt: one-shot pruning criteria that use calibration. SparseGPT (Frantar and Alistarh, 2023) prunes
with the OBS update through the layer's inverse Hessian; Wanda (Sun et al., 2023) scores |W_ij| * ||X_j||_2."""
