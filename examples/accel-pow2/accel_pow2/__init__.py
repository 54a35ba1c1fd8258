"""accel-pow2: a quant method whose scales are powers of two, so dequantization is an exponent add."""
