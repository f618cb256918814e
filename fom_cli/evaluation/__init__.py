"""How good a model is: reconstruction of test videos, and animation against synthetic ground truth."""
