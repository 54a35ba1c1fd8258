"""accel-gptq: GPTQ (Frantar et al., 2022), weight quantization that compensates each column's rounding error
in the columns not yet quantized, using the inverse Hessian of the layer's reconstruction loss."""
