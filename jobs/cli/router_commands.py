"""`routeyard router ...` (train, eval, score, versions, rollback, list) and `routeyard retrain`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from db.models import LOCAL_TENANT
from jobs.cli.context import CliContext, ExitCode, Stages, atomic_output, atomic_path, cli_context, console, err
from jobs.cli.options import (
    DATA_HELP,
    NO_BASE_DATA,
    StrongColumn,
    TenantOption,
    WeakColumn,
    parse_params,
    read_outcome_data,
    warn_pgr,
    warn_small_training,
)
from jobs.services.input_formats import ParsedItem, detect_format, parse_stream
from jobs.services.retrain import ALL_TENANTS, RetrainRunning, check_margin, tenants_to_retrain
from jobs.services.retrain import retrain as run_retrain
from jobs.services.versions import (
    SERVING,
    job_router,
    resolve_router_spec,
    rollback,
    router_info,
    training_prompts_of,
    version_rows,
)
from routers.base import TrainOptions
from routers.calibration import save_quality_curve
from routers.data import ROUTELLM_STRONG, ROUTELLM_WEAK, prompt_fingerprint, save_training_prompts
from routers.evaluate import evaluate, pgr_caveats
from routers.registry import DEFAULT_ROUTER, PRETRAINED_DIR, ROUTERS, train_router
from routeyard.errors import InvalidInput
from worker.runtime import load_job_router, router_runtime

app = typer.Typer(help="Train, score with and list routers.", no_args_is_help=True)
BASELINES = {"random": "random baseline", "oracle": "oracle"}  # rows `router eval` adds beside the routers
top = typer.Typer()  # commands that sit at the top level (`routeyard retrain`)


@app.command("list")
def router_list(ctx: typer.Context) -> None:
    """The registry: router names, and which ship a pretrained checkpoint."""
    for name in ROUTERS:
        shipped = (PRETRAINED_DIR / name).is_dir()
        console.print(f"{name:<12} {'pretrained checkpoint shipped' if shipped else 'no checkpoint'}")


@app.command("train")
def router_train(
    ctx: typer.Context,
    data: Annotated[list[Path], typer.Option("--data", exists=True, help=DATA_HELP)],
    out: Annotated[Path, typer.Option("--out", help="Directory to write config.json + model.safetensors.")],
    router: Annotated[str, typer.Option("--router", help="Registry name.")] = DEFAULT_ROUTER,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (router default when left out).")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="A router setting as key=value (JSON values), e.g. c=0.0001 (linear), gamma=100 "
                        "(sw_ranking), finetune_rows=2000 (bert), train_layers=2 (causal_llm); repeat for more; an "
                        "unknown key lists the router's settings.")] = None,
    seed: int = 0,
    strong_column: StrongColumn = ROUTELLM_STRONG,
    weak_column: WeakColumn = ROUTELLM_WEAK,
) -> None:
    """Train a router on preference data and save it, with a record of the prompts it trained on."""
    settings = cli_context(ctx).settings
    params = parse_params(param or [])
    # Refused before the data is read and the router trained (minutes), not after.
    if router not in ROUTERS:
        raise InvalidInput(f"unknown router {router!r} (--router): one of {', '.join(sorted(ROUTERS))}")
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"--out {out}: a file is there; name a directory (new, or one to write into)")
    found = read_outcome_data(data, strong_column, weak_column)
    rows = found.preferences()
    console.print(f"{len(rows)} preference rows from {len(found.files)} file{'s' if len(found.files) != 1 else ''}")
    warn_small_training(rows)
    with Stages() as stages:
        trained = train_router(router, rows, router_runtime(settings),
                               TrainOptions(seed=seed, epochs=epochs, params=params, progress=stages.set))
    version = trained.save(out)
    save_training_prompts(out, [r.prompt for r in rows], version)
    console.print(f"saved {router} router version {version} to {out}")


@app.command("eval")
def router_eval(
    ctx: typer.Context,
    outcomes: Annotated[list[Path], typer.Option("--outcomes", exists=True,
                                                 help="Outcome files or directories of them, any layout: CSV/TSV "
                                                      "with a prompt column and the two models' columns, JSONL "
                                                      "{prompt, strong, weak}, a routellm-evals directory.")],
    routers: Annotated[list[str] | None, typer.Option(
        "--router", help="Router spec (serving, a registry name, a stored version as in `router versions`, e.g. "
                         "linear@<version>, a directory or a hub id); repeat to compare. "
                         "Default: serving.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Directory for metrics.json and curves.png.")] = Path("eval"),
    contaminated: Annotated[list[Path] | None, typer.Option(help="JSONL of prompts to leave out.")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds the random baseline is averaged over.")] = 10,
    save_curve: Annotated[bool, typer.Option(help="Save each router directory's PGR curve on these outcomes "
                                                  "(quality.json), for --target-pgr.")] = False,
    strong_column: StrongColumn = ROUTELLM_STRONG,
    weak_column: WeakColumn = ROUTELLM_WEAK,
) -> None:
    """PGR at 10%..90% strong calls, APGR, CPT(50%), CPT(80%) for each router, random and the oracle."""
    from routers.plot import plot_curves  # matplotlib: only this command draws

    state = cli_context(ctx)
    settings = state.settings
    # As submit resolves them: `serving` the local tenant's promoted version first, `router@version` a stored
    # version; a mistyped path is one line, before anything is read or scored.
    specs = [job_router(state.db, spec, settings, None) for spec in routers or [SERVING]]
    rows = read_outcome_data(outcomes, strong_column, weak_column, outcomes_only=True,
                             contaminated=contaminated).outcomes
    if not rows:
        raise InvalidInput("no outcome rows to evaluate on (all were contaminated)")
    if save_curve and (caveats := pgr_caveats(rows)):  # a job's --target-pgr reads its strong share off the curve
        raise InvalidInput("--save-curve: not saved, " + "; ".join(caveats) + ". A --target-pgr job would take its "
                           "strong share from this curve: evaluate on more prompts where the two models differ")
    warn_pgr(rows, ", ".join(p.name for p in outcomes))
    fingerprints = np.array([prompt_fingerprint(r.prompt) for r in rows], dtype=np.uint64)
    for spec in specs:
        seen = training_prompts_of(spec)
        overlap = int(np.isin(fingerprints, seen).sum()) if seen is not None and len(seen) else 0
        if overlap:
            err.print(f"[yellow]warning ({escape(spec)}):[/] it trained on {overlap} of these {len(rows)} prompts; "
                      "its figures here are inflated (judge it on prompts it never saw)")
    scores = {}
    with Stages() as stages:
        for spec in specs:
            loaded = load_job_router(spec, settings)
            label = loaded.label
            while label in scores or label in BASELINES:  # every row names one router
                label += "'"
            advance = stages.stage(f"scoring {label}", len(rows))
            scores[label] = loaded.router.win_rate([r.prompt for r in rows], progress=advance)
    found, curves = evaluate(scores, rows, seeds)
    for key, label in BASELINES.items():
        found[label], curves[label] = found.pop(key), curves.pop(key)
    if save_curve:
        for spec, name in zip(specs, scores, strict=True):
            if Path(spec).is_dir():
                replaced = (Path(spec) / "quality.json").exists()
                path = save_quality_curve(Path(spec), curves[name].fraction, curves[name].pgr,
                                          ", ".join(p.name for p in outcomes))
                # A stored version's curve is what its --target-pgr jobs read: say it changed
                console.print(f"{'replaced' if replaced else 'saved'} the quality curve of {name}: {path}")
    with atomic_output(out / "metrics.json") as f:
        f.write(json.dumps({k: m.to_dict() for k, m in found.items()}, indent=2) + "\n")
    first = next(iter(found.values()))
    with atomic_path(out / "curves.png") as tmp:
        plot_curves(curves, first.quality_strong, first.quality_weak, tmp,
                    f"{len(rows)} prompts: {', '.join(p.name for p in outcomes)}")
    table = Table(title=f"{len(rows)} prompts")
    for col in ("router", "APGR", "CPT(50%)", "CPT(80%)", *(f"PGR@{k}" for k in ("0.2", "0.5", "0.8"))):
        table.add_column(col)
    # No gap to recover (the weak model as good or better): PGR is undefined, and zeros would read as a measurement
    measured = first.quality_strong > first.quality_weak
    for name, m in found.items():
        cells = ([f"{m.apgr:.3f}", f"{m.cpt50:.1%}", f"{m.cpt80:.1%}",
                  *(f"{m.pgr_at[k]:.3f}" for k in ("0.2", "0.5", "0.8"))] if measured else ["n/a"] * 6)
        table.add_row(name, *cells)
    console.print(table)
    console.print(f"wrote {out / 'metrics.json'} and {out / 'curves.png'}")


def one_tenant(state: CliContext, tenant: str) -> list[str | None]:
    """The one tenant a command acts on; `all` is for retrain and schedules only."""
    if tenant == ALL_TENANTS:
        raise InvalidInput("--tenant all is for retrain: name one tenant here (local, global, or a tenant's name "
                           "or id)")
    return tenants_to_retrain(state.db, tenant)


@app.command("versions")
def router_versions(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False,
                    tenant: TenantOption = LOCAL_TENANT) -> None:
    """A tenant's trained router versions, then the global default's and the shipped one: metrics, data, the
    promotion decision, which one serves the tenant (`--tenant global`: the global default's)."""
    state = cli_context(ctx)
    [tenant_id] = one_tenant(state, tenant)
    with state.db() as session:
        versions = version_rows(session, state.settings, tenant_id)
    if as_json:
        console.print_json(json.dumps([{**v.__dict__, "created_at": v.created_at.isoformat() if v.created_at else None}
                                       for v in versions]))
        return
    table = Table()
    for col in ("serving", "router", "version", "APGR", "serving APGR then", "rows", "created", "decision"):
        table.add_column(col, no_wrap=col != "decision")
    for v in versions:
        table.add_row("*" if v.serving else "", v.router, v.version,
                      f"{v.apgr:.4f}" if v.apgr is not None else "-",
                      f"{v.baseline_apgr:.4f}" if v.baseline_apgr is not None else "-",
                      "" if v.rows is None else str(v.rows),
                      v.created_at.strftime("%Y-%m-%d %H:%M") if v.created_at else "shipped", v.decision)
    console.print(table)


@app.command("rollback")
def router_rollback(ctx: typer.Context,
                    version: Annotated[str, typer.Argument(help="A version from `router versions`, or `shipped`.")],
                    tenant: TenantOption = LOCAL_TENANT) -> None:
    """Serve an earlier router version of the tenant again (`shipped`: none of its own, so the global default
    or the shipped router serves it)."""
    state = cli_context(ctx)
    [tenant_id] = one_tenant(state, tenant)
    v = rollback(state.db, version, state.settings, tenant_id)
    now = router_info(resolve_router_spec(state.db, SERVING, state.settings, tenant_id))
    if now.path != v.path:  # a tenant with no version of its own is served by the global default's promotion
        console.print(f"{tenant} has no version of its own now: the global default serves it, {now.label} "
                      f"({now.path}); `router rollback shipped --tenant global` for the shipped router")
    else:
        console.print(f"now serving {v.router} {v.version} ({v.path})")


@app.command("score")
def router_score(
    ctx: typer.Context,
    input_path: Annotated[Path, typer.Option("--input", exists=True, help="Prompts: JSONL or CSV, as for submit.")],
    output: Annotated[Path, typer.Option("--output", help="JSONL: one {id, prompt, score} per line.")],
    router: Annotated[str, typer.Option("--router", help="serving, a registry name, a stored version as in "
                                        "`router versions` (linear@<version>), a directory or a hub id.")
                      ] = SERVING,
) -> None:
    """Score prompts (probability that the strong model is needed), batched."""
    state = cli_context(ctx)
    spec = job_router(state.db, router, state.settings, None)  # as submit resolves and checks it
    with input_path.open("rb") as f:
        entries = list(parse_stream(f, detect_format(input_path)))
    items = [e for e in entries if isinstance(e, ParsedItem)]
    for e in entries:
        if not isinstance(e, ParsedItem):
            err.print(f"  [yellow]line {e.line_no}:[/] {e.reason}")
    loaded = load_job_router(spec, state.settings)
    with Stages() as stages:
        advance = stages.stage("scoring", len(items))
        scores = loaded.router.win_rate([i.prompt for i in items], progress=advance)
    with atomic_output(output) as out:
        for item, score in zip(items, scores, strict=True):
            out.write(json.dumps({"id": item.custom_id, "prompt": item.prompt, "score": float(score)}) + "\n")
    console.print(f"scored {len(items)} prompts with {loaded.name} {loaded.version} -> {output}")
    if n_rejected := len(entries) - len(items):  # as submit: a script reading only the output would miss them
        err.print(f"[yellow]rejected:[/] {n_rejected} input line{'s' if n_rejected > 1 else ''} not scored (not in "
                  f"{output}); each is named above")
        raise typer.Exit(ExitCode.FAILED_ITEMS)


@top.command(short_help="Train a candidate per tenant on base data + its feedback; promote it only if it wins.")
def retrain(
    ctx: typer.Context,
    router: Annotated[str, typer.Option(help="Registry name of the router to train.")] = DEFAULT_ROUTER,
    data: Annotated[list[Path] | None, typer.Option(exists=True, help="Base preference data (with the feedback). "
                                                    + DATA_HELP)] = None,
    heldout: Annotated[list[Path] | None, typer.Option(exists=True, help="Fixed held-out outcomes to judge on, as "
                                                       "`router eval --outcomes` takes them.")] = None,
    margin: Annotated[float, typer.Option(help="APGR the candidate must gain to be promoted.")] = 0.0,
    strong_column: StrongColumn = ROUTELLM_STRONG,
    weak_column: WeakColumn = ROUTELLM_WEAK,
    tenant: TenantOption = LOCAL_TENANT,
) -> None:
    """Train a candidate per tenant on base data + that tenant's feedback; promote it for that tenant only if it
    beats the router serving it on held-out prompts neither trained on (its judged held-out pairs, and
    --heldout files)."""
    state = cli_context(ctx)
    check_margin(margin)  # before reading any data
    if not data:
        err.print(f"[yellow]note:[/] {NO_BASE_DATA}")
    rows = read_outcome_data(heldout, strong_column, weak_column, outcomes_only=True).outcomes if heldout else []
    failed = False
    for tenant_id in tenants_to_retrain(state.db, tenant):
        whose = "global default" if tenant_id is None else f"tenant {tenant_id}"
        try:
            result = run_retrain(state.db, state.settings, router, data or [], rows, margin,
                                 strong_column=strong_column, weak_column=weak_column, tenant_id=tenant_id)
        except (InvalidInput, RetrainRunning) as exc:  # with --tenant all, one tenant's refusal stops no other
            if tenant not in (ALL_TENANTS,):
                raise
            failed = True
            console.print(f"{whose}: failed: {exc}")
            continue
        console.print(f"{whose}: {router} {result.version}: {result.decision}")
    if failed:
        raise typer.Exit(ExitCode.ERROR)
