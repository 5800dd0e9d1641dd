"""nnrecipe: the deep-learning recipe (data, model, optimise, validate, evaluate) as one honest tool."""

__version__ = "0.1.0"
