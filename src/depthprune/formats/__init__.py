"""Output formats: GGUF files and weight-only quantized checkpoints."""
