"""Bundled model files (``*.safetensors``) and their model cards."""
