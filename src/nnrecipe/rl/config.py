"""The RL recipe: environment, algorithm and its hyper-parameters, evaluation, tracking."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from nnrecipe.engine.config import Section, Seed, Track


class Atari(Section):
    """Preprocessing of ALE/* environments (gymnasium's AtariPreprocessing and frame stacking)."""

    frame_skip: int = Field(4, gt=0, description="Frames per agent step (the last two max-pooled).")
    frame_stack: int = Field(4, gt=0, description="Stacked 84x84 grey frames per observation.")
    noop_max: int = Field(30, ge=0, description="Random no-op actions at the start of each episode.")
    terminal_on_life_loss: bool = Field(True, description="Training only: a lost life ends the episode.")
    clip_rewards: bool = Field(True, description="Training only: rewards clipped to their sign (-1, 0, 1).")
    sticky_actions: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="ALE repeat_action_probability (v5's own default is 0.25; 0 matches the NoFrameskip-v4 results CleanRL and SB3 publish).",
    )
    fire_reset: bool = Field(
        True,
        description="In games with a FIRE action, press it at the start of a game and after each lost life (SB3's and CleanRL's FireResetEnv): Breakout waits for it, and a greedy policy that never serves would stall until the time limit.",
    )


class Env(Section):
    """Which environment to interact with."""

    id: str = Field(
        "FrozenLake-v1",
        description="A gymnasium id (FrozenLake-v1, CliffWalking-v1, Taxi-v4, CartPole-v1, Acrobot-v1, MountainCar-v0, ...) or 'gridmap'.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for gymnasium.make, e.g. {is_slippery: false, map_name: 8x8}.",
    )
    max_steps: int | None = Field(
        None, gt=0, description="Episode step limit (truncation); null = the environment's own."
    )
    map: str | None = Field(
        None,
        description="gridmap: a map file path, or the map itself (rows of S start, G goal, # wall, . free, ~ hazard).",
    )
    slip: float = Field(
        0.0, ge=0, lt=1, description="gridmap: probability that a move goes to a random perpendicular direction."
    )
    step_reward: float = Field(-1.0, description="gridmap: reward per move (negative: shortest paths are best).")
    goal_reward: float = Field(10.0, description="gridmap: reward on reaching G (the episode terminates).")
    hazard_reward: float = Field(-10.0, description="gridmap: reward on entering ~ (the episode terminates).")
    atari: Atari = Field(default_factory=Atari)


class Tabular(Section):
    """Q-learning, SARSA and Expected SARSA on discrete observations and actions."""

    episodes: int = Field(20_000, gt=0, description="Training episodes.")
    alpha: float = Field(0.1, gt=0, le=1, description="Initial learning rate.")
    alpha_end: float = Field(0.1, gt=0, le=1, description="Learning rate at the end (linear decay over training).")
    epsilon: float = Field(1.0, ge=0, le=1, description="Initial exploration rate of epsilon-greedy.")
    epsilon_end: float = Field(0.05, ge=0, le=1, description="Final exploration rate.")
    epsilon_decay_fraction: float = Field(
        0.5, gt=0, le=1, description="Fraction of the episodes over which epsilon decays linearly."
    )
    q_init: float = Field(0.0, description="Initial Q value (optimistic > 0 drives exploration).")
    log_every: int = Field(500, gt=0, description="Episodes per metrics row.")


class DeepRL(Section):
    """What every deep algorithm shares: the step budget, vector environments, evaluation, device."""

    total_steps: int = Field(100_000, gt=0, description="Environment steps (summed over vectorised envs).")
    num_envs: int = Field(1, gt=0, description="Vectorised environments.")
    vector: Literal["sync", "async"] = Field(
        "sync",
        description="sync: gymnasium SyncVectorEnv (one process); async: AsyncVectorEnv (a process per env, for slow environments).",
    )
    eval_every: int = Field(
        10_000, gt=0, description="Steps between greedy evaluations (logged, and the best network is kept)."
    )
    eval_episodes: int = Field(10, gt=0, description="Episodes per periodic evaluation.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "cpu", description="cpu is fastest for small MLPs; auto picks CUDA when present (worth it for pixels)."
    )


class DQN(DeepRL):
    """Deep Q-network for discrete actions, vector or Atari-frame observations (CleanRL-style)."""

    total_steps: int = Field(50_000, gt=0, description="Environment steps (summed over vectorised envs).")
    lr: float = Field(2.3e-3, gt=0, description="Adam learning rate (at the start, when lr_end is set).")
    lr_end: float | None = Field(
        None, ge=0, description="Anneal the learning rate linearly to this by the last step; null = constant."
    )
    buffer_size: int = Field(100_000, gt=0, description="Replay buffer capacity (transitions).")
    buffer_checkpoint_mb: float = Field(
        2048,
        ge=0,
        description="The replay buffer is checkpointed (compressed, checkpoints/replay.npz) when its arrays fit in this many MB; beyond that only the newest transitions that fit are kept and resume says it is not exact.",
    )
    batch_size: int = Field(64, gt=0, description="Transitions per gradient step.")
    learning_starts: int = Field(1_000, ge=0, description="Steps of random play before learning.")
    train_freq: int = Field(256, gt=0, description="Environment steps between training phases.")
    gradient_steps: int = Field(128, gt=0, description="Gradient steps per training phase.")
    target_update: int = Field(
        10, gt=0, description="Environment steps between target-network updates (SB3's target_update_interval)."
    )
    tau: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Target update rate: 1 = hard copy; < 1 = soft (Polyak) step towards the online net.",
    )
    double: bool = Field(
        False, description="Double DQN: the online net picks the next action, the target net values it."
    )
    hidden: list[int] = Field(
        [256, 256],
        description="Hidden layer sizes of the Q-network (image observations use the Nature-DQN CNN instead).",
    )
    epsilon: float = Field(1.0, ge=0, le=1, description="Initial exploration rate.")
    epsilon_end: float = Field(0.04, ge=0, le=1, description="Final exploration rate.")
    exploration_fraction: float = Field(
        0.16, gt=0, le=1, description="Fraction of total_steps over which epsilon decays linearly."
    )
    max_grad_norm: float = Field(10.0, gt=0, description="Gradient clipping by global norm.")
    average: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Decay of an exponential moving average of the Q-network's weights over gradient steps (e.g. 0.999); when set, that average is what is evaluated, kept and returned as the final network, while the online network explores and learns. null = off.",
    )
    eval_every: int = Field(
        5_000, gt=0, description="Steps between greedy evaluations (logged, and the best network is kept)."
    )

    @model_validator(mode="after")
    def _learns(self):
        """Learning starts once the buffer holds max(learning_starts, batch_size) transitions: a run that never
        gets there trained nothing and reported a random network as its result."""
        start = max(self.learning_starts, self.batch_size)
        if start > self.buffer_size:
            raise ValueError(
                f"learning starts at {start:,} transitions (max of learning_starts and batch_size), more than "
                f"buffer_size ({self.buffer_size:,}) holds: the network would never be trained"
            )
        if start >= self.total_steps:
            raise ValueError(
                f"learning starts at {start:,} transitions (max of learning_starts and batch_size), at or past "
                f"total_steps ({self.total_steps:,}): the network would never be trained"
            )
        return self


class PolicyGradient(DeepRL):
    """What REINFORCE and PPO share: the actor-critic network and its loss weights."""

    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    ent_coef: float = Field(0.0, ge=0, description="Entropy bonus coefficient.")
    vf_coef: float = Field(0.5, ge=0, description="Value (baseline) loss coefficient.")
    max_grad_norm: float = Field(0.5, gt=0, description="Gradient clipping by global norm.")
    normalize_advantages: bool = Field(True, description="Standardise advantages (PPO: per minibatch).")
    hidden: list[int] = Field(
        [64, 64], description="Hidden layers of the actor and critic MLPs (image observations: the Nature CNN)."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="What the Nature-CNN torso of image observations computes in (bf16 autocast; heads, log-probabilities and losses stay fp32); auto: bf16 on CUDA with bf16 and on CPUs with AMX or AVX512-BF16, else fp32. Vector observations always train in fp32. A resume keeps the precision its run began with.",
    )


class PPO(PolicyGradient):
    """Proximal policy optimisation (CleanRL-style), discrete or continuous actions, pixels or vectors."""

    num_envs: int = Field(4, gt=0, description="Vectorised environments.")
    num_steps: int = Field(128, gt=0, description="Steps per environment per rollout.")
    lr: float = Field(2.5e-4, gt=0, description="Adam learning rate at the start.")
    anneal_lr: bool = Field(True, description="Anneal the learning rate linearly to 0 over training.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    minibatch_size: int = Field(128, gt=0, description="Transitions per gradient step.")
    epochs: int = Field(4, gt=0, description="Passes over each rollout.")
    clip: float = Field(0.2, gt=0, description="Clip range of the probability ratio (and of the value, when clipped).")
    anneal_clip: bool = Field(False, description="Anneal the clip range linearly to 0 too (RL Zoo's lin_0.2).")
    clip_value: bool = Field(True, description="Clip the value loss as in the PPO paper's code.")
    normalize_rewards: bool = Field(
        False, description="Divide rewards by the running std of the discounted return (for large reward scales)."
    )
    ent_coef: float = Field(0.01, ge=0, description="Entropy bonus coefficient.")
    target_kl: float | None = Field(
        None, gt=0, description="Stop a rollout's epochs once the approximate KL exceeds this."
    )


class Reinforce(PolicyGradient):
    """REINFORCE: Monte-Carlo policy gradient with reward-to-go and a learned value baseline (num_envs 1
    keeps every batch strictly on-policy)."""

    batch_episodes: int = Field(8, gt=0, description="Finished episodes per policy update ('Pong from Pixels': 10).")
    baseline: bool = Field(True, description="Subtract a learned value V(s) from the reward-to-go.")


class Evaluation(Section):
    """Greedy evaluation after training (and by `nnrecipe rl evaluate`)."""

    episodes: int = Field(100, gt=0, description="Evaluation episodes.")
    seed: Seed = Field(10_000, description="Episode i is reset with seed + i: a fixed list, comparable across runs.")
    gif: bool = Field(
        True, description="Record one greedy episode as plots/episode.gif (environments that render rgb arrays)."
    )
    gif_frames: int = Field(400, gt=0, description="At most this many frames in the GIF.")


class RLRecipe(Section):
    """A reinforcement-learning run."""

    task: Literal["rl"] = Field("rl", description="The task family.")
    description: str = Field("", description="One line shown by `nnrecipe recipes`.")
    env: Env = Field(default_factory=Env)
    algo: Literal["qlearning", "sarsa", "expected_sarsa", "dqn", "reinforce", "ppo"] = Field(
        "qlearning", description="The learning algorithm."
    )
    gamma: float = Field(0.99, ge=0, le=1, description="Discount factor.")
    seed: Seed = Field(0, description="Seeds environments, exploration and networks.")
    tabular: Tabular = Field(default_factory=Tabular)
    dqn: DQN = Field(default_factory=DQN)
    ppo: PPO = Field(default_factory=PPO)
    reinforce: Reinforce = Field(default_factory=Reinforce)
    eval: Evaluation = Field(default_factory=Evaluation)
    track: Track = Field(default_factory=Track)

    @model_validator(mode="after")
    def _consistent(self):
        if self.env.id == "gridmap" and not self.env.map:
            raise ValueError("env.map is required for env.id: gridmap (a file path or the map text)")
        return self
