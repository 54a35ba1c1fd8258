"""accel-smoothquant: SmoothQuant, per-channel smoothing that makes activations as easy to quantize as weights."""
