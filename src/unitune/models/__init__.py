"""Models: where a model comes from (Hub id, folder, GGUF file, the embedded one), how it loads, and the device and
precision it trains in."""
