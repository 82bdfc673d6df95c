"""Weights from elsewhere: torchvision's state dicts in and out (`torchvision`),
and the weights a fine-tuning run starts from (`init_from`)."""
