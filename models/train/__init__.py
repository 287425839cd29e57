"""One training script per stage, plus the ``hf-train`` CLI that dispatches to them."""
