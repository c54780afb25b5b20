"""`stratus train`: causal-LM fine-tuning (full or LoRA) with data parallelism across worker
processes, periodic atomic checkpoints, and a supervisor that restarts the job from its last
checkpoint when a worker dies. Imports only the engine (its config, weights, tokenizer)."""
