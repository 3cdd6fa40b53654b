"""The `gupsim` command line: `demo` (the main job), `live`, `cases`, `top`, `exporter`,
`explain`, `bench`, `run`, `fuzz`.

Exit codes, the same for every command: 0 success, 1 the model and the kernel (or the
documented behaviour) disagreed, 2 a usage error (bad option value, nothing selected),
3 an unexpected error, 130 interrupted (Ctrl-C). Every `--json` prints strict JSON on
stdout (progress goes to stderr); tables fit 80 columns.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from .report.jsonout import dumps
from .tour import run_tour

if TYPE_CHECKING:
    from .scenarios.runner import Result

MAX_FUZZ_PROGRAMS = 1_000_000     # a campaign of days at this machine's pace
EXIT_OK = 0
EXIT_DISAGREE = 1
EXIT_USAGE = 2
EXIT_ERROR = 3
EXIT_INTERRUPTED = 130

#: Progress lines when stderr is not a terminal (CI logs): at most one per this many seconds.
PROGRESS_EVERY = 5.0


class Seconds(click.ParamType):
    """A finite number of seconds within [low, high]: NaN, infinities and intervals too
    small to be meant (which would spin a CPU) are usage errors."""

    name = "seconds"

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        """The value as float seconds, or a usage error saying why it is not one."""
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or not self.low <= seconds <= self.high:
            self.fail(f"{value!r} is not between {self.low:g} and {self.high:g} seconds",
                      param, ctx)
        return seconds


class OutputPath(click.Path):
    """A file or folder gupsim will write: checked before any work is done (a missing
    folder or one that cannot be written is a usage error, not a failure after the run).
    `make_parents`: the writer creates missing folders, so the nearest existing one must
    be writable."""

    def __init__(self, folder: bool = False, make_parents: bool = False) -> None:
        super().__init__(file_okay=not folder, dir_okay=folder)
        self.make_parents = make_parents

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        """The path, once its folder is known to exist (or be creatable) and be writable."""
        path = super().convert(value, param, ctx)
        parent = os.path.dirname(os.path.abspath(os.fsdecode(path)))
        while self.make_parents and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            self.fail(f"{parent} is not a folder" if os.path.exists(parent) else
                      f"the folder {parent} does not exist: create it or choose another "
                      "path", param, ctx)
        if not os.access(parent, os.W_OK | os.X_OK):
            self.fail(f"cannot write in {parent}: choose another path", param, ctx)
        return path


class UsageProblem(click.ClickException):
    """A usage error found while working (an output that cannot be written): exit 2."""

    exit_code = 2


class GupsimGroup(click.Group):
    """Maps an interruption to exit 130 and an unexpected error to exit 3 (with its
    traceback), keeping 1 for disagreements and 2 for usage errors."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, turning an interruption or a crash into its exit code."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            from .live.repair import host_run_started
            host = "; everything taken on the host was released" if host_run_started() else ""
            click.echo(f"\ngupsim: interrupted{host}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception:
            traceback.print_exc()
            click.echo("gupsim: unexpected error (above); please report it", err=True)
            sys.exit(EXIT_ERROR)


@click.group(cls=GupsimGroup,
             help="gupsim: an executable model of Linux page pinning, checked against the "
                  "host. Exit codes: 0 success, 1 disagreement, 2 usage error, 3 unexpected "
                  "error, 130 interrupted.")
@click.version_option(package_name="gupsim")
def main() -> None:
    """The command group; its help text is the decorator's."""


def _repair_host() -> None:
    """Before touching the host: undo what a dead gupsim run left, saying so on stderr."""
    from .live.repair import announce_repairs
    try:
        announce_repairs()
    except OSError as exc:
        click.echo(f"gupsim: could not check for leftovers of dead runs: {exc}", err=True)


def picture_options(fn: Any) -> Any:
    """`--html OUT` and `--show`, the same on every command that draws pictures."""
    fn = click.option("--show", is_flag=True,
                      help="Draw the pictures of every step in the terminal.")(fn)
    return click.option("--html", "html_out", default=None, metavar="OUT",
                        type=OutputPath(),
                        help="Write the pictures of every step to OUT, one self-contained "
                             "HTML page (no network).")(fn)


def _check_pictures(as_json: bool, show: bool) -> None:
    if as_json and show:
        raise click.UsageError("--show draws on stdout, which --json keeps for JSON: drop "
                               "one (--html works with --json)")


def emit_pictures(pics: Any, html_out: str | None, show: bool) -> None:
    """Write the pictures to `html_out` and/or draw them on stdout (see report/picture_*)."""
    if show:
        from .report.picture_term import show as draw
        console = Console(highlight=False)
        if not console.is_terminal:
            console = Console(highlight=False, width=100)   # piped: the width it is made for
        draw(console, pics)
    if html_out:
        from .report.picture_html import write_html
        try:
            write_html(pics, html_out)
        except OSError as e:
            raise UsageProblem(f"cannot write {html_out}: {e.strerror or e}; choose "
                               "another path for --html") from None
        click.echo(f"gupsim: wrote {len(pics.panels)} step(s) to {html_out}", err=True)


@main.command(help="The main job: a narrated tour of the model, then the model-versus-host "
                   "comparison of the whole catalogue, one row per selftest "
                   "(`gupsim live` shows every case).")
@click.option("--json", "as_json", is_flag=True, help="Print the tour's steps as JSON.")
@click.option("--tour-only", is_flag=True, help="Stop after the tour (no catalogue run).")
@click.option("--model-only", is_flag=True, help="Run the catalogue on the model only.")
@click.option("--full", is_flag=True, help="One row per case instead of per selftest.")
@picture_options
def demo(as_json: bool, tour_only: bool, model_only: bool, full: bool, html_out: str | None,
         show: bool) -> None:
    """`gupsim demo`: the narrated tour, then the catalogue's model-versus-host table."""
    _check_pictures(as_json, show)
    pics = None
    if html_out or show:
        from .report.picture_runs import tour_pictures
        pics, steps = tour_pictures()
    else:
        steps = run_tour()
    if as_json:
        click.echo(dumps([s.as_dict() for s in steps]))
        if pics is not None:
            emit_pictures(pics, html_out, show)
        if not all(s.ok for s in steps):
            sys.exit(EXIT_DISAGREE)
        return
    console = Console(highlight=False)
    console.print(Panel.fit("[bold]gupsim[/] — Linux page pinning, as an executable model",
                            border_style="cyan"))
    for n, step in enumerate(steps, 1):
        console.print(f"\n[bold cyan]{n}. {step.title}[/]")
        console.print(step.story)
        if step.facts:
            table = Table(show_header=False, box=None, padding=(0, 2))
            for key, value in step.facts.items():
                table.add_row(f"[dim]{key}[/]", str(value))
            console.print(table)
        if step.dump:
            console.print(Panel(step.dump.rstrip(), title="dump_page()", border_style="dim",
                                expand=False))
    bad = [s.title for s in steps if not s.ok]
    if bad:
        console.print(f"\n[bold red]The model disagreed with the kernel's documented "
                      f"behaviour in: {', '.join(bad)}[/]")
    else:
        console.print("\n[green]Every step behaved as the kernel documents.[/]")
    disagree = False
    if not tour_only:
        console.print("\n[bold cyan]The catalogue: each case runs on the model and on this "
                      "host's kernel, and the observables are compared step by step[/]")
        console.print("[dim]Cases come from the kernel's selftests (gup_longterm.c, cow.c, "
                      "hugetlb_dio.c) and the pin accounting rules; a skipped case says "
                      "why the host could not run it.[/]")
        results = run_live(console, None, model_only)
        disagree = print_live(console, results, summary=not full)
        if not disagree and not model_only:
            console.print("[green]The model and this kernel agreed on every step of every "
                          "case the host could run.[/]")
        if pics is not None:
            from .report.picture_runs import catalogue_panel
            pics.panels.append(catalogue_panel(results))
    if pics is not None:
        emit_pictures(pics, html_out, show)
    if bad or disagree:
        sys.exit(EXIT_DISAGREE)


def select_cases(only: str | None, full_matrix: bool = False) -> list:
    """The catalogue cases (the whole matrix with `full_matrix`) whose name contains
    `only` (all if None); a usage error if none does, naming close matches."""
    from .scenarios.catalogue import catalogue
    from .scenarios.matrix import full_matrix as matrix
    cases = matrix() if full_matrix else catalogue()
    if only is None:
        return cases
    if not only.strip():
        raise click.BadParameter("give some text to look for in the case names",
                                 param_hint="-k")
    chosen = [c for c in cases if only.lower() in c.name.lower()]
    if not chosen:
        import difflib
        close = difflib.get_close_matches(only, [c.name for c in cases], n=3, cutoff=0.3)
        hint = f"; close: {'; '.join(close)}" if close else ""
        raise click.BadParameter(f"no case name contains {only!r} (of {len(cases)}; "
                                 f"`gupsim live --list` prints them){hint}", param_hint="-k")
    return chosen


def run_live(console: Console, only: str | None, model_only: bool,
             pages: bool = False, full_matrix: bool = False) -> list:
    """Run the catalogue on both back-ends, case by case, with progress: a status line on
    a terminal, else a line on stderr at least every PROGRESS_EVERY seconds (CI logs).
    The model runs the host's own era (`eras.host_profile`), and says which and why."""
    from .eras import host_profile
    from .scenarios.runner import run_case
    cases = select_cases(only, full_matrix)
    version, why = host_profile()
    console.print(f"[dim]model profile v{version}: {why}[/]")
    if not model_only:
        _repair_host()
    results = []
    if console.is_terminal:
        with console.status("") as status:
            for i, case in enumerate(cases, 1):
                status.update(f"[{i}/{len(cases)}] {case.name}")
                results.append(run_case(case, with_host=not model_only, version=version,
                                        pages=pages))
        return results
    start = last = time.monotonic()
    for i, case in enumerate(cases, 1):
        now = time.monotonic()
        if i == 1 or now - last >= PROGRESS_EVERY:
            line = f"gupsim: [{i}/{len(cases)}] {now - start:4.0f}s {case.name}"
            _progress(line)
            last = now
        results.append(run_case(case, with_host=not model_only, version=version,
                                pages=pages))
    counts = _counts(results)
    _progress(f"gupsim: [{len(cases)}/{len(cases)}] done in {time.monotonic() - start:.0f}s: "
              + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return results


def _progress(line: str) -> None:
    """A progress line on stderr, cut to 80 columns like every table."""
    click.echo(line if len(line) <= 80 else line[:79] + "…", err=True)


def _counts(results: list[Result]) -> dict[str, int]:
    return {s: sum(r.status == s for r in results)
            for s in ("agree", "disagree", "skipped", "model-only")}


@main.command(help="Run the catalogue on the model and on this host's kernel, and compare; "
                   "exit 1 if any case disagrees.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("-k", "only", default=None, metavar="TEXT",
              help="Only cases whose name contains TEXT (a usage error if none does).")
@click.option("--model-only", is_flag=True, help="Do not touch the host kernel.")
@click.option("--summary", is_flag=True, help="One row per selftest instead of per case.")
@click.option("--list", "list_cases", is_flag=True, help="Print the case names and stop.")
@click.option("--pages", is_flag=True,
              help="Also compare the page identity of what every step touched.")
@click.option("--full-matrix", is_flag=True,
              help="The whole selftest matrix (every mTHP size, swapped kinds), not the "
                   "representative default.")
def live(as_json: bool, only: str | None, model_only: bool, summary: bool,
         list_cases: bool, pages: bool, full_matrix: bool) -> None:
    """`gupsim live`: every catalogue case on the model and the host, compared."""
    from .report.live import as_json as to_json
    if list_cases:
        names = [c.name for c in select_cases(only, full_matrix)]
        click.echo(dumps(names) if as_json else "\n".join(names))
        return
    console = Console(stderr=as_json, highlight=False)
    results = run_live(console, only, model_only, pages, full_matrix)
    if as_json:
        click.echo(dumps(to_json(results)))
        disagree = any(r.status == "disagree" for r in results)
    else:
        disagree = print_live(console, results, summary=summary)
    if disagree:
        sys.exit(EXIT_DISAGREE)


def print_live(console: Console, results: list[Result], summary: bool = False) -> bool:
    """The agreement table (per case, or per selftest row) and its totals; True if any
    case disagreed."""
    from .report.live import summary_table, table
    console.print(summary_table(results) if summary else table(results))
    counts = _counts(results)
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if summary:
        console.print("[dim]`gupsim live` shows every case; `gupsim live -k TEXT` some.[/]")
    return counts["disagree"] > 0


# -- cases -------------------------------------------------------------------------------------

def select_driver_cases(only: str | None) -> list[str]:
    """Keys of `drivers.cases.CASES` to run: all, the key equal to `only`, else those
    whose key or description contains it; a usage error if none does."""
    from .drivers import cases as case_list
    table = case_list.CASES
    if only is None:
        return list(table)
    if not only.strip():
        raise click.BadParameter("give a case key or some text of its description",
                                 param_hint="-k")
    if only in table:
        return [only]
    text = only.lower()
    chosen = [key for key, fn in table.items()
              if text in key.lower() or text in (fn.__doc__ or "").lower()]
    if not chosen:
        raise click.BadParameter(f"no case matches {only!r}: the cases are "
                                 f"{', '.join(table)}", param_hint="-k")
    return chosen


@main.command(help="The cases of pin_user_pages.rst: each right driver, narrated step by "
                   "step, beside its wrong-flag twin and the failure the model shows; exit "
                   "1 if a step's self-check fails.")
@click.option("-k", "only", default=None, metavar="NAME",
              help="Only the case with this key (1, 2, vfio, ...) or whose description "
                   "contains NAME (a usage error if none does).")
@click.option("--json", "as_json", is_flag=True, help="Print the cases as JSON.")
@picture_options
def cases(only: str | None, as_json: bool, html_out: str | None, show: bool) -> None:
    """Run the selected cases of `drivers.cases` and narrate them (or print JSON)."""
    from .drivers import cases as case_list
    from .report.cases import as_json as to_json
    from .report.cases import render
    _check_pictures(as_json, show)
    keys = select_driver_cases(only)
    console = Console(stderr=as_json, highlight=False)

    def run_all() -> list:
        runs = []
        with console.status("") as status:
            for i, key in enumerate(keys, 1):
                status.update(f"[{i}/{len(keys)}] case {key}")
                if not console.is_terminal:
                    click.echo(f"gupsim: [{i}/{len(keys)}] case {key}", err=True)
                runs.append(case_list.CASES[key]())
        return runs

    pics = None
    if html_out or show:
        from .report.picture_runs import case_pictures
        pics, runs = case_pictures(run_all)
    else:
        runs = run_all()
    if as_json:
        out = to_json(runs)
        click.echo(dumps(out))
        ok = out["ok"]
    else:
        ok = render(console, runs)
    if pics is not None:
        emit_pictures(pics, html_out, show)
    if not ok:
        sys.exit(EXIT_DISAGREE)


# -- top ---------------------------------------------------------------------------------------

def pins_snapshot() -> dict[str, Any]:
    """Who holds pinned memory now: the machine-wide counters, and per process VmPin,
    VmLck, io_uring buffers and AF_XDP umems, with the full command line; see
    `live.proc.pin_holders`."""
    from .live.proc import pin_snapshot
    return pin_snapshot()


def pins_table(snap: dict) -> Table:
    """The snapshot as a table that fits 80 columns, with the totals explained."""
    from .report.top import top_table
    return top_table(snap)


@main.command(help="Who holds pinned memory on this host right now.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON (with --watch: one JSON object per line, per refresh).")
@click.option("--watch", type=Seconds(0.1, 86400.0), default=None, metavar="SECONDS",
              help="Refresh every SECONDS (0.1 to 86400) until Ctrl-C (exit 130).")
@click.option("--prometheus", is_flag=True,
              help="Print the Prometheus text exposition (gupsim_* metrics) once.")
def top(as_json: bool, watch: float | None, prometheus: bool) -> None:
    """`gupsim top`: the pinned-memory holders, once or every `watch` seconds."""
    if prometheus:
        if as_json or watch is not None:
            raise click.UsageError("--prometheus prints one exposition: drop --json/--watch "
                                   "(use `gupsim exporter` for scrapes)")
        from .report.prometheus import exposition
        click.echo(exposition(pins_snapshot()), nl=False)
        return
    if watch is None:
        snap = pins_snapshot()
        if as_json:
            click.echo(dumps(snap))
        else:
            Console(highlight=False).print(pins_table(snap))
        return
    if as_json:
        while True:
            click.echo(dumps(pins_snapshot() | {"time": time.time()}, indent=None))
            sys.stdout.flush()
            time.sleep(watch)
    from rich.live import Live
    console = Console(highlight=False)
    with Live(pins_table(pins_snapshot()), console=console) as view:
        while True:
            time.sleep(watch)
            view.update(pins_table(pins_snapshot()))


@main.command(help="Serve the `gupsim top` figures at /metrics for Prometheus to scrape.")
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="TCP port.")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default).")
def exporter(port: int, bind: str) -> None:
    """`gupsim exporter`: /metrics with a fresh snapshot per scrape, until Ctrl-C/SIGTERM."""
    import errno
    import socket

    from .report.prometheus import serve
    try:
        serve(port, bind, pins_snapshot)
    except OSError as e:
        bad_bind = isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL
        raise UsageProblem(f"cannot listen on {bind}:{port} ({e.strerror or e}): "
                           + ("give --bind an address of this machine" if bad_bind else
                              "choose a free port with --port")) from None


@main.command(help="Run a scenario file on the model up to a step and explain what holds "
                   "each frame GUP holds then (or the frames given with --pfn).")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--step", type=click.IntRange(1), required=True, help="Step number, from 1.")
@click.option("--pfn", "pfns", multiple=True, metavar="PFN",
              type=lambda v: int(v, 0), help="A frame to explain (repeatable; 0x.. allowed).")
@click.option("--json", "as_json", is_flag=True, help="Print the explanations as JSON.")
def explain(file: str, step: int, pfns: tuple[int, ...], as_json: bool) -> None:
    """`gupsim explain FILE --step N`: holders and consequences, with call sites."""
    from .report.explain_step import explain_step
    from .scenarios.userfile import ScenarioError
    try:
        result = explain_step(file, step, pfns)
    except ScenarioError as exc:
        _scenario_failed(exc)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        click.echo(dumps(result.as_dict()))
    else:
        click.echo(result.wrapped(Console().width))


# -- bench -------------------------------------------------------------------------------------

@main.command(help="Time the model against the host kernel, side by side: bulk pins, pages "
                   "per call, THP, hugetlb, fork/exit/munmap, fuzzing, memory per page.")
@click.option("--max-pages", type=click.IntRange(1, 1 << 18), default=1 << 14,
              show_default=True, help="Largest range, in 4 KiB pages (16384 = 64 MiB, "
              "262144 = 1 GiB; bulk also runs the sizes 64 MiB, 256 MiB below it).")
@click.option("-n", "ns", type=click.IntRange(1, 1 << 14), multiple=True, default=(1, 16),
              show_default=True, help="Pages per call, as gup_test's -n (repeatable).")
@click.option("--repeat", type=click.IntRange(1, 20), default=5, show_default=True,
              help="Timed rounds per figure at least (min and median reported), after "
                   "16 untimed ones; see --min-time.")
@click.option("--min-time", type=Seconds(0.0, 60.0), default=1.0, show_default=True,
              help="Seconds a case with short rounds goes on for (more rounds, at most 60): "
                   "a min over a second of rounds is not all in one slow stretch of the "
                   "CPU. 0: exactly --repeat rounds.")
@click.option("-k", "only", default=None, help="Only the cases whose name contains TEXT.")
@click.option("--model-only", is_flag=True, help="Do not touch the host kernel.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench(max_pages: int, ns: tuple[int, ...], repeat: int, min_time: float,
          only: str | None, model_only: bool, as_json: bool) -> None:
    """`gupsim bench`: see gupsim/bench (cases.py lists what is measured and the goals)."""
    from .bench import default_cases, run
    from .bench.table import bench_table
    cases = [c for c in default_cases(max_pages, ns) if only is None or only in c.name]
    if not cases:
        raise click.BadParameter(f"no case name contains {only!r} (the cases: "
                                 f"{', '.join(c.name for c in default_cases(max_pages, ns))})",
                                 param_hint="-k")
    console = Console(stderr=as_json, highlight=False)
    if not model_only:
        _repair_host()
    with console.status("timing the model and the host kernel...") as status:
        rows = run(cases, repeat, with_host=not model_only, progress=status.update,
                   min_seconds=min_time)
    if as_json:
        click.echo(dumps([r.as_dict() for r in rows]))
    else:
        console.print(bench_table(rows))


# -- run ---------------------------------------------------------------------------------------

@main.command(help="Run a scenario file on the model (and with --host on this kernel too); "
                   "exit 1 if they disagree.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--host", "with_host", is_flag=True,
              help="Also run it on the host kernel and compare step by step.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--kernel", "version", metavar="VERSION", default=None,
              help="The model's kernel era, one of gupsim.KERNEL_VERSIONS (`gupsim eras` "
                   "lists them); default the newest.")
@picture_options
def run(file: str, with_host: bool, as_json: bool, version: str | None,
        html_out: str | None, show: bool) -> None:
    """FILE defines `scenario(system)` (and optionally `expect(trace) -> list[str]`),
    written against gupsim.scenarios.protocol; see examples/ for one. The scenario's own
    error (syntax, an exception, a bad argument) exits 2 with `FILE:LINE: Type: message`."""
    from .eras import profile
    try:
        version = profile(version)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--kernel") from exc
    from .report.live import as_json as to_json
    from .scenarios.runner import run_case
    from .scenarios.userfile import ScenarioError, load_scenario

    _check_pictures(as_json, show)
    try:
        case = load_scenario(file)
        if with_host:
            _repair_host()
        result = run_case(case, with_host=with_host, version=version)
    except ScenarioError as exc:
        _scenario_failed(exc)
    except ValueError as exc:        # no scenario() in the file
        raise click.UsageError(str(exc)) from exc
    if as_json:
        click.echo(dumps(to_json([result])))
    else:
        Console(highlight=False).print(steps_table(result))
    if html_out or show:
        from .report.picture_runs import scenario_pictures
        emit_pictures(scenario_pictures(case, result.host, version=version), html_out, show)
    if result.status == "disagree":
        sys.exit(EXIT_DISAGREE)


def _scenario_failed(exc: Any) -> NoReturn:
    """The scenario's own error: one line (and its own frames) on stderr, exit 2; an error
    inside gupsim is re-raised for the unexpected-error path (exit 3, traceback)."""
    if not exc.is_users():
        raise exc.exc
    where = f" (on the {exc.backend})" if exc.backend else ""
    click.echo(f"{exc.message}{where}", err=True)
    frames = exc.frames
    if len(frames) > 1:
        click.echo("the scenario's frames, outermost first:", err=True)
        for frame in frames:
            click.echo(f"  {frame}", err=True)
    sys.exit(EXIT_USAGE)


def steps_table(result: Result) -> Table:
    """One row per step: what the model and (if it ran) the host observed."""
    from .report.live import findings
    from .scenarios.runner import describe
    host = result.host.steps if result.host is not None and not result.host.skipped else []
    t = Table("#", "step", "model", "host", title=f"{result.case.name}: {result.status}",
              caption_justify="left",
              caption="\n".join(result.model_problems + result.host_problems
                                + result.differences
                                + ([f"host skipped: {result.host.skipped}"]
                                   if result.host is not None and result.host.skipped else [])
                                + findings(result)))
    for i in range(max(len(result.model.steps), len(host))):
        m = result.model.steps[i] if i < len(result.model.steps) else None
        h = host[i] if i < len(host) else None
        same = h is None or (m is not None and m.key() == h.key())
        other_op = f"{h.op}: " if h is not None and m is not None and h.op != m.op else ""
        step = m if m is not None else h
        assert step is not None, "i is below the longer trace's length"
        t.add_row(str(i + 1), step.op, describe(m) if m else "—",
                  ("" if same else "[red]") + other_op + (describe(h) if h else "—"))
    return t


@main.command(help="The kernel eras: every modelled change of pinning behaviour, as one "
                   "table of named switches (behaviour, first release, upstream commit), "
                   "and the profiles gupsim.Kernel(version=...) accepts. * marks the "
                   "switches the model wires today. With FILE-or-CASE (a scenario file or "
                   "a catalogue case name): run it on every era, one column per era, "
                   "rows where eras differ marked with ≠.")
@click.argument("target", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@picture_options
def eras(target: str | None, as_json: bool, html_out: str | None, show: bool) -> None:
    """`gupsim eras`: print the table of era switches; `gupsim eras FILE-or-CASE`: run
    that scenario on every era, one column per era, the steps where they differ marked.
    Eras have no per-step machine of their own, so --html gives the table printed."""
    from .eras import KERNEL_VERSIONS, NEWEST, render_table, table_rows
    _check_pictures(as_json, show)
    if target is not None:
        _eras_of(target, as_json, html_out)
        return
    if html_out:        # --show: the table printed below is the whole picture
        from .report.picture_runs import table_pictures
        emit_pictures(table_pictures("gupsim eras: kernel era switches", table_rows(),
                                     f"profiles: {', '.join(KERNEL_VERSIONS)} (default "
                                     f"{NEWEST})"), html_out, False)
    if as_json:
        click.echo(dumps({"kernel_versions": list(KERNEL_VERSIONS), "default": NEWEST,
                          "switches": table_rows()}))
        return
    click.echo(render_table())


def _eras_of(target: str, as_json: bool, html_out: str | None = None) -> None:
    """`gupsim eras FILE-or-CASE` (logic in scenarios/across_eras.py); `html_out`: the
    same table, one row per step and one column per era, as a self-contained page."""
    from .scenarios.across_eras import era_notes, era_table, load_target, run_across
    from .scenarios.userfile import ScenarioError
    try:
        case = load_target(target)
        run = run_across(case)
        if not run.traces:      # no era ran it: raise its error as `run` does (exit 2
            from .scenarios.runner import run_case  # if the scenario's own, 3 if gupsim's)
            run_case(case, with_host=False)
    except ScenarioError as exc:
        _scenario_failed(exc)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if html_out:
        from .report.picture_runs import table_pictures
        rows = [{"#": f"{i}≠" if differs else str(i), "step": op, **cells}
                for i, (op, cells, differs) in enumerate(run.rows(), 1)]
        emit_pictures(table_pictures(f"gupsim eras {target}: each kernel era (model)", rows,
                                     "; ".join(era_notes(run))), html_out, False)
    if as_json:
        click.echo(dumps(run.as_dict()))
        return
    console = Console(highlight=False)
    console.print(era_table(run))
    for line in era_notes(run):
        console.print(line)


# -- fuzz --------------------------------------------------------------------------------------

@main.command(help="Random scenario programs run on the model and this kernel, compared "
                   "step by step; each new class of disagreement or model crash is shrunk "
                   "and written as a scenario file. Exit 1 if any was found.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seed of the programs (the same seed gives the same programs).")
@click.option("--programs", type=click.IntRange(1, MAX_FUZZ_PROGRAMS), default=100,
              show_default=True, help="How many programs to run.")
@click.option("--steps", type=click.IntRange(1, 200), default=15, show_default=True,
              help="Most calls per program.")
@click.option("--model-only", is_flag=True,
              help="Do not touch the host: check the model's invariants after every step.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--out", type=OutputPath(folder=True, make_parents=True), default=None,
              metavar="DIR",
              help="Write each shrunk finding to DIR as a scenario file.")
@click.option("--shrink-budget", type=click.IntRange(0), default=60, show_default=True,
              help="Most runs spent shrinking one finding.")
def fuzz(seed: int, programs: int, steps: int, model_only: bool, as_json: bool,
         out: str | None, shrink_budget: int) -> None:
    """`gupsim fuzz`: see gupsim.fuzz.campaign."""
    from .fuzz.command import run_fuzz
    if not model_only:
        _repair_host()
    report = run_fuzz(seed, programs, steps, model_only, as_json, out, shrink_budget)
    if report.failed:
        sys.exit(EXIT_DISAGREE)
