"""Tools: the sage CLI, presets, distillation."""
