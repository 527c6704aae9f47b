"""The ``steadygen`` command: generate, serve, worker, monitor, doctor, bench, models.

Each command reads the settings once, builds what it needs, and turns steadygen's typed
errors into one clear line and a non-zero exit code (2 for bad input), never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from steadygen import __version__
from steadygen.config import Settings, load_settings
from steadygen.errors import (
    ConfigError,
    FieldError,
    InvalidRequest,
    SteadygenError,
    UnknownModel,
)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def edge_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Typed errors become one line on stderr: 2 for bad input or settings, 1 otherwise."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InvalidRequest as exc:
            for err in exc.errors:
                click.echo(f"error: {err.field}: {err.message}", err=True)
            sys.exit(2)
        except (ConfigError, UnknownModel) as exc:
            _fail(str(exc), 2)
        except SteadygenError as exc:
            _fail(str(exc), 1)
        except OSError as exc:  # a directory, a file or a port the command cannot use
            where = f" ({exc.filename})" if exc.filename else ""
            _fail(f"{exc.strerror or exc}{where}", 1)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    return load_settings(ctx.obj.get("config"), **overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="steadygen")
@click.option("--config", type=click.Path(dir_okay=False), help="A TOML settings file.")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def main(ctx: click.Context, config: str | None, verbose: int) -> None:
    """steadygen: a Z-Image-Turbo image server that is fast, steady and says why."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


@main.command()
@click.argument("prompt")
@click.option("--model", help="zimage-turbo, zimage-tiny, or a local checkpoint directory.")
@click.option("--size", help="WIDTHxHEIGHT, multiples of 16 (default: the model's size).")
# Typed as text: the shared validation gives the rule and the allowed range.
@click.option("--steps", help="Denoising steps, 1 to 100 (default 8).")
@click.option("--guidance", help="CFG scale; above 0 doubles compute (default 0).")
@click.option("--seed", help="0 to 4294967295; random when left out.")
@click.option("--n", "n", help="Images for this prompt, 1 to 4.")
@click.option("--negative", help="Negative prompt (used when guidance > 0).")
@click.option("--out", type=click.Path(file_okay=False), default="outputs", show_default=True)
@click.option("--device", help="cuda:N or cpu (default: cuda:0 when present).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@edge_errors
def generate(ctx: click.Context, prompt: str, **opts: Any) -> None:
    """Generate images from PROMPT and write PNGs with their parameters inside."""
    from steadygen.generate import run_generate

    settings = _settings(ctx, model=opts.pop("model"), device=opts.pop("device"))
    code = run_generate(settings, prompt, **opts)
    sys.exit(code)


@main.command()
@click.option("--host", help="Address to bind (default 127.0.0.1: this machine only).")
@click.option("--port", type=int, help="Port (default 7860).")
@click.option("--model", help="zimage-turbo, zimage-tiny, or a local checkpoint directory.")
@click.option("--device", help="cuda:N or cpu (default: cuda:0 when present).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Jobs database and images.")
@click.option("--api-key", help="Require 'Authorization: Bearer KEY' on every API route.")
@click.option("--max-queue", type=int, help="Waiting jobs before 429 (default 64).")
@click.option("--concurrency", type=int, help="Jobs run at once (default 1; more is slower).")
@click.option("--memory", type=click.Choice(["auto", "high", "balanced", "low"]),
              help="What stays on the GPU (default auto: from the card's memory).")
@click.option("--queue", "queue_url", help="redis://host:port/db: enqueue for remote workers.")
@click.option("--sampler-hz", type=float, help="Telemetry samples per second (0 = off).")
@click.option("--empty-cache-per-request", is_flag=True, default=None,
              help="Give cached GPU memory back after each job (the known-bad case).")
@click.option("--no-warmup", "warmup", flag_value=False, default=None,
              help="Skip warm-up (the first request pays for it).")
@click.pass_context
@edge_errors
def serve(ctx: click.Context, **opts: Any) -> None:
    """Run the HTTP server: OpenAI, AUTOMATIC1111 and job APIs, web page, metrics."""
    from steadygen.serve import run_serve

    settings = _settings(ctx, **opts)
    sys.exit(run_serve(settings))


@main.command()
@click.option("--config", "configs", multiple=True,
              help="NAME:key=value,... settings overrides (or NAME=file.toml); repeat for A/B.")
@click.option("--url", help="Benchmark a running server instead of in-process ones.")
@click.option("--api-key", help="Key for --url.")
@click.option("--model", help="Model for in-process targets.")
@click.option("--size", default=None, help="WIDTHxHEIGHT (default: the model's size).")
@click.option("--steps", type=int, default=8, show_default=True)
@click.option("--guidance", type=float, default=0.0, show_default=True)
@click.option("--n", "n", type=int, default=1, show_default=True)
@click.option("--runs", type=int, default=20, show_default=True, help="Timed runs per config.")
@click.option("--rounds", type=int, default=4, show_default=True,
              help="Interleaved rounds (configs alternate order each round).")
@click.option("--clients", type=int, default=1, show_default=True,
              help="Closed loop: concurrent clients.")
@click.option("--rate", type=float, help="Open loop: Poisson arrivals per second.")
@click.option("--warmup-runs", type=int, default=2, show_default=True,
              help="Runs per config before timing (excluded, reported).")
@click.option("--interfere", help="cpu[:procs=N] | gpu[:size=N] | vram[:gib=N] in marked rounds.")
@click.option("--interfere-every", type=int, default=2, show_default=True,
              help="Interfere in every Kth round.")
@click.option("--out", type=click.Path(file_okay=False), default="bench-report",
              show_default=True)
@click.pass_context
@edge_errors
def bench(ctx: click.Context, **opts: Any) -> None:
    """A/B benchmark: closed or open loop, interleaved configs, interference, report."""
    from steadygen.bench.cli import run_bench_command

    settings = _settings(ctx, model=opts.pop("model"))
    sys.exit(run_bench_command(settings, opts, " ".join(sys.argv)))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.pass_context
@edge_errors
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check this machine for causes of slow or jittery generation; print the fixes."""
    from steadygen.doctor import run_doctor

    sys.exit(run_doctor(_settings(ctx), as_json))


@main.command()
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds.")
@click.option("--once", is_flag=True, help="One reading, then exit.")
@click.option("--json", "as_json", is_flag=True, help="Print readings as JSON.")
@click.pass_context
@edge_errors
def monitor(ctx: click.Context, interval: float, once: bool, as_json: bool) -> None:
    """A live view of the GPU and the host: clocks, throttling, other processes, pressure."""
    from steadygen.monitor import run_monitor

    if not 0.05 <= interval <= 60:
        raise InvalidRequest([FieldError("--interval", f"must be 0.05 to 60 s (got {interval})")])
    sys.exit(run_monitor(interval, once, as_json))


@main.command()
@click.option("--queue", "queue_url", help="redis://host:port/db (or STEADYGEN_QUEUE_URL).")
@click.option("--model", help="zimage-turbo, zimage-tiny, or a local checkpoint directory.")
@click.option("--device", help="cuda:N or cpu (default: cuda:0 when present).")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="The data directory shared with the API (images go there).")
@click.option("--metrics-port", type=int, help="This worker's /metrics port (default 9400 + "
              "the GPU index, so workers on one host do not collide; 0 picks a free one).")
@click.option("--cpu-threads", type=int, help="CPU threads for torch (sets OMP_NUM_THREADS); "
              "use 1 when several workers share a CPU.")
@click.option("--sampler-hz", type=float, help="Telemetry samples per second (0 = off).")
@click.option("--no-warmup", "warmup", flag_value=False, default=None,
              help="Skip warm-up (the first job pays for it).")
@click.pass_context
@edge_errors
def worker(ctx: click.Context, cpu_threads: int | None, **opts: Any) -> None:
    """Run jobs from a Redis stream on one device: one worker per GPU, behind `serve --queue`."""
    from steadygen.worker import run_worker

    settings = _settings(ctx, **opts)
    if not settings.queue_url:
        raise ConfigError("a worker needs a queue: --queue redis://HOST:6379/0, or set "
                          "STEADYGEN_QUEUE_URL")
    sys.exit(run_worker(settings, cpu_threads=cpu_threads))


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@edge_errors
def models(ctx: click.Context, as_json: bool) -> None:
    """List the models and whether each can run here."""
    from steadygen.engine.device import cuda_available
    from steadygen.engine.models import availability, builtin_models, default_model_name

    has_cuda = cuda_available()
    default = default_model_name(has_cuda)
    rows = []
    for spec in builtin_models().values():
        ok, why = availability(spec, has_cuda)
        rows.append(
            {
                "name": spec.name,
                "available": ok,
                "default": spec.name == default,
                "why": why,
                "description": spec.description,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        mark = "*" if row["default"] else " "
        state = "available" if row["available"] else "unavailable"
        click.echo(f"{mark} {row['name']:<14} {state:<12} {row['description']}")
        click.echo(f"  {'':<14} {'':<12} {row['why']}")
    click.echo("(* = default on this machine; any local checkpoint directory also works)")


def run() -> None:  # pragma: no cover - console entry alias
    main(obj={})


if __name__ == "__main__":  # pragma: no cover
    main(obj={})
