"""Generation and next-token scoring behind one interface (`engines`): transformers batched with the KV
cache (`hf`, `next_token`), vLLM's offline engine, and OpenAI-compatible servers."""
