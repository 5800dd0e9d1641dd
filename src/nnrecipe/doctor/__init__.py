"""nnrecipe doctor: Karpathy's "Recipe for Training Neural Networks" as automated pre-flight checks."""
