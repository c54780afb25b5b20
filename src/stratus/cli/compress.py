"""`stratus compress SRC DST --method int8|int4|prune`: write a smaller checkpoint the engine serves.

Imports only click at module level, so `stratus --help` stays quick.
"""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_EVAL_TEXT = Path("corpus/heldout.txt")


@click.command("compress")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "--method",
    type=click.Choice(["int8", "int4", "prune"]),
    help="int8: weight-only, one scale per output channel. int4: weight-only, groups of "
    "--group-size input columns, packed two per byte. prune: zero weights (see --pattern).",
)
@click.option(
    "--group-size", type=int, default=128, show_default=True, help="int4: input columns per scale/zero."
)
@click.option("--awq", is_flag=True, help="int4: activation-aware scales and clipping from calibration text.")
@click.option(
    "--gptq",
    is_flag=True,
    help="int4: error-compensating rounding on calibration text (with or without --awq).",
)
@click.option(
    "--quantize-head", is_flag=True, help="Quantize the output head too (kept in float by default)."
)
@click.option(
    "--pattern", type=click.Choice(["unstructured", "2:4"]), default="unstructured", show_default=True
)
@click.option(
    "--sparsity", type=float, default=0.5, show_default=True, help="prune, unstructured: fraction zeroed."
)
@click.option(
    "--prune-metric",
    type=click.Choice(["magnitude", "wanda"]),
    default="magnitude",
    show_default=True,
    help="wanda: |weight| x input norm on calibration text.",
)
@click.option("--then", "then", type=click.Choice(["int8", "int4"]), help="prune: quantize afterwards.")
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Text for --awq / --gptq / wanda. Default: text the model samples itself.",
)
@click.option("--calibration-tokens", type=int, default=2048, show_default=True)
@click.option(
    "--eval-text",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Held-out text for perplexity. Default: {DEFAULT_EVAL_TEXT} when it exists.",
)
@click.option("--max-eval-tokens", type=int, default=16384, show_default=True)
@click.option(
    "--prompts",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Prompt set for top-1 agreement, one prompt per line. Default: a built-in set.",
)
@click.option("--speed/--no-speed", default=True, show_default=True, help="Measure decode tokens/s.")
@click.option("--evaluate/--no-evaluate", default=True, show_default=True, help="Write the report.")
@click.option("--evaluate-only", is_flag=True, help="Report on an existing SRC/DST pair; write nothing else.")
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")
@click.option("--threads", type=int, help="PyTorch CPU threads. Default: PyTorch's choice.")
def compress(src: Path, dst: Path, method: str | None, **options) -> None:
    """Compress the checkpoint SRC into DST and report what it cost and gained.

    \b
    Examples:
      stratus compress models/demo models/demo-int8 --method int8
      stratus compress models/demo models/demo-int4 --method int4 --awq --calibration corpus/austen/emma.txt
      stratus compress models/demo models/demo-24 --method prune --pattern 2:4 --then int8
      stratus compress models/demo models/demo-int8 --evaluate-only

    The report (parameters, bytes, perplexity, top-1 agreement, decode tokens/s at batch 1 and
    16, before and after) is printed and written to DST/compression_report.{json,md}. Progress
    bars (stderr) follow each step.

    Credential: none (local files only; no gateway is contacted).
    """
    import torch

    from stratus.compress.checkpoint import CompressError
    from stratus.compress.evaluate import EvalOptions
    from stratus.compress.pipeline import compress as run_compress
    from stratus.compress.pipeline import evaluate_pair
    from stratus.compress.spec import CompressSpec

    if options["threads"]:
        torch.set_num_threads(options["threads"])
    eval_options = _eval_options(options, EvalOptions)
    try:
        if options["evaluate_only"]:
            report = evaluate_pair(src, dst, eval_options)
        else:
            if method is None:
                raise CompressError("--method is required (int8, int4 or prune), unless --evaluate-only")
            spec = CompressSpec(
                method=method,
                group_size=options["group_size"],
                awq=options["awq"],
                gptq=options["gptq"],
                quantize_head=options["quantize_head"],
                sparsity=options["sparsity"],
                pattern=options["pattern"],
                prune_metric=options["prune_metric"],
                then=options["then"],
                calibration=options["calibration"],
                calibration_tokens=options["calibration_tokens"],
            )
            report = run_compress(
                src, dst, spec, options["overwrite"], eval_options if options["evaluate"] else None
            )
    except (CompressError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if report is None:
        click.echo(f"wrote {dst}")
        return
    click.echo(report.markdown())
    click.echo(f"report: {dst / 'compression_report.json'}, {dst / 'compression_report.md'}")


def _eval_options(options: dict, cls):
    from stratus.compress.evaluate import DEFAULT_PROMPTS

    eval_text = options["eval_text"]
    if eval_text is None and DEFAULT_EVAL_TEXT.is_file():
        eval_text = DEFAULT_EVAL_TEXT
    prompts = list(DEFAULT_PROMPTS)
    if options["prompts"] is not None:
        try:
            lines = Path(options["prompts"]).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise click.ClickException(
                f"--prompts: cannot read {options['prompts']} ({exc.strerror})"
            ) from None
        prompts = [line for line in lines if line.strip()]
        if not prompts:
            raise click.ClickException(f"--prompts: {options['prompts']} has no non-empty line")
    return cls(
        eval_text=eval_text,
        max_eval_tokens=options["max_eval_tokens"],
        prompts=prompts,
        speed=options["speed"],
    )
