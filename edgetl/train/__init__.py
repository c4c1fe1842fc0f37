"""Fine-tuning: strategies, the training loop, checkpoints. Imports torch."""
