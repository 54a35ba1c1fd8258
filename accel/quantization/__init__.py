"""Quantization: weight/activation/KV quantizers, calibration, and the algorithms' interface."""

from accel.quantization.method import LinearStats, QuantMethod
from accel.quantization.weight_quant import QuantizedWeight, WeightQuantArgs, dequantize, quantize

__all__ = ["LinearStats", "QuantMethod", "QuantizedWeight", "WeightQuantArgs", "dequantize", "quantize"]
