"""``hf-export``: a trained bundle → ONNX graphs + manifest for the runtime (needs the ``[train]`` extra)."""
