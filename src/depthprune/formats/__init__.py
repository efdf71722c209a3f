"""Model file formats beyond the Hugging Face checkpoint: GGUF in/out (``gguf_prune``, ``gguf_export``) and
weight-only quantized checkpoints (``quantize``). Import the modules directly."""
