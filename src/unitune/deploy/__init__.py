"""From a run to a running model: merge the adapter, export GGUF for llama.cpp and Ollama, chat."""
