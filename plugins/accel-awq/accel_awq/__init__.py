"""accel-awq: AWQ, activation-aware weight quantization (scale search, then clipping search)."""
