"""GRPO loop: config, model+LoRA, rollout, advantages, losses, train/sft/evaluate, checkpoint, dist."""
