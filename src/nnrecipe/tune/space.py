"""A search space in the recipe's own dotted field names: `optim.lr=loguniform(1e-4,1e-1)`,
`train.batch_size=choice(64,128)`, `data.augment.crop_padding=int(0,4)` (also `int(8,64,step=8)`,
`int(1,64,log=true)`, `uniform(0,0.5)`), from `--param` or a YAML file mapping names to the same strings.

Every parameter is checked before any trial runs: the name must be a recipe field and its extreme values
(both bounds, every choice) must validate as that field, so a typo or an impossible range is one line naming
the parameter (exit 2), with the recipe's own close-match suggestion.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nnrecipe.errors import RecipeError, existing_file, read_yaml_mapping
from nnrecipe.recipe import validate_recipe

KINDS = ("loguniform", "uniform", "int", "choice")
_FORM = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*=\s*(\w+)\s*\((.*)\)\s*$")


@dataclass
class Param:
    name: str  # a dotted recipe field
    kind: str  # one of KINDS
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    log: bool = False
    choices: list[Any] = field(default_factory=list)

    def extremes(self) -> list[Any]:
        return self.choices if self.kind == "choice" else [self.low, self.high]

    def suggest(self, trial) -> Any:
        """The value an Optuna trial samples for this parameter."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "loguniform")

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name}=choice({', '.join(map(str, self.choices))})"
        extra = (f", step={self.step}" if self.step else "") + (", log=true" if self.log else "")
        return f"{self.name}={self.kind}({self.low}, {self.high}{extra})"


def parse_param(text: str, where: str = "--param") -> Param:
    """`name=kind(args)` -> Param; a malformed one is a RecipeError naming it."""
    m = _FORM.match(text)
    if not m:
        raise RecipeError(f"{where} {text!r}: expected NAME=KIND(ARGS) with KIND one of {', '.join(KINDS)}")
    name, kind, body = m.groups()
    if kind not in KINDS:
        raise RecipeError(f"{where} {name}: unknown kind {kind!r}; one of {', '.join(KINDS)}")
    options: dict[str, Any] = {}
    args: list[Any] = []
    for token in (t.strip() for t in body.split(",")):
        key, eq, value = token.partition("=")
        if eq and key.strip().isidentifier():
            options[key.strip()] = scalar(value.strip())
        elif token:
            args.append(scalar(token))
    if kind == "choice":
        if not args or options:
            raise RecipeError(f"{where} {name}: choice takes one or more values, e.g. choice(64, 128)")
        twice = [a for i, a in enumerate(args) if a in args[:i]]
        if twice:  # drawn twice as often as the others, and a grid ran it twice
            raise RecipeError(f"{where} {name}: {twice[0]!r} listed more than once in choice(...)")
        return Param(name, kind, choices=args)
    unknown = set(options) - ({"step", "log"} if kind == "int" else set())
    if len(args) != 2 or unknown or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        hint = "int(LOW, HIGH[, step=S][, log=true])" if kind == "int" else f"{kind}(LOW, HIGH)"
        raise RecipeError(f"{where} {name}: expected {hint}")
    low, high = args
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise RecipeError(f"{where} {name}: int bounds must be whole numbers (got {low}, {high})")
    if not all(math.isfinite(a) for a in args):
        raise RecipeError(f"{where} {name}: bounds must be finite numbers (got {low}, {high})")
    if not low < high:
        raise RecipeError(f"{where} {name}: the low bound must be below the high one (got {low}, {high})")
    log, step = options.get("log", False), options.get("step")
    if not isinstance(log, bool):  # "log=maybe" was a log scale
        raise RecipeError(f"{where} {name}: log=true or log=false (got {log!r})")
    if (kind == "loguniform" or log) and low <= 0:
        raise RecipeError(f"{where} {name}: a log scale needs bounds above 0 (got {low})")
    if step is not None:
        check_step(f"{where} {name}", low, high, step, log)
    return Param(name, kind, low, high, step, log)


def check_step(where: str, low: int, high: int, step: Any, log: bool) -> None:
    """An int parameter's step, as Optuna can sample it and as the user meant it: a step <= 0 or with a log
    scale was Optuna's traceback at the first trial, a fractional one sampled off its own grid (int(16, 64,
    step=2.5) gave 42, not 16 + k x 2.5), and a range that is not a whole number of steps never reached its
    high bound (Optuna lowers it with a warning)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise RecipeError(f"{where}: step must be a whole number of 1 or more (got {step!r})")
    if log and step != 1:
        raise RecipeError(f"{where}: a log scale samples without a step; give step or log=true, not both")
    if (high - low) % step:
        top = low + (high - low) // step * step
        tops = [t for t in (top, top + step) if t > low]
        raise RecipeError(
            f"{where}: {high} is not LOW + a whole number of steps, so it would never be tried; "
            + " or ".join(f"int({low}, {t}, step={step})" for t in tops)
        )


def scalar(text: str) -> Any:
    """A number as a number (YAML 1.1 would read 1e-3 as a string), anything else as YAML reads it."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_space(path: Path | None, params: list[str]) -> list[Param]:
    """The space file's parameters, then the --param ones (a name given twice keeps the last)."""
    space: dict[str, Param] = {}
    if path is not None:
        path = existing_file(path, "--space: space file", RecipeError)
        shape = "--space: a mapping of recipe fields to kinds, e.g. optim.lr: loguniform(1e-4, 0.1)"
        raw = read_yaml_mapping(path, shape, RecipeError)  # a field given twice: one line, not the last kept
        for name, spec in raw.items():
            p = parse_param(f"{name}={spec}", where=f"--space {path}:")
            space[p.name] = p
    for text in params:
        p = parse_param(text)
        space[p.name] = p
    if not space:
        raise RecipeError("tune: no parameters to search; give --space FILE or --param NAME=KIND(ARGS)")
    return list(space.values())


def with_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw recipe with the dotted fields set."""
    out = copy.deepcopy(raw)
    for name, value in values.items():
        node = out
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--param {name}: {part} is a value, not a section")
        node[leaf] = value
    return out


def check_space(raw: dict[str, Any], space: list[Param]) -> None:
    """Every parameter's extreme values validate as recipe fields, or one line naming the parameter."""
    for p in space:
        for value in p.extremes():
            try:
                validate_recipe(with_values(raw, {p.name: value}))
            except RecipeError as e:  # said "--param" for a --space entry, and "0 is not a valid" for a typo
                problem = str(e).removeprefix("recipe error: ")
                if problem.startswith("unknown field"):
                    raise RecipeError(f"tune {p.describe()}: {problem}") from None
                raise RecipeError(f"tune {p.describe()}: {value!r} is not a valid {p.name} ({problem})") from None
