"""One greedy episode as an animated GIF (Pillow), for every environment that renders rgb arrays."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
from PIL import Image


def renders_rgb(env: gym.Env) -> bool:
    return "rgb_array" in (env.metadata.get("render_modes") or [])


def record_episode(
    env: gym.Env, policy, path: Path, seed: int, max_frames: int = 400, width: int = 320, fps: int | None = None
) -> dict:
    """Play one episode from `seed` (env made with render_mode="rgb_array"), write every frame, scaled to
    at most `width` pixels wide and capped at `max_frames`, to `path` atomically. Returns its return,
    length and frame count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.gif")
    try:
        return _play_into(env, policy, tmp, path, seed, max_frames, width, fps)
    finally:
        tmp.unlink(missing_ok=True)  # written and moved into place, or left by an error or a Ctrl-C


def _play_into(env, policy, tmp: Path, path: Path, seed: int, max_frames: int, width: int, fps: int | None) -> dict:
    obs, _ = env.reset(seed=seed)
    frames, total, steps = [_frame(env, width)], 0.0, 0
    while True:
        obs, r, term, trunc, _ = env.step(policy(obs))
        total, steps = total + float(r), steps + 1
        if len(frames) < max_frames:
            frames.append(_frame(env, width))
        if term or trunc:
            break
    fps = fps or int(env.metadata.get("render_fps") or 30)
    frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=max(20, 1000 // fps), loop=0)
    tmp.replace(path)
    return {"return": total, "steps": steps, "frames": len(frames)}


def _frame(env: gym.Env, width: int) -> Image.Image:
    image = Image.fromarray(np.asarray(env.render(), np.uint8))
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.BILINEAR)
    # one adaptive palette per frame: what a GIF can hold, at a fraction of the size of RGB frames
    return image.quantize(colors=64, method=Image.Quantize.MEDIANCUT)
