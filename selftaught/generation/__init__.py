"""Generation engine: batched sampling and greedy decoding with the KV cache."""
