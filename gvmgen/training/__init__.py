"""Fine-tuning GVMGen on a catalog: training clips (dataset) and the training loop (trainer)."""
