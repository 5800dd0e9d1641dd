"""A grid world defined by a text map, registered with gymnasium as `nnrecipe/GridMap-v0`.

    S....      S start, G goal (terminates), # wall, . free,
    .##.~      ~ hazard (terminates with its own reward)
    ...#G

Actions follow FrozenLake's convention (0 left, 1 down, 2 right, 3 up). With `slip` > 0 a move goes to
one of the two perpendicular directions instead (slip/2 each). Like gymnasium's toy-text environments
it exposes the full model as `P[s][a] = [(prob, next_state, reward, terminated), ...]`, which value
iteration uses to compute the optimal policy.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from nnrecipe.errors import UserError, existing_file, read_utf8

MOVES = {0: (0, -1), 1: (1, 0), 2: (0, 1), 3: (-1, 0)}
ARROWS = "<v>^"
ENV_ID = "nnrecipe/GridMap-v0"


def read_map(text_or_path: str) -> list[str]:
    """The map's rows; `text_or_path` is the map itself (it contains a newline) or a file."""
    if "\n" not in text_or_path:
        path = Path(text_or_path).expanduser()
        existing_file(path, "env.map: map file")
        text_or_path = read_utf8(path)
    rows = [line.strip() for line in text_or_path.strip().splitlines() if line.strip()]
    if len({len(r) for r in rows}) != 1:
        raise UserError("env.map: every row must have the same length")
    cells = "".join(rows)
    if bad := set(cells) - set("SG#.~"):
        raise UserError(f"env.map: unknown cells {''.join(sorted(bad))!r}; allowed: S G # . ~")
    if cells.count("S") != 1 or cells.count("G") < 1:
        raise UserError("env.map: needs exactly one S and at least one G")
    if not goal_reachable(rows):
        raise UserError("env.map: no G can be reached from S (walls # and hazards ~ are in the way)")
    return rows


def goal_reachable(rows: list[str]) -> bool:
    """Whether some G is reachable from S by moves through free cells (a map without such a path trains an
    agent that can never see the goal's reward)."""
    start = next((r, c) for r, row in enumerate(rows) for c, cell in enumerate(row) if cell == "S")
    seen, frontier = {start}, [start]
    while frontier:
        r, c = frontier.pop()
        if rows[r][c] == "G":
            return True
        for dr, dc in MOVES.values():
            nr, nc = r + dr, c + dc
            if 0 <= nr < len(rows) and 0 <= nc < len(rows[0]) and (nr, nc) not in seen and rows[nr][nc] not in "#~":
                seen.add((nr, nc))
                frontier.append((nr, nc))
    return False


class GridMapEnv(gym.Env):
    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        map: str,
        slip: float = 0.0,
        step_reward: float = -1.0,
        goal_reward: float = 10.0,
        hazard_reward: float = -10.0,
        render_mode: str | None = None,
    ):
        self.rows = read_map(map)
        self.nrow, self.ncol = len(self.rows), len(self.rows[0])
        self.observation_space = spaces.Discrete(self.nrow * self.ncol)
        self.action_space = spaces.Discrete(4)
        self.render_mode = render_mode
        self.start = "".join(self.rows).index("S")
        self.P = {
            s: {a: self._outcomes(s, a, slip, step_reward, goal_reward, hazard_reward) for a in range(4)}
            for s in range(self.nrow * self.ncol)
        }
        self.s = self.start

    def cell(self, s: int) -> str:
        return self.rows[s // self.ncol][s % self.ncol]

    def _move(self, s: int, a: int) -> int:
        r, c = divmod(s, self.ncol)
        dr, dc = MOVES[a]
        r2, c2 = r + dr, c + dc
        if not (0 <= r2 < self.nrow and 0 <= c2 < self.ncol) or self.rows[r2][c2] == "#":
            return s  # bump: stay
        return r2 * self.ncol + c2

    def _outcomes(self, s, a, slip, step_reward, goal_reward, hazard_reward):
        if self.cell(s) in "G~#":  # absorbing (never entered as a start state)
            return [(1.0, s, 0.0, True)]
        moves = [(1.0 - slip, a)] + ([(slip / 2, (a - 1) % 4), (slip / 2, (a + 1) % 4)] if slip else [])
        out = []
        for p, move in moves:
            s2 = self._move(s, move)
            kind = self.cell(s2)
            reward = step_reward + (goal_reward if kind == "G" else hazard_reward if kind == "~" else 0.0)
            out.append((p, s2, reward, kind in "G~"))
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.s = self.start
        return self.s, {}

    def step(self, action: int):
        outcomes = self.P[self.s][int(action)]
        i = 0 if len(outcomes) == 1 else self.np_random.choice(len(outcomes), p=[o[0] for o in outcomes])
        _, s2, reward, terminated = outcomes[i]
        self.s = s2
        return s2, reward, terminated, False, {"success": terminated and self.cell(s2) == "G"}

    def render(self) -> str:
        grid = [list(r) for r in self.rows]
        r, c = divmod(self.s, self.ncol)
        grid[r][c] = "A"
        return "\n".join("".join(row) for row in grid) + "\n"


def register() -> None:
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point=GridMapEnv)


def draw_path(rows: list[str], path: list[int], policy: np.ndarray | None = None) -> str:
    """The map with the greedy path marked '*' (and the policy's arrows on other free cells)."""
    ncol = len(rows[0])
    grid = [list(r) for r in rows]
    if policy is not None:
        for s, a in enumerate(policy):
            r, c = divmod(s, ncol)
            if grid[r][c] == ".":
                grid[r][c] = ARROWS[int(a)]
    for s in path:
        r, c = divmod(s, ncol)
        if grid[r][c] not in "SG":
            grid[r][c] = "*"
    return "\n".join("".join(row) for row in grid)
