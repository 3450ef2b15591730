"""Compressed checkpoints: a folder with config, tokenizer, ``model.safetensors`` and the ``ngc.json`` manifest."""
