"""Reinforcement learning: tabular Q-learning/SARSA and DQN, sharing recipes, runs and tracking."""
