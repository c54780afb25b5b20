"""HTTP routes, one file per group: OpenAI generation, models, tokenization, operations."""
