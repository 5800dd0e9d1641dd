"""Trust in a model: explanations (Captum) and their sanity checks."""
