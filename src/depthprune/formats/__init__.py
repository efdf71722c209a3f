"""Model file formats beyond the Hugging Face checkpoint (GGUF in/out, ...). Import the modules directly."""
