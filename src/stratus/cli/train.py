"""`stratus train --model M --data FILES --out DIR (--lora SPEC | --full)`: fine-tune a model
with data parallelism across worker processes that survives a lost worker (docs/TRAINING.md).

Imports only click at module level, so `stratus --help` stays quick.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("train")
@click.option("--model", required=True, help="Checkpoint directory, GGUF file or Hugging Face name.")
@click.option(
    "--data",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Training data (repeatable): plain text, or .jsonl of {'messages': [...]} (assistant turns "
    "learned) or {'text': ...}.",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory."
)
@click.option(
    "--lora", "lora", help="Train a LoRA adapter: r=16,alpha=32,dropout=0,targets=q,k,v,o,gate,up,down."
)
@click.option("--full", is_flag=True, help="Train every weight; the output is a full checkpoint.")
@click.option(
    "--eval-data",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Held-out data (repeatable). Default: --eval-fraction of --data.",
)
@click.option("--eval-fraction", type=float, default=0.1, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Data-parallel worker processes.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Examples per step, all workers.")
@click.option("--micro-batch", type=int, default=4, show_default=True, help="Examples per forward pass.")
@click.option("--seq-len", type=int, default=512, show_default=True, help="Tokens per example (longer: cut).")
@click.option("--steps", type=int, help="Optimizer steps. Default: --epochs over the data.")
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True, help="Peak learning rate.")
@click.option("--warmup", type=int, default=0, show_default=True, help="Warm-up steps (linear).")
@click.option("--min-lr-ratio", type=float, default=0.0, show_default=True, help="Where the cosine ends.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="0: no clipping.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-every", type=int, default=50, show_default=True, help="Steps between evaluations.")
@click.option(
    "--checkpoint-every", type=int, default=50, show_default=True, help="Steps between checkpoints."
)
@click.option("--keep-checkpoints", is_flag=True, help="Keep the checkpoints after the job finishes.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=int, help="Torch threads per worker. Default: the CPU cores shared out.")
@click.option("--max-restarts", type=int, default=3, show_default=True)
@click.option(
    "--same-workers-on-failure",
    is_flag=True,
    help="Restart with as many workers as before (default: with those that remain).",
)
@click.option("--max-steps-per-second", type=float, help="Pace the job (a machine shared with others).")
@click.option(
    "--ray-address",
    help="Run the workers as Ray actors spread over a cluster: 'auto', 'HOST:6379' or 'local'. The "
    "model, data and --out must be on storage every node sees at the same path.",
)
@click.option(
    "--deploy",
    "deploy_url",
    metavar="URL",
    help="With --lora: then load the adapter into the gateway at URL (POST "
    "/admin/models/BASE/adapters, with an admin's STRATUS_API_KEY; the gateway reads --out).",
)
@click.option(
    "--deploy-as", metavar="BASE:NAME", help="With --deploy: the served model and the adapter's name."
)
@click.option("--cacert", envvar="STRATUS_CA_CERT", help="With --deploy: CA certificate for HTTPS.")
def train(**options) -> None:
    """Fine-tune a causal LM: full or LoRA, data parallel, restarted from its last checkpoint when
    a worker dies. Writes a Hugging Face checkpoint or a PEFT adapter to --out, with metrics.jsonl.

    Credential: none for training (local files and processes); --deploy: STRATUS_API_KEY of a
    gateway admin (models.manage)."""
    from stratus.hub import HubError, resolve_model
    from stratus.train.lora import LoraSpec
    from stratus.train.spec import TrainSpec
    from stratus.train.supervisor import Supervisor, TrainingFailed

    if bool(options["lora"]) == options["full"]:
        raise click.UsageError("give one of --lora SPEC (an adapter) or --full (every weight)")
    try:
        lora = LoraSpec.parse(options["lora"]) if options["lora"] else None
        model = resolve_model(options["model"])
    except (ValueError, HubError) as exc:
        raise click.UsageError(str(exc)) from None
    if not model.exists():
        raise click.UsageError(f"--model {options['model']}: no such file or directory")
    if options["out"].resolve() == model.resolve():
        raise click.UsageError("--out is the model's own directory; write the result somewhere else")
    for name in ("workers", "batch_size", "micro_batch", "seq_len"):
        if options[name] < 1:
            raise click.UsageError(f"--{name.replace('_', '-')} must be at least 1")
    deploy = _deploy_target(options)
    if options["batch_size"] % options["workers"]:
        raise click.UsageError("--batch-size must be a multiple of --workers (each takes an equal share)")
    spec = TrainSpec(
        model=str(model.resolve()),
        data=[str(p.resolve()) for p in options["data"]],
        out=str(options["out"].resolve()),
        lora=lora,
        eval_data=[str(p.resolve()) for p in options["eval_data"]],
        eval_fraction=options["eval_fraction"],
        workers=options["workers"],
        batch_size=options["batch_size"],
        micro_batch=options["micro_batch"],
        seq_len=options["seq_len"],
        steps=options["steps"],
        epochs=options["epochs"],
        lr=options["lr"],
        min_lr_ratio=options["min_lr_ratio"],
        warmup_steps=options["warmup"],
        weight_decay=options["weight_decay"],
        max_grad_norm=options["max_grad_norm"] or None,
        seed=options["seed"],
        eval_every=max(1, options["eval_every"]),
        checkpoint_every=max(1, options["checkpoint_every"]),
        keep_checkpoints=options["keep_checkpoints"],
        precision=options["precision"],
        device=options["device"],
        threads=options["threads"],
        max_restarts=options["max_restarts"],
        shrink_on_failure=not options["same_workers_on_failure"],
        max_steps_per_second=options["max_steps_per_second"],
    )
    launcher = None
    if options["ray_address"]:
        from stratus.cluster.ray_connect import connect
        from stratus.train.ray_workers import RayLauncher

        try:
            connect(options["ray_address"])
        except (ConnectionError, ImportError) as exc:
            raise click.ClickException(str(exc)) from None
        launcher = RayLauncher()
    try:
        result = Supervisor(spec, launcher).run()
    except TrainingFailed as exc:
        raise click.ClickException(str(exc)) from None
    kind = "adapter" if lora else "checkpoint"
    held = (
        f"; held-out loss {result.eval_loss:.4f}, perplexity {result.eval_ppl:.2f}"
        if result.eval_loss
        else ""
    )
    restarts = f" after {result.attempts - 1} restart(s)" if result.attempts > 1 else ""
    click.echo(f"{kind} written to {result.out_dir}{restarts}{held}")
    if deploy is not None:
        _deploy(options, deploy, result.out_dir)


def _deploy(options: dict, target: tuple[str | None, str], out_dir: Path) -> None:
    """Load the output into the gateway at --deploy: an adapter onto its base model, a full
    checkpoint as a model of its own (loaded in the background)."""
    from stratus.cli.common import Client

    client = Client(options["deploy_url"], options["cacert"])
    base, name = target
    if base is not None:
        answer = client.call("POST", f"/admin/models/{base}/adapters", {"name": name, "path": str(out_dir)})
        click.echo(
            f"deployed: {options['deploy_url']} serves it as model {answer.get('id', f'{base}:{name}')}"
        )
    else:
        answer = client.call("POST", "/admin/models", {"name": name, "model": str(out_dir)})
        click.echo(
            f"deployed: {options['deploy_url']} is loading it as model {name} ({answer.get('state')}; "
            "stratus models list shows when it is ready)"
        )


def _deploy_target(options: dict) -> tuple[str | None, str] | None:
    """(base model, adapter name) or (None, model name) of --deploy-as, checked before training."""
    if not options["deploy_url"]:
        if options["deploy_as"]:
            raise click.UsageError("--deploy-as needs --deploy URL")
        return None
    text = options["deploy_as"] or ""
    if options["lora"]:
        base, _, name = text.partition(":")
        if not base or not name:
            raise click.UsageError(
                "--deploy with --lora needs --deploy-as BASE:NAME (the served model, the adapter's name)"
            )
        target: tuple[str | None, str] = (base, name)
    else:
        if not text or ":" in text:
            raise click.UsageError("--deploy with --full needs --deploy-as NAME (the new model's name)")
        target = (None, text)
    from stratus.cli.common import api_key

    api_key()  # now, not after the training
    return target
