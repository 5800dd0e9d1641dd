"""Task families: what is learned. Each family is one registered `TaskFamily` (tasks/family.py) that every
verb asks; this package holds the supervised families and what they share, rl/ the reinforcement one."""

from nnrecipe.tasks.family import TaskFamily, family_names, family_of, get_family, register_family

__all__ = ["TaskFamily", "family_names", "family_of", "get_family", "register_family"]
