"""The `nnrecipe` command line: train, resume, evaluate, predict, recipes.

Errors the user can fix are printed as one line (exit 2 for recipe errors, 1 otherwise), never as a
traceback.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import sys
from importlib import resources
from pathlib import Path

import typer
import yaml
from rich.console import Console

from nnrecipe.engine.distributed import end_process_group
from nnrecipe.errors import UserError, existing_file, file_in_the_way, first_line, read_utf8, writable_file

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, evaluate and use neural networks from one YAML recipe.",
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# The bundled recipes are package data: found the same way in a checkout (where ./recipes links here) and in
# an installed wheel.
RECIPES_DIR = Path(str(resources.files("nnrecipe") / "recipes"))


@app.command(context_settings={"allow_extra_args": True})
def train(
    ctx: typer.Context,
    recipe: Path = typer.Argument(..., help="Recipe YAML file (see `nnrecipe recipes`)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field, e.g. --set optim.lr=0.1 (repeatable)."),
    name: str | None = typer.Option(None, help="Run directory name (default <recipe>-<timestamp>)."),
    seeds: str | None = typer.Option(
        None, help="Train once per seed and summarise mean +/- std: --seeds 0 1 2, --seeds 0,1,2 or --seeds 0-4."
    ),
    ensemble: bool = typer.Option(False, "--ensemble", help="With --seeds: also make an ensemble run of them."),
    continue_from: Path | None = typer.Option(
        None, help="Continual learning: continue this run (its weights, classes, memory) on the recipe's data."
    ),
    nproc: int = typer.Option(1, min=1, help="Processes on this node (DDP through torchrun; one per GPU)."),
    nnodes: int = typer.Option(1, min=1, help="Machines taking part (run the same command on each)."),
    node_rank: int = typer.Option(0, min=0, help="This machine's number, 0..nnodes-1 (0 hosts the rendezvous)."),
    master: str | None = typer.Option(None, help="Node 0's ADDR:PORT, the same on every node (with --nnodes > 1)."),
    join_timeout: int = typer.Option(
        600, min=1, help="--nnodes: seconds the nodes wait for one another at the rendezvous (torchrun's default)."
    ),
) -> None:
    """Train a model from a recipe; leaves a run directory with checkpoints, metrics, report and plots (a recipe
    with continual.stages: one run per stage and the accuracy matrix)."""
    if ctx.args and seeds is None or any(a.startswith("-") and not a.lstrip("-").isdigit() for a in ctx.args):
        raise UserError(f"unexpected arguments: {' '.join(ctx.args)}")
    if nnodes == 1 and (node_rank != 0 or master is not None):  # ignored: this machine trained alone
        raise UserError("--node-rank/--master: only with --nnodes > 1 (the machines taking part)")
    if nproc > 1 or nnodes > 1:
        import subprocess

        from nnrecipe.engine.distributed import local_route, multi_node_environment, torchrun_command, world_size

        if world_size() > 1:
            raise UserError("--nproc/--nnodes: already under torchrun; drop them (torchrun launched the processes)")
        if seeds is not None or ensemble or continue_from is not None:
            raise UserError("--nproc/--nnodes: train one run at a time (no --seeds, --ensemble or --continue-from)")
        from nnrecipe.recipe import load_recipe
        from nnrecipe.tasks.family import get_family

        family = get_family(load_recipe(_find_recipe(recipe), set_).task)
        if not family.multi_process:
            raise UserError(f"--nproc/--nnodes: {family.name} runs train in one process")
        args = ["train", str(_find_recipe(recipe)), *[a for item in set_ for a in ("--set", item)]]
        args += ["--name", name] if name else []
        route = local_route(master) if nnodes > 1 and master else None
        command = torchrun_command(
            args, nnodes, nproc, node_rank, master, local_addr=route and route[0], join_timeout=join_timeout
        )
        env = multi_node_environment(route, dict(os.environ))
        if route is not None:
            out.print(f"node {node_rank} of {nnodes}: address {route[0]} on {route[1]}, the route to {master} "
                      f"(torchrun --local-addr; gloo on {env['GLOO_SOCKET_IFNAME']}, NCCL on {env['NCCL_SOCKET_IFNAME']})")  # fmt: skip
        if nnodes > 1:  # torchrun says nothing while it waits (it was minutes of silence, then its traceback)
            out.print(f"node {node_rank} of {nnodes}: waiting up to {join_timeout} s at {master} for the others "
                      "(each runs this command with its own --node-rank)")  # fmt: skip
        from nnrecipe.engine.signals import wait_for_launched

        code = wait_for_launched(subprocess.Popen(command, env=env))  # a stop lets the workers save
        if nnodes > 1 and code not in (0, 130):
            err.print(f"error: torchrun failed (exit {code}); a RendezvousTimeoutError above means the {nnodes} nodes "
                      f"did not all reach {master} within {join_timeout} s: start each with its --node-rank, check "
                      "that they can reach that address and port, or give more --join-timeout", style="red",
                      markup=False)  # fmt: skip
        raise typer.Exit(code)
    train_recipe(recipe, set_, name, None if seeds is None else [seeds, *ctx.args], ensemble, continue_from)


def train_recipe(
    recipe: Path,
    set_: list[str],
    name: str | None,
    seeds: list[str] | None = None,
    ensemble: bool = False,
    continue_from: Path | None = None,
) -> None:
    """`train` and `rl train`: one run, one per seed, or one per continual-learning stage."""
    from nnrecipe.recipe import load_recipe
    from nnrecipe.runs import train_new_run
    from nnrecipe.tasks.family import get_family

    if ensemble and seeds is None:
        raise UserError("--ensemble: goes with --seeds (an ensemble of several runs of the recipe)")
    r = load_recipe(_find_recipe(recipe), set_)
    if name:
        from nnrecipe.engine.config import check_folder_name

        r.track.name = check_folder_name(name, "--name")  # `../x` was pydantic's traceback
    family = get_family(r.task)
    if continue_from is not None:
        from nnrecipe.runs import open_run

        family.require("continual").continue_from(r, open_run(continue_from).dir)
    stages = family.continual_stages(r)
    if stages is not None:
        from nnrecipe.continual import train_stages

        if seeds is not None or continue_from is not None:
            raise UserError("continual.stages: train the stages alone (no --seeds or --continue-from with them)")
        if train_stages(family, r, stages, Path(recipe).stem)["status"] == "interrupted":
            raise typer.Exit(130)
        return
    if seeds is not None:
        from nnrecipe.seeds import parse_seeds, train_seeds

        result = train_seeds(r, Path(recipe).stem, parse_seeds(seeds), ensemble)
        if result["status"] == "interrupted":
            raise typer.Exit(130)
        return
    _, result = train_new_run(family, r, Path(recipe).stem)
    if result["status"] == "interrupted":
        raise typer.Exit(130)


@app.command()
def resume(run_dir: Path = typer.Argument(..., help="The run directory to continue.")) -> None:
    """Continue an interrupted run exactly where it stopped (same data order, RNG and optimiser state)."""
    from nnrecipe.engine.checkpoint import state_text
    from nnrecipe.engine.recipe_changes import refuse_changes
    from nnrecipe.runs import open_run
    from nnrecipe.tasks.family import family_of

    run = open_run(run_dir)
    status = run.meta().get("status")
    if status in ("finished", "early_stopped"):
        how = "finished" if status == "finished" else "stopped early (its monitored metric stopped improving)"
        raise UserError(f"{run_dir} already {how}; nothing to resume")
    if not run.last_checkpoint.is_file():
        raise UserError(f"{run_dir} has no checkpoint to resume from ({run.last_checkpoint} is missing)")
    # before the run is touched: a refusal inside the training marked it failed
    saved, free = (state_text(run.last_checkpoint, key) for key in ("recipe", "recipe_free"))
    refuse_changes(saved, run.recipe_path.read_text(), run.recipe_path, free)
    result = family_of(run).train(run.recipe(), run, resume=True)
    if result["status"] == "interrupted":
        raise typer.Exit(130)


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    split: str | None = typer.Option(
        None, help="Which of the run's splits: train, val or test (default: test, else val)."
    ),
    data: Path | None = typer.Option(
        None, help="Evaluate on other data in the run's format instead (an ImageFolder tree, a text or CoNLL file)."
    ),
    attack: str | None = typer.Option(None, help="Adversarial accuracy (images): fgsm, pgd, or fgsm,pgd."),
    epsilon: str | None = typer.Option(
        None, help="--attack radii in pixel space, comma-separated (default: 2/255,8/255)."
    ),
    steps: int | None = typer.Option(None, help="--attack pgd: its steps, each 2.5 epsilon / steps (default: 20)."),
    corruptions: bool = typer.Option(False, "--corruptions", help="Accuracy under noise, blur, brightness, JPEG."),
    limit: int | None = typer.Option(None, help="--attack / --corruptions: images of the split used (default: 1000)."),
    groups: Path | None = typer.Option(None, help="Fairness by group: a CSV of example,group (image path or text)."),
    positive: str | None = typer.Option(None, help="--groups: the positive label for selection and error rates."),
) -> None:
    """Evaluate a run's best weights; prints its scores and writes them into the run's report. With --attack
    or --corruptions: clean vs perturbed accuracy instead (runs/<run>/robustness/report.md)."""
    from nnrecipe.runs import open_run
    from nnrecipe.tasks.family import family_of

    if split not in (None, "train", "val", "test"):
        raise UserError(f"--split: must be one of train, val, test (got {split!r})")
    robustness = attack is not None or corruptions
    for flag, value, needs in (
        ("--epsilon", epsilon, attack),
        ("--steps", steps, attack),
        ("--limit", limit, robustness),
    ):
        if value is not None and not needs:  # was ignored: the plain evaluation ran as if it were not given
            raise UserError(f"{flag}: only with --attack{'' if flag != '--limit' else ' or --corruptions'}")
    if groups is not None and (robustness or data is not None):  # --attack and --data were ignored
        raise UserError("--groups: on its own (not with --attack, --corruptions or --data)")
    run = open_run(run_dir)
    family = family_of(run)
    if groups is not None:
        print_fairness(run, split, groups, positive)
        return
    if robustness:
        from nnrecipe.trust.robustness import evaluate_robustness, parse_epsilons

        if data is not None:
            raise UserError("--data: not with --attack / --corruptions (they use the run's own splits)")
        attacks = [a.strip() for a in attack.split(",")] if attack else []
        given = {"epsilons": parse_epsilons(epsilon) if epsilon is not None else None, "steps": steps, "limit": limit}
        r = evaluate_robustness(  # what is not given takes evaluate_robustness's defaults
            run, split, attacks, corruptions=corruptions, **{k: v for k, v in given.items() if v is not None}
        )
        err.print(f"{r['images']:,} {r['split']} images: clean accuracy {r['clean_accuracy']:.4f}")
        for a in r.get("attacks", []):
            err.print(f"  {a['method']} epsilon {a['epsilon'] * 255:.3g}/255: accuracy {a['accuracy']:.4f}")
        for c in r.get("corruptions", []):
            err.print(f"  {c['corruption']} severity {c['severity']}: accuracy {c['accuracy']:.4f}")
        err.print(f"report: {run.dir / 'robustness' / 'report.md'}")
        return
    family.evaluate(run, split=split, data_path=str(data) if data else None)
    if data is None and family.offers("fairness"):  # a recipe that names a group column: by group too
        reported = split or family.splits(run.recipe()).reported()[0]
        if family.example_groups(run, reported) is not None:
            print_fairness(run, reported, None, positive)


def print_fairness(run, split: str | None, groups: Path | None, positive: str | None) -> None:
    from nnrecipe.trust.fairness import evaluate_fairness

    r = evaluate_fairness(run, split, groups, positive)
    for g, row in r["by_group"].items():
        err.print(f"  {g}: accuracy {row['accuracy']:.4f}, macro F1 {row['f1_macro']:.4f}, selection rate "
                  f"{row['selection_rate']:.4f}, {row['support']:,} examples")  # fmt: skip
    for k, v in r["differences"].items():
        err.print(f"{k.replace('_', ' ')}: {v['value']:.4f} (positive class {v['positive']})")
    err.print(f"report: {run.dir / 'fairness' / 'report.md'}")


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    inputs: list[str] = typer.Argument(None, help="Image files or folders of images, or texts for a text run."),
    file: Path | None = typer.Option(None, "--file", help="Text runs: a file with one text per line."),
    to: Path | None = typer.Option(None, "--out", help="Write one JSON object per input to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per input."),
) -> None:
    """Predict with a run's best weights: label, confidence and top classes per input (NER: entities with
    character offsets; detection: boxes with labels and scores)."""
    from nnrecipe.runs import open_run
    from nnrecipe.tasks.family import family_of

    run = open_run(run_dir)
    family = family_of(run).require("predict")
    inputs = list(inputs or [])
    if file is not None:
        existing_file(file, "--file: text file")
        inputs += [line for line in read_utf8(file).splitlines() if line.strip()]
    if not inputs:
        raise UserError("nothing to predict: give inputs or --file")
    if to is not None:
        _check_predictions_file(to, [Path(p) for p in [*([file] if file else []), *inputs]], run.dir)
    rows = family.predict(run, inputs)
    if to is not None:
        from nnrecipe.deploy.artefact import staged

        with staged(to) as tmp:  # a reader never sees half the file
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        err.print(f"wrote {len(rows)} prediction{'s' if len(rows) != 1 else ''} to {to}")
    for row in rows:
        if as_json:
            out.print(json.dumps(row), soft_wrap=True)
        elif to is None:
            out.print(family.output.line(row), markup=False, soft_wrap=True)


def _check_predictions_file(to: Path, sources: list[Path], run_dir: Path) -> None:
    """predict --out: a file that is neither an input nor in an input folder (`--file a.txt --out a.txt`
    replaced the texts with their predictions) nor one of the run's (`--out runs/<run>/run.json` broke it);
    its folder is made here, before any prediction."""
    if to.is_dir():
        raise UserError(f"--out {to}: a folder; give a file name, e.g. {to / 'predictions.jsonl'}")
    if not to.exists():  # before predicting: a missing folder lost every prediction of a long run at the end
        writable_file(to, "--out", "nothing predicted")
        return
    target = to.resolve()
    for source in (s.resolve() for s in sources if s.exists()):
        if target.is_relative_to(source):  # the input itself, or a file in an input folder
            raise UserError(f"--out {to}: one of the inputs; nothing written: give another file name")
    if target.is_relative_to(run_dir.resolve()):
        raise UserError(f"--out {to}: a file of the run {run_dir}; nothing written: give another file name")


@app.command()
def generate(
    run_dir: Path = typer.Argument(..., help="A language-model run directory."),
    prompt: str = typer.Argument("\n", show_default=False, help="Text to continue (default: a new line)."),
    max_new_tokens: int | None = typer.Option(
        None, min=1, help="Tokens to generate (default: the recipe's sample section)."
    ),
    temperature: float | None = typer.Option(
        None, min=0.0, help="Softmax temperature; 0 = always the most likely token."
    ),
    top_k: int | None = typer.Option(None, min=0, help="Sample among the k most likely tokens; 0 = all."),
    top_p: float | None = typer.Option(None, help="Nucleus sampling mass in (0, 1] (default: off)."),
    seed: int | None = typer.Option(None, help="Sampling seed."),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Recompute the whole context every step (slower; to compare)."
    ),
) -> None:
    """Continue a prompt with a trained language model; prints the text as it is drawn, and tokens/s on
    stderr (Ctrl-C stops it and keeps what was printed)."""
    from nnrecipe.runs import open_run
    from nnrecipe.tasks.family import family_of

    run = open_run(run_dir)
    family = family_of(run).require("generate")
    printed = []  # the prompt, then each piece of text as its token is drawn

    def show(piece: str) -> None:
        if not printed:  # the options were accepted: the prompt first
            printed.append(prompt)
            sys.stdout.write(prompt)
        printed.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()

    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    try:
        result = family.generate(run, prompt, **options, use_cache=not no_cache, on_piece=show)
    except KeyboardInterrupt:
        if printed:  # end the line printed so far, before "aborted"
            sys.stdout.write("\n")
        raise
    whole = result["prompt"] + result["text"]
    sys.stdout.write(whole[len("".join(printed)) :] + "\n")  # a last partial character is held back by show
    err.print(
        f"{result['new_tokens']} tokens at {result['tokens_per_s']:,.0f} tokens/s" + (" (no cache)" if no_cache else "")
    )


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A trained run directory."),
    format: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
    quantize: str | None = typer.Option(None, help="int8 (ONNX only): static calibrated for CNNs, dynamic otherwise."),
    out: Path | None = typer.Option(None, help="Artefact path (default runs/<run>/export/model.<ext>)."),
) -> None:
    """Export the run's best weights, checked against PyTorch on validation inputs, with a model card."""
    from nnrecipe.deploy.export import export_run
    from nnrecipe.runs import open_run

    export_run(open_run(run_dir), format, out, quantize)


@app.command()
def ensemble(
    runs: list[Path] = typer.Argument(..., help="Two or more trained runs of one task, with the same labels and data."),
    name: str | None = typer.Option(None, help="Ensemble run directory name (default ensemble-<timestamp>)."),
    weights: str | None = typer.Option(None, help="One weight per run, e.g. --weights 1,1,2; default equal."),
) -> None:
    """Make an ensemble run that averages its members' probabilities (classification; per token for NER);
    evaluate, predict, export (one graph) and serve take it like any run. Its report shows each member beside it."""
    from nnrecipe.tasks.ensemble import create_ensemble

    try:
        shares = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise UserError(f"--weights: numbers separated by commas, e.g. 1,1,2 (got {weights!r})") from None
    run = create_ensemble(list(runs), name, shares)
    err.print(f"ensemble run: {run.dir}")


@app.command()
def explain(
    run_dir: Path = typer.Argument(..., help="A trained image classification, text classification or NER run."),
    inputs: list[str] = typer.Argument(None, help="Image files or folders (image runs) or texts (text and NER runs)."),
    method: str | None = typer.Option(
        None,
        help="Images: gradcam (default), ig, occlusion, saliency; text: ig (default), occlusion, saliency; "
        "or several: ig,saliency.",
    ),
    target: str | None = typer.Option(None, help="Explain this label (default: the predicted one)."),
    folder: Path | None = typer.Option(None, "--out", help="Folder for the files (default: runs/<run>/explain)."),
    check: bool = typer.Option(False, "--check", help="Randomisation and deletion checks on validation examples."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per explanation."),
) -> None:
    """Why the model decided (Captum): a heat map per image and method as a PNG overlay, or word attributions
    per text (per predicted entity for NER) as HTML and markdown; --check tests whether the explanations
    depend on the model at all and find what it uses (runs/<run>/explain/report.md)."""
    from nnrecipe.runs import open_run
    from nnrecipe.tasks.family import family_of
    from nnrecipe.trust.explain import explain_run

    run = open_run(run_dir)
    family_of(run).require("explain")  # before asking for inputs (an RL run was told to give image files)
    if not inputs and not check:
        raise UserError("nothing to explain: give image files or texts, or --check")
    methods = [m.strip() for m in method.split(",")] if method else None
    result = explain_run(run, list(inputs or []), methods, target, folder, check)
    for row in result["explanations"]:
        if as_json:
            out.print(json.dumps(row), soft_wrap=True)
        elif "png" in row:
            err.print(
                f"{row['file']}: {row['method']} for {row['target']} (p {row['probability']:.3f}) -> {row['png']}"
            )
        else:
            top = sorted(row["words"], key=lambda w: -w["attribution"])[:3]
            about = f"entity {row['entity']['text']!r} ({row['target']})" if "entity" in row else row["target"]
            err.print(f"{row['text'][:60]!r}: {row['method']} for {about}, top words "
                      f"{', '.join(w['word'] for w in top)} -> {row['html']}", soft_wrap=True)  # fmt: skip
    if not any("png" in row for row in result["explanations"]):  # texts: NER may find no entity in one
        explained = {row["text"] for row in result["explanations"]}
        for text in [t for t in inputs or [] if t not in explained]:  # only the markdown said so
            err.print(f"{text[:60]!r}: no entity predicted, nothing to explain", soft_wrap=True)
    for name, c in result.get("checks", {}).items():
        r, d = c["randomisation"], c["deletion"]
        err.print(f"{name}: randomisation rank correlation {r['rank_correlation']:.3f} "
                  f"({'pass' if r['passed'] else 'FAIL'}); deletion AUC {d['area_attributed']:.4f} vs least "
                  f"attributed first {d['area_least']:.4f}, random {d['area_random']:.4f}")  # fmt: skip
    if check:
        err.print(f"report: {run.dir / 'explain' / 'report.md'}")


@app.command()
def calibrate(run_dir: Path = typer.Argument(..., help="A trained image or text classification run.")) -> None:
    """Fit temperature scaling on the validation split; evaluate, predict, serve and export then use it. The
    report shows the expected calibration error before and after."""
    from nnrecipe.deploy.calibrate import calibrate_run
    from nnrecipe.runs import open_run

    calibrate_run(open_run(run_dir))


@app.command()
def merge(
    run_dir: Path = typer.Argument(..., help="A trained text or NER run."),
    out: Path | None = typer.Option(None, help="Model folder to write (default runs/<run>/merged)."),
) -> None:
    """Fold LoRA/AdaLoRA/IA3 weights into the base model and save a plain Hugging Face model folder
    (loads with transformers alone); checks that it gives the same logits as the run."""
    from nnrecipe.deploy.merge import merge_run
    from nnrecipe.runs import open_run

    path, diff = merge_run(open_run(run_dir), out)
    err.print(
        f"merged model: {path} (max |logit difference| vs the run: {diff:.2e}); load it with "
        "AutoModelFor...Classification.from_pretrained"
    )


@app.command()
def prune(
    run_dir: Path = typer.Argument(..., help="A trained run directory."),
    amount: float = typer.Option(0.5, help="Fraction of weights (or, with --structured, of channels) to remove."),
    structured: bool = typer.Option(
        False, "--structured", help="Remove whole output channels (L2 norm) instead of single weights."
    ),
    finetune_epochs: int = typer.Option(
        0, min=0, help="Fine-tune this many epochs with the masks held (at 0.1x the LR); not for peft text runs."
    ),
) -> None:
    """Prune a run's best weights (image, text, NER or detection) into a new run <run>-pruned<N>, scored on its
    test (else val) split; evaluate/export/serve work on it."""
    from nnrecipe.deploy.prune import prune_run
    from nnrecipe.runs import open_run

    prune_run(open_run(run_dir), amount, structured, finetune_epochs)


@app.command()
def serve(
    run_dir: Path = typer.Argument(..., help="A trained run directory."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8080, min=0, max=65535, help="Port."),
    workers: int = typer.Option(1, min=1, help="Worker processes."),
    api_key_file: Path | None = typer.Option(None, help="File with one API key per line (or set NNRECIPE_API_KEYS)."),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="Serve without authentication (logs a warning)."
    ),
    onnx: Path | None = typer.Option(None, help="Serve this exported ONNX model with onnxruntime instead of PyTorch."),
    max_body_mb: float = typer.Option(10.0, min=0.001, help="Largest request body in MB (413 above)."),
    max_batch: int = typer.Option(64, min=1, help="Most inputs in one request (422 above)."),
    batch_wait_ms: float = typer.Option(5.0, min=0, help="Micro-batching: how long a request waits for others."),
    max_explain_inputs: int = typer.Option(
        4, min=1, help="Most inputs in one /v1/explain request (an explanation costs tens of forward passes)."
    ),
    max_text_chars: int = typer.Option(
        10_000, min=1, help="Text, NER and language-model runs: longest text or prompt in characters (422 above)."
    ),
    max_new_tokens: int = typer.Option(512, min=1, help="Language-model runs: most tokens one request may generate."),
    precision: str = typer.Option(
        "auto", help="Eager PyTorch numerics: auto (fp32; measured faster under load than bf16 autocast), fp32, bf16."
    ),
    max_image_pixels: int = typer.Option(
        10_000_000, min=1, help="Image runs: most pixels (width x height, read from the header) per image (422 above)."
    ),
    max_queue: int = typer.Option(
        256, min=1, help="Most inputs being decoded, waiting or in the model at once (503 with Retry-After above)."
    ),
    deadline_s: float = typer.Option(30.0, min=0.001, help="Seconds a request may take (504 after)."),
    rate_limit: float = typer.Option(0.0, min=0, help="Requests per second per API key (429 above); 0 = no limit."),
    rate_burst: int = typer.Option(0, min=0, help="Requests a key may send at once above the rate (0 = 2 x rate)."),
    public_docs: bool = typer.Option(False, "--public-docs", help="Serve /docs and /openapi.json without a key."),
) -> None:
    """Serve a run over HTTP: /v1/predict (and /v1/generate for language models), /v1/model, /healthz, /readyz, /metrics."""
    import dataclasses
    import logging
    import math
    import os

    import uvicorn

    from nnrecipe.deploy.serve import ServeConfig, check_listen, create_app, read_api_keys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for flag, value in (("--max-body-mb", max_body_mb), ("--batch-wait-ms", batch_wait_ms),
                        ("--deadline-s", deadline_s), ("--rate-limit", rate_limit)):  # fmt: skip
        if not math.isfinite(value):  # inf passed typer's ranges: a traceback, or a server that never answers
            raise UserError(f"{flag}: a finite number (got {value})")
    if rate_burst and not rate_limit:  # was ignored: no limit at all
        raise UserError("--rate-burst: only with --rate-limit (requests per second per key)")
    cfg = ServeConfig(
        run_dir=run_dir,
        api_keys=read_api_keys(api_key_file),
        insecure_no_auth=insecure_no_auth,
        onnx=onnx,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_batch=max_batch,
        batch_max=max(max_batch, 64),
        batch_wait_ms=batch_wait_ms,
        max_explain_inputs=max_explain_inputs,
        max_text_chars=max_text_chars,
        max_new_tokens=max_new_tokens,
        precision=precision,
        max_image_pixels=max_image_pixels,
        max_queue=max_queue,
        deadline_s=deadline_s,
        rate_limit=rate_limit,
        rate_burst=rate_burst,
        public_docs=public_docs,
    )
    check_listen(host, port)
    app_ = create_app(cfg)  # fails here, with one line, on a bad run, key or model
    if workers == 1:
        uvicorn.run(app_, host=host, port=port, timeout_graceful_shutdown=10)
        return
    os.environ["NNRECIPE_SERVE_CONFIG"] = json.dumps(
        {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
    )
    uvicorn.run(
        "nnrecipe.deploy.serve:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        timeout_graceful_shutdown=10,
    )


@app.command()
def pack(
    folder: Path = typer.Argument(..., help="An image folder: <class>/<images>, optionally under train/ val/ test/."),
    out: Path = typer.Argument(..., help="The folder to write the shards, index.npz and shards.json into."),
    shard_mb: float = typer.Option(
        256.0, min=0.001, help="Largest shard size in MB (a shard holds one image at least)."
    ),
) -> None:
    """Pack an image folder into WebDataset tar shards with a byte index (data.source: shards reads them, from
    this folder or any fsspec URL it is copied to); each image's bytes are kept as they are."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from nnrecipe.data.shards import pack_image_folder

    with Progress(
        TextColumn("packing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,  # in a log the bar left a blank line
    ) as bar:
        task = bar.add_task("pack", total=None)
        done = pack_image_folder(folder, out, shard_mb, lambda n, total: bar.update(task, completed=n, total=total))
    for path in done["skipped"]:
        err.print(f"skipped (not a readable image): {path}")
    err.print(
        f"packed {done['samples']:,} images of {len(done['classes'])} classes into {done['shards']} shard(s) in {out}; "
        f"train with data.source=shards data.path={out}"
    )


@app.command()
def doctor(
    recipe: Path = typer.Argument(..., help="The recipe to check."),
    set_: list[str] = typer.Option([], "--set", help="Override a field, e.g. --set optim.lr=0.1."),
    out: Path = typer.Option(Path("doctor"), help="Folder for report.md, report.json and the PNGs."),
) -> None:
    """Pre-flight checks from Karpathy's recipe (data, init loss, baselines, overfitting, LR range, gradients,
    determinism); exits 1 when a check fails."""
    from nnrecipe.doctor.run import run_doctor
    from nnrecipe.recipe import load_recipe

    results = run_doctor(load_recipe(_find_recipe(recipe), set_), out)
    err.print(f"report: {out / 'report.md'}")
    if any(r.verdict == "fail" for r in results):
        raise typer.Exit(1)


rl_app = typer.Typer(
    no_args_is_help=True, help="Reinforcement learning: tabular Q-learning/SARSA, DQN, REINFORCE and PPO."
)
app.add_typer(rl_app, name="rl")


@rl_app.command("train")
def rl_train(
    recipe: Path = typer.Argument(..., help="An RL recipe (task: rl)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field, e.g. --set tabular.episodes=5000."),
    name: str | None = typer.Option(None, help="Run directory name."),
    seeds: str | None = typer.Option(None, help="Train once per seed and summarise mean +/- std: 0,1,2 or 0-4."),
) -> None:
    """Train an agent; leaves a run directory with the Q-table or network, metrics, report and plots."""
    from nnrecipe.recipe import load_recipe
    from nnrecipe.rl.family import ReinforcementLearning

    task = load_recipe(_find_recipe(recipe), set_).task
    if task != ReinforcementLearning.name:
        raise UserError(f"{recipe} is not an RL recipe (task: {task}); use `nnrecipe train`")
    train_recipe(recipe, set_, name, None if seeds is None else [seeds])


@rl_app.command("evaluate")
def rl_evaluate(
    run_dir: Path = typer.Argument(..., help="An RL run directory."),
    episodes: int | None = typer.Option(None, min=1, help="Evaluation episodes (default: the recipe's eval.episodes)."),
) -> None:
    """Greedy evaluation on a fixed seed list: mean return, success rate, steps."""
    from nnrecipe.rl import runner

    runner.evaluate(_rl_run(run_dir), episodes=episodes)


@rl_app.command("play")
def rl_play(
    run_dir: Path = typer.Argument(..., help="An RL run directory."),
    render: str | None = typer.Option(
        None, help="ansi prints each frame in the terminal (the default where the environment has it); human: a window."
    ),
    seed: int | None = typer.Option(None, help="Episode seed (default: the first evaluation seed)."),
    gif: Path | None = typer.Option(None, help="Write the episode as an animated GIF here instead of printing it."),
) -> None:
    """Play one greedy episode and show it (or save it as a GIF)."""
    from nnrecipe.rl import runner

    runner.play(_rl_run(run_dir), render=render, seed=seed, gif=gif)


def _rl_run(run_dir: Path):
    """The run, when it is an RL run (an image run ended in AttributeError: no attribute 'algo')."""
    from nnrecipe.rl.family import ReinforcementLearning
    from nnrecipe.runs import open_run

    run = open_run(run_dir)
    task = run.meta().get("task")
    if task != ReinforcementLearning.name:
        raise UserError(f"{run_dir} is a run of {task}, not an RL run; use `nnrecipe evaluate` or `predict`")
    return run


@app.command()
def tune(
    ctx: typer.Context,
    recipe: Path | None = typer.Argument(None, help="Recipe YAML file to tune (not with --resume / --report)."),
    space: Path | None = typer.Option(None, help="YAML file: recipe field -> loguniform/uniform/int/choice(...)."),
    param: list[str] = typer.Option([], help='A parameter, e.g. --param "optim.lr=loguniform(1e-3,0.3)" (repeatable).'),
    trials: int = typer.Option(20, help="Trials to finish (complete or pruned); with --resume: a new total."),
    timeout: str | None = typer.Option(None, help="Stop starting trials after this long: 2h, 30m, 90s."),
    jobs: int = typer.Option(1, help="Trials run at once, each in its own process with cores/jobs threads."),
    nproc: int = typer.Option(1, help="Processes per trial: each trial a DDP run through torchrun (one per GPU)."),
    sampler: str = typer.Option("tpe", help="tpe (seeded), random, grid (choice/int only), cmaes, nsga2."),
    pruner: str | None = typer.Option(
        None, help="none, median, asha (successive halving), hyperband (default: median; none for several metrics)."
    ),
    metric: list[str] = typer.Option(
        [],
        help="Objective (repeatable: several make a Pareto front): a logged metric (default: the family's, "
        "on validation), or parameters / latency_ms measured on the trained model.",
    ),
    direction: list[str] = typer.Option([], help="maximize or minimize, one per --metric (default: each one's own)."),
    storage: str | None = typer.Option(
        None, help="Optuna RDB URL shared by several machines (default: a journal file)."
    ),
    study: str | None = typer.Option(None, help="Study name and directory under track.runs_dir."),
    seed: int = typer.Option(0, help="Sampler seed."),
    set_: list[str] = typer.Option([], "--set", help="Override a field of the base recipe (repeatable)."),
    resume: Path | None = typer.Option(None, help="Go on with the study in this directory (after Ctrl-C or kill -9)."),
    report: Path | None = typer.Option(None, help="Rewrite and print the report of the study in this directory."),
) -> None:
    """Hyper-parameter search on Optuna: each trial an ordinary run, pruned per epoch, resumable, parallel."""
    import time

    from nnrecipe.tune.study import load_plan, new_plan, open_study, parse_duration, recipe_raw, run_study, save_plan

    if report is not None or resume is not None:
        folder = report if report is not None else resume
        _only_given(ctx, {"report"} if report is not None else {"resume", "jobs", "trials", "timeout"})
        plan = load_plan(folder)
        if report is not None:
            from nnrecipe.tune.report import write_study_report

            write_study_report(open_study(plan, folder), plan, folder)
            out.print((folder / "report.md").read_text(), markup=False)
            return
        if _given(ctx, "trials") or _given(ctx, "timeout"):  # more trials, or another time budget
            if trials < 1:
                raise UserError(f"--trials: at least 1 (got {trials})")
            plan.trials = trials if _given(ctx, "trials") else plan.trials
            plan.timeout = parse_duration(timeout) if _given(ctx, "timeout") else plan.timeout
            save_plan(plan, folder)
        result = run_study(plan, folder, jobs=jobs, resume=True)
        if result["interrupted"] or result["stopped"]:
            raise typer.Exit(130)
        return
    if recipe is None:
        raise UserError("tune: give a recipe file, or --resume / --report with a study directory")
    path = _find_recipe(recipe)
    raw = recipe_raw(path, set_)
    from nnrecipe.engine.config import check_folder_name

    name = check_folder_name(study, "--study") or f"tune-{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    plan = new_plan(raw, space, param, trials, sampler=sampler, pruner=pruner, metric=metric, direction=direction,
                    seed=seed, storage=storage, name=name, timeout=parse_duration(timeout), source=str(path),
                    nproc=nproc)  # fmt: skip
    folder = Path(raw.get("track", {}).get("runs_dir", "runs")) / name
    result = run_study(plan, folder, jobs=jobs, resume=study is not None and (folder / "study.json").is_file())
    if result["interrupted"] or result["stopped"]:
        raise typer.Exit(130)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the command line gave option `name` (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _only_given(ctx: typer.Context, allowed: set[str]) -> None:
    """Options a mode does not read are refused, not ignored (`tune --resume DIR --param ...` ran the old plan)."""
    for name in ctx.params:
        if name not in allowed and _given(ctx, name):
            flag = "a recipe file" if name == "recipe" else f"--{name.rstrip('_').replace('_', '-')}"
            mode = "--report" if "report" in allowed else "--resume (the study keeps its plan, study.json)"
            raise UserError(f"{flag}: not with {mode}")


def _print_table(table) -> None:
    """A terminal's width, else rows whole (a pipe would get an 80-column squeeze)."""
    (out if out.is_terminal else Console(highlight=False, width=250)).print(table)


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


@app.command("runs")
def runs_table(
    folder: Path = typer.Argument(Path("runs"), help="Where the runs are (searched three folders deep)."),
    task: str | None = typer.Option(None, help="Only runs of this task family."),
    status: str | None = typer.Option(
        None,
        help="Only runs with this status: created, running, interrupted, finished, early_stopped, diverged, pruned, failed or damaged.",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per run instead of the table."),
) -> None:
    """A table of runs: task, status, primary metric, when, how long, size on disk."""
    from rich.table import Table

    from nnrecipe.run_index import list_runs

    rows = list_runs(folder, task, status)
    if as_json:
        for r in rows:
            out.print(json.dumps(r.as_dict()), markup=False, soft_wrap=True)
        return
    table = Table(title=f"{len(rows)} run{'s' * (len(rows) != 1)} under {folder}", box=None, header_style="bold")
    for col in ("run", "task", "status", "metric", "value", "created", "time", "size"):
        table.add_column(col, justify="right" if col in ("value", "time", "size") else "left")
    for r in rows:
        value = "-" if r.value is None else f"{r.value:.4g}"
        seconds = "-" if r.seconds is None else f"{r.seconds / 60:.1f} min" if r.seconds >= 60 else f"{r.seconds:.0f} s"
        table.add_row(
            str(r.path.relative_to(folder)) if r.path != folder else str(r.path),
            r.task,
            r.status,
            f"{r.metric} ({r.split})" if r.split else r.metric,
            value,
            r.created.replace("T", " "),
            seconds,
            _size(r.bytes),
        )
    _print_table(table)


@app.command()
def compare(
    run_dirs: list[Path] = typer.Argument(..., help="Two or more run directories."),
    out_png: Path = typer.Option(Path("compare.png"), "--out", help="The PNG of overlaid learning curves."),
) -> None:
    """Runs side by side: every reported metric, the recipe fields that differ, and overlaid learning curves."""
    from rich.table import Table

    from nnrecipe.run_index import compare as compare_runs

    result = compare_runs(run_dirs, out_png)
    names = [Path(r["path"]).name for r in result["runs"]]
    for title, rows in (("metric", result["metrics"]), ("recipe field", result["recipe_differences"])):
        if not rows:
            continue
        table = Table(box=None, header_style="bold")
        table.add_column(title)
        for name in names:
            table.add_column(name, justify="right")
        for key, values in rows.items():
            table.add_row(key, *[_cell(v) for v in values])
        _print_table(table)
    if not result["recipe_differences"]:
        out.print("recipes: identical (track.* aside)")
    err.print(f"curves: {result['plot']}" if result["plot"] else "no learning curve is shared by all the runs")


def _cell(value) -> str:
    """A compared value in a table cell: numbers to 4 significant digits, long text cut (a recipe's
    description stretched every column to its length)."""
    if value is None:
        return "-"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 40 else f"{text[:39]}…"


@app.command()
def clean(
    folder: Path = typer.Argument(Path("runs"), help="Where the runs are."),
    keep_best: int = typer.Option(
        ..., min=0, help="Keep the checkpoints of the N best finished runs of each recipe (or tune study)."
    ),
    task: str | None = typer.Option(None, help="Only runs of this task family."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before deleting."),
) -> None:
    """Delete the checkpoints of finished (or pruned) runs outside each recipe's or tune study's N best
    (reports, metrics and plots stay); unfinished runs, which need their checkpoints to resume, and members
    of an ensemble in the folder are never touched."""
    from nnrecipe.run_index import ensemble_members, list_runs, remove_checkpoints, to_clean

    rows, needed = list_runs(folder, task), ensemble_members(folder)
    chosen = to_clean(rows, keep_best, needed)
    for r in to_clean(rows, keep_best):
        if r.path.resolve() in needed:
            err.print(f"kept {r.path}: ensemble {needed[r.path.resolve()]} averages it", markup=False)
    if not chosen:
        err.print("nothing to clean")
        return
    total = sum(r.checkpoint_bytes for r in chosen)
    for r in chosen:
        out.print(f"{r.path}  {r.metric} {r.value:.4g}  {_size(r.checkpoint_bytes)}", markup=False)
    if not yes and not typer.confirm(f"delete the checkpoints of these {len(chosen)} runs ({_size(total)})?"):
        err.print("nothing deleted")
        raise typer.Exit(1)
    for r in chosen:
        remove_checkpoints(r)
    err.print(f"freed {_size(total)} from {len(chosen)} runs")


@app.command("recipes")
def list_recipes() -> None:
    """List the bundled recipes, one line each."""
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        try:
            desc = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        except yaml.YAMLError:
            desc = "(unreadable)"
        out.print(f"{path.stem:32s} {desc}")


@app.command()
def fields() -> None:
    """Print every recipe field with its type, default and meaning (markdown)."""
    from nnrecipe.recipe import reference_markdown

    out.print(reference_markdown(), markup=False, end="")


def _find_recipe(path: Path) -> Path:
    # `nnrecipe train digits-convnet` works too: look in the bundled recipes folder.
    if not path.exists():
        for candidate in (RECIPES_DIR / path.name, RECIPES_DIR / f"{path.name}.yaml"):
            if candidate.is_file():
                return candidate
        if path.parent == Path(".") and path.name:  # a bare name: most likely a bundled recipe, mistyped
            import difflib

            from nnrecipe.errors import RecipeError

            names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
            close = difflib.get_close_matches(path.stem, names, n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise RecipeError(f"recipe file not found: {path} ({hint}`nnrecipe recipes` lists the bundled ones)")
    return path


def _os_error(e: OSError) -> str:
    """`<path>: <why>`; a file standing where a folder is needed is named itself (mkdir said "Not a
    directory" about the folder it could not make)."""
    blocker = file_in_the_way(e)
    return f"{blocker}: a file, where a folder is needed" if blocker else f"{e.filename}: {e.strerror}"


def _summaries_on_one_line(group: typer.Typer) -> None:
    """`--help`'s command list shows each docstring's first paragraph, and typer's rich mode keeps its source
    line breaks there: sentences broke mid-line. Given as a one-line summary, it wraps to the terminal."""
    for info in group.registered_commands:
        if info.short_help is None and info.callback is not None and info.callback.__doc__:
            info.short_help = " ".join(inspect.cleandoc(info.callback.__doc__).split("\n\n")[0].split())
    for sub in group.registered_groups:
        _summaries_on_one_line(sub.typer_instance)


_summaries_on_one_line(app)


def main() -> None:
    # SIGTERM (kill, a cluster's preemption, docker stop) stops a command as Ctrl-C does: training saves a
    # checkpoint and every run records itself interrupted (it died saying "running"); the server and the
    # training loop put their own handlers in place while they run.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        try:
            app()
        except ModuleNotFoundError as e:
            from nnrecipe.extras import missing_extra

            raise missing_extra(e) or e from None
        finally:  # a process torchrun launched (train --nproc, --nnodes) leaves its group before exiting
            end_process_group()
    except UserError as e:
        msg = str(e) if str(e).startswith("recipe error") else f"error: {e}"
        err.print(msg, style="red", markup=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("aborted")
        sys.exit(130)
    except SystemExit as e:  # typer turns a Ctrl-C (or SIGTERM) inside a command into a silent exit 130
        if e.code == 130 and isinstance(getattr(e.__context__, "__cause__", None), KeyboardInterrupt):
            err.print("aborted")
        raise
    except OSError as e:
        if e.filename is None or not e.strerror:  # not a file the user named or a disk that refused: a bug
            raise
        err.print(f"error: {_os_error(e)}", style="red", markup=False)
        sys.exit(1)
    except (MemoryError, RuntimeError) as e:  # torch's CPU and CUDA allocators raise RuntimeError subclasses
        text = first_line(e)
        if not isinstance(e, MemoryError) and "out of memory" not in text and "can't allocate memory" not in text:
            raise
        err.print(f"error: out of memory ({text[:200]}); use a smaller train.batch_size, data.image_size or "
                  "model, or free memory", style="red", markup=False)  # fmt: skip
        sys.exit(1)


if __name__ == "__main__":
    main()
