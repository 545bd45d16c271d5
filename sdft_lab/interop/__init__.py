"""Moving between sdft_lab and other tools: TRL's SDFTTrainer (trl.py)."""
