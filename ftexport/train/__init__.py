"""Training stages: fine-tuning with the Hugging Face Trainer (trainer.py) by a method from
methods.py (full, BitFit, peft adapters), distillation (distill.py) and merging adapters into
dense weights (merge.py). Each reads a recipe's sections and writes one model folder."""
