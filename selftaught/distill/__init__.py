"""On-policy distillation (GKD): config, trainer, recipe and model card."""
