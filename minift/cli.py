"""The ``minift`` command: train, gradcheck, bench. Every command takes --backend and --seed."""

from __future__ import annotations

import sys
import time

import click
import numpy as np
from rich.console import Console
from rich.table import Table

import minift as mf
from backends import BackendUnavailable, get_backend

console = Console()


def common_options(fn):
    fn = click.option("--seed", default=0, show_default=True, help="Random seed (bit-exact on numpy).")(fn)
    fn = click.option("--backend", type=click.Choice(["numpy", "cuda", "cuda-emulator"]), default="numpy",
                      show_default=True, help="Array backend to run on.")(fn)
    return fn


def select_backend(name: str, seed: int):
    """Make ``name`` the default backend and seed every generator, or exit with the reason."""
    try:
        backend = get_backend(name)
    except BackendUnavailable as err:
        raise click.ClickException(str(err)) from err
    mf.set_backend(backend)
    mf.manual_seed(seed)
    return backend


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(mf.__version__, prog_name="minift")
def main() -> None:
    """minift: fine-tuning from first principles, on NumPy or CuPy."""


@main.command()
@common_options
@click.option("--filter", "name_filter", default="", help="Only ops whose name contains this.")
def gradcheck(backend: str, seed: int, name_filter: str) -> None:
    """Check every op's backward against finite differences (float64)."""
    from minift.catalogue import all_cases
    from minift.gradcheck import gradcheck_report

    be = select_backend(backend, seed)
    table = Table(title=f"gradient check of the op catalogue ({be.name}, float64)")
    for column in ("op", "entries", "max abs error", "max rel error", "pass"):
        table.add_column(column, justify="left" if column == "op" else "right")
    failures = 0
    for case in all_cases():
        if name_filter not in case.name or not case.differentiable:
            continue
        arrays = case.make_inputs(np.random.default_rng(seed))
        inputs = [mf.tensor(a, requires_grad=a.dtype.kind == "f", backend=be) for a in arrays]
        report = gradcheck_report(case.fn, inputs, atol=case.atol, rtol=case.rtol)
        failures += not report.passed
        table.add_row(case.name, str(report.entries_checked), f"{report.max_abs_error:.1e}",
                      f"{report.max_rel_error:.1e}", "[green]yes" if report.passed else "[red]NO")
    console.print(table)
    if failures:
        console.print(f"[red]{failures} op(s) failed the gradient check")
        sys.exit(1)
    console.print(f"[green]all {table.row_count} ops pass")


@main.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@common_options
@click.option("--steps", type=int, help="Override the recipe's [train] steps.")
@click.option("--batch-size", type=int, help="Override [train] batch_size.")
@click.option("--lr", type=float, help="Override [train] lr (the peak learning rate).")
@click.option("--out", type=click.Path(file_okay=False), help="Override [output] dir.")
@click.option("--method", help="Fine-tune with a PEFT method (lora, dora, loha, ia3, ...) "
              "with its defaults, instead of the recipe's [peft] table or full fine-tuning.")
def train(recipe, backend: str, seed: int, steps, batch_size, lr, out, method) -> None:
    """Run a training RECIPE (a TOML file); without one, fine-tune the shipped pretrained GPT.

    The default recipe (minift/train/recipes/finetune-gpt-mini.toml) fine-tunes the shipped
    gpt-mini on the docstrings of a stdlib package it never saw, and prints before/after metrics.
    """
    from minift.train.lm import run_recipe
    from minift.train.recipe import RecipeError, load_recipe

    try:
        plan = load_recipe(recipe)
    except RecipeError as error:
        raise click.ClickException(str(error)) from error
    ctx = click.get_current_context()
    given_seed = seed if ctx.get_parameter_source("seed").name != "DEFAULT" else None
    plan = plan.with_overrides(
        out=out, method=method, steps=steps, batch_size=batch_size, lr=lr, seed=given_seed
    )
    be = select_backend(backend, plan.train.seed)
    try:
        info = run_recipe(plan, be, console)
    except (KeyError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    table = Table(title="before and after")
    columns = [k for k in ("loss", "perplexity", "general_loss") if k in info["eval_after"]]
    table.add_column("")
    for column in columns:
        table.add_column("general-text loss" if column == "general_loss" else f"val {column}",
                         justify="right")
    for name in ("before", "after"):
        table.add_row(name, *(f"{info[f'eval_{name}'][c]:,}" for c in columns))
    console.print(table)
    rate = info["tokens_seen"] / max(info["seconds"], 1e-9)
    console.print(f"{info['steps']} steps in {info['seconds']:.1f} s ({rate:,.0f} tokens/s); "
                  f"model, tokenizer and metrics in {plan.output.dir}")
    console.print(f"sample before: {info['sample_before']!r}")
    console.print(f"sample after:  {info['sample_after']!r}")


@main.command()
@click.option("--model", "model_name", default="llama-3.1-8b", show_default=True,
              help="A named config (minift.models.configs), built on the meta backend.")
@click.option("--method", default="lora", show_default=True,
              help="lora, rslora, dora, or any PEFT type minift registers (loha, ia3, ...).")
@click.option("--r", "rank", type=int, help="Rank (methods with an r).")
@click.option("--alpha", type=float, help="Scaling numerator (lora_alpha / alpha).")
@click.option("--targets", help="Comma-separated module names, 'all-linear', or a regex "
              "(default: the method's, q_proj,v_proj for the LoRA family).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Any other config field (JSON value), e.g. --option use_rslora=true.")
def count(model_name: str, method: str, rank, alpha, targets: str, options: tuple) -> None:
    """Count a method's trainable parameters on the real model and by formula."""
    from minift.peft.cli_config import build_config
    from minift.peft.count import count as count_model

    try:
        config = build_config(method, rank, alpha, targets, options)
        report = count_model(model_name, config)
    except (KeyError, ValueError, TypeError) as error:
        raise click.ClickException(str(error)) from error
    table = Table(title=f"{report.method} on {model_name} (meta backend: shapes only)")
    for column in ("layers", "weight (d, k)", "per layer", "formula", "count", "total"):
        table.add_column(column, justify="left" if column in ("layers", "formula") else "right")
    for row in report.rows:
        table.add_row(row.pattern, f"{row.shape[0]} x {row.shape[1]}", f"{row.per_layer:,}",
                      row.formula, str(row.layers), f"{row.per_layer * row.layers:,}")
    console.print(table)
    console.print(report.peft_line())
    verdict = "[green]agrees" if report.agrees else "[red]DISAGREES"
    console.print(f"formula total {report.formula_total:,} vs counted {report.trainable:,}: "
                  f"{verdict}")
    if not report.agrees:
        sys.exit(1)


@main.group()
def bench() -> None:
    """Benchmarks that print tables (never timed tests)."""


@bench.command("ops")
@common_options
@click.option("--repeat", default=5, show_default=True, help="Timing repeats (best is kept).")
def bench_ops(backend: str, seed: int, repeat: int) -> None:
    """Autograd overhead and op forward+backward cost against bare array math."""
    from minift.bench.ops import run_op_benchmarks

    be = select_backend(backend, seed)
    started = time.perf_counter()
    console.print(run_op_benchmarks(be, repeat))
    console.print(f"({time.perf_counter() - started:.1f} s)")


@bench.command("train")
@common_options
@click.option("--config", "config_names", multiple=True,
              help="Named GPT configs to time (repeatable). Default: bench-s and bench-m, "
              "and bench-l on cuda.")
@click.option("--repeat", default=5, show_default=True, help="Timed steps (best is kept).")
@click.option("--torch/--no-torch", "with_torch", default=True, show_default=True,
              help="Also time the same model in PyTorch, if it is importable.")
@click.option("--numpy/--no-numpy", "with_numpy", default=None,
              help="On a kernel backend, also time each config on NumPy. Default: every "
              "config but bench-l, whose NumPy step takes minutes.")
def bench_train(backend: str, seed: int, config_names: tuple, repeat: int, with_torch: bool,
                with_numpy) -> None:
    """GPT forward + backward + AdamW step: ms/step, tokens/s, GFLOP/s, peak memory, vs PyTorch.

    On cuda (and cuda-emulator) also with MINIFT_CUDA_MATMUL=cublas and against NumPy.
    """
    from minift.bench.train import run_train_benchmarks

    be = select_backend(backend, seed)
    started = time.perf_counter()
    console.print(run_train_benchmarks(be, repeat, config_names, with_torch, with_numpy))
    console.print(f"({time.perf_counter() - started:.1f} s)")


@bench.command("kernels")
@click.option("--backend", type=click.Choice(["cuda", "cuda-emulator"]), default="cuda",
              show_default=True, help="Where the kernels run (the emulator: use --tiny).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random operands.")
@click.option("--repeat", default=10, show_default=True, help="Timed runs (best is kept).")
@click.option("--tiny", is_flag=True, help="Small sizes, for the CPU emulator and tests.")
@click.option("--only", multiple=True, type=click.Choice(["matmul", "nf4", "fused"]),
              help="Print only these tables (repeatable).")
def bench_kernels(backend: str, seed: int, repeat: int, tiny: bool, only: tuple) -> None:
    """minift's CUDA kernels against the library: SGEMM vs cuBLAS, NF4 GEMV, fused ops."""
    from minift.bench.kernels import run_kernel_benchmarks

    be = select_backend(backend, seed)
    started = time.perf_counter()
    for table in run_kernel_benchmarks(be.kernels, tiny, repeat, seed, only):
        console.print(table)
    console.print(f"({time.perf_counter() - started:.1f} s)")


def _register_quant_commands() -> None:
    """``minift cost`` and ``minift quantize`` live with the code they drive (minift/quant/)."""
    from minift.quant.cli import quantize_command
    from minift.quant.cost_cli import cost_command

    main.add_command(cost_command)
    main.add_command(quantize_command)


_register_quant_commands()

if __name__ == "__main__":
    main()
