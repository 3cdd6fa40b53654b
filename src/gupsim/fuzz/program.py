"""A fuzz program as data: a list of protocol calls, and the scenario file it is.

A program is what `gupsim fuzz` generates, runs, shrinks and writes to disk. It is plain
data (so that shrinking can drop calls and simplify arguments) and renders to a scenario
file for `gupsim run --host FILE`. The fuzzer itself runs the rendered source, never a
second interpreter, so a file written to disk replays exactly what was run.

Processes and regions are named by the call that made them: `p0` is spawned before the
first call, `pN` is the process the fork call numbered N made, `rN` the region call N
returned. Dropping a call drops every call that uses what it made (see `without`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..scenarios.ops import OPS
from ..scenarios.protocol import System, Trace
from ..scenarios.runner import Case


@dataclass(frozen=True)
class Ref:
    """A process or region made by an earlier call (or `p0`), by name."""

    name: str

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Fill:
    """`n` bytes of value `byte` (a write's data), rendered as `bytes([byte]) * n`."""

    byte: int
    n: int

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"bytes([{self.byte}]) * {self.n}"


@dataclass(frozen=True)
class Call:
    """One step: process `proc` runs operation `op` with `args` (declared names)."""

    proc: str
    op: str
    args: tuple[tuple[str, Any], ...]
    makes: str = ""          # the name of the process or region it returns, if any

    def arg(self, name: str) -> Any:
        """The value given for `name`."""
        return dict(self.args)[name]

    def with_arg(self, name: str, value: Any) -> Call:
        """The same call with one argument replaced."""
        return replace(self, args=tuple((k, value if k == name else v) for k, v in self.args))

    def uses(self) -> set[str]:
        """The names of the processes and regions this call refers to."""
        names = {self.proc}
        for _, value in self.args:
            for item in _flatten(value):
                if isinstance(item, Ref):
                    names.add(item.name)
        return names

    def render(self, assign: bool = True) -> str:
        """The call as one line of Python (`assign`: name what it makes)."""
        args = ", ".join(f"{k}={_render(v)}" for k, v in self.args)
        line = f"{self.proc}.{self.op}({args})"
        return f"{self.makes} = {line}" if self.makes and assign else line


def _flatten(value: Any) -> Iterable[Any]:
    if isinstance(value, list | tuple):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _render(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_render(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def render_bytes(data: bytes) -> str:
    """Bytes as a short expression: runs of one value as `b"\\x01" * 4096`, joined."""
    if not data:
        return "b''"
    runs: list[str] = []
    start = 0
    for i in range(1, len(data) + 1):
        if i == len(data) or data[i] != data[start]:
            piece = data[start:start + 1]
            runs.append(f"{piece!r} * {i - start}" if i - start > 1 else repr(piece))
            start = i
    if len(runs) > 64:          # no long runs: hex is shorter (and has no ", " to wrap at)
        return f"bytes.fromhex({data.hex()!r})"
    return " + ".join(runs)


WIDTH = 99     # the project's line length, less one


def wrap(line: str, indent: str) -> list[str]:
    """A line of rendered Python cut at ", " and " + " (never inside a literal: the
    rendered values have neither inside one) into lines of at most WIDTH, continued
    inside the brackets the line opened (`indent` is the continuation's)."""
    if len(line) <= WIDTH:
        return [line]
    out: list[str] = []
    current = ""
    for piece in re.split(r"(?<=, )|(?= \+ )", line):
        if current and len(current) + len(piece) > WIDTH:
            out.append(current.rstrip())
            current = indent + piece.lstrip()
        else:
            current += piece
    out.append(current)
    return out


def render_key(key: tuple) -> str:
    """A step key (`Step.key()`) as Python, its data (the last field) as runs."""
    *head, data = key
    inner = ", ".join(repr(v) for v in head)
    return f"({inner}, {render_bytes(data) if isinstance(data, bytes) else repr(data)})"


# What an operation needs from the host (live.capabilities names), by name prefix: the
# rest of the protocol runs on any host that runs scenarios at all. MODEL_ONLY is no host
# capability: a campaign against the host never draws those (the host back-end would
# only skip the program), a --model-only campaign does.
MODEL_ONLY = "model_only"
NEEDS_BY_PREFIX = {"uring_": "io_uring", "xdp_": "af_xdp", "kvm_": "kvm",
                   "odirect_": "o_direct", "uffd_": MODEL_ONLY}
NEEDS_BY_KIND = {"hugetlb": "hugetlb_2m", "memfd-hugetlb": "hugetlb_2m", "thp": "thp",
                 "mthp": "mthp_64k"}


@dataclass
class Program:
    """A numbered program of a seeded campaign: its calls, and where it came from."""

    calls: list[Call]
    seed: int = 0
    number: int = 0
    note: str = ""          # e.g. "shrunk from 14 calls"
    host: list[tuple] = field(default_factory=list)   # the host's step keys, when known

    @property
    def name(self) -> str:
        """A name for tables and file names."""
        return f"fuzz seed {self.seed} program {self.number}"

    @property
    def needs(self) -> tuple[str, ...]:
        """The host capabilities the program's calls need."""
        out: set[str] = set()
        for call in self.calls:
            out.update(need for prefix, need in NEEDS_BY_PREFIX.items()
                       if call.op.startswith(prefix))
            if call.op == "map":
                out.update({NEEDS_BY_KIND.get(call.arg("kind"), "")} - {""})
            if call.op == "pages" and dict(call.args).get("soft_dirty"):
                out.add("soft_dirty")
        return tuple(sorted(out))

    def without(self, drop: Iterable[int]) -> Program:
        """The program without the calls at the indices `drop`, nor any call that uses
        what a dropped call made."""
        gone = set(drop)
        dead: set[str] = set()
        kept: list[Call] = []
        for i, call in enumerate(self.calls):
            if i in gone or call.uses() & dead:
                if call.makes:
                    dead.add(call.makes)
                continue
            kept.append(call)
        return replace(self, calls=kept)

    def source(self) -> str:
        """The program as a scenario file (`gupsim run --host FILE` replays it)."""
        doc = (f'"""Found by `gupsim fuzz --seed {self.seed}` (program {self.number})'
               f'{"; " + self.note if self.note else ""}.\n\n'
               "Replay on the model and this kernel:  gupsim run --host THIS_FILE\n")
        if self.host:
            doc += ("`expect` holds the host's steps (the kernel is the truth): the model "
                    "must give the same.\n")
        lines = [doc + '"""', "", f"NAME = {self.name!r}", f"NEEDS = {self.needs!r}",
                 f"SEED = {self.seed}", "", "", "def scenario(system):",
                 '    p0 = system.spawn("p0")']
        used = set().union(*(call.uses() for call in self.calls))
        for call in self.calls:
            lines += wrap(f"    {call.render(call.makes in used)}", " " * 8)
        if self.host:
            lines += ["", "", "# (op, outcome, acquired, released, VmPin kB, VmLck kB, data, "
                      "pages, late):",
                      "# Step.key(); a file written before a field existed compares the "
                      "fields it has",
                      "HOST = ["]
            for key in self.host:
                lines += wrap(f"    {render_key(key)},", " " * 5)
            lines += ["]", "", "", "def expect(trace):",
                      '    """The host\'s steps, one for one."""',
                      "    got = [s.key()[:len(h)] "
                      "for s, h in zip(trace.steps, HOST, strict=False)]",
                      "    got += [s.key() for s in trace.steps[len(HOST):]]",
                      "    return [] if got == HOST else "
                      '[f"the steps differ from the host\'s: {got} != {HOST}"]']
        return "\n".join(lines) + "\n"

    def case(self) -> Case:
        """A runner Case that runs the rendered source (exactly what a file replays)."""
        ns: dict[str, Any] = {}
        exec(compile(self.source(), f"<{self.name}>", "exec"), ns)   # noqa: S102
        run: Callable[[System], None] = ns["scenario"]
        expect: Callable[[Trace], list[str]] = ns.get("expect") or (lambda trace: [])
        return Case(self.name, run, expect, source=f"<{self.name}>", needs=self.needs)


def check_ops(calls: Iterable[Call]) -> None:
    """Every call names a declared operation (a program from an older gupsim may not)."""
    for call in calls:
        if call.op not in OPS:
            raise ValueError(f"unknown operation {call.op!r}: declared are {sorted(OPS)}")
