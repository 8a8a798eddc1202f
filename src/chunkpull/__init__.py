"""chunkpull: fast, verified, chunked pulls of model blobs from Ollama-style registries."""

__version__ = "0.1.0"
