"""Data engine: read rows from files or the Hub and turn them into tokenised prompts and completions."""
