"""The host side's process: `python -m gupsim.bench.worker`, driven over a pipe.

The host half of every case runs here, not in the process that holds the model: a
fork() there would copy the page tables of the model's arrays and the kernel would look
slower than it is. The protocol is one JSON object per line each way, each naming an
open workload by `id` (several may be open at once: the runner keeps every case open and
takes their rounds in turns):
{"op": "open", "id": n, "workload": name, "params": {...}} -> {"ok": null} or {"skip": why};
{"op": "round", "id": n} -> {"ok": {phase: seconds}} (or {"skip": why}, which closes it);
{"op": "close", "id": n} -> {"ok": null}.
End of input, or an error, closes whatever is open (every pin released, every setting
restored).
The parent's side is `runner.HostWorker`; no module imports this one, so `-m` runs it fresh.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any


def serve(inp: Any = None, out: Any = None) -> None:
    """Answer requests until end of input; then close whatever is still open."""
    from ..live.errors import HostUnsupported
    from .host_side import WORKLOADS
    inp, out = inp or sys.stdin, out or sys.stdout
    stacks: dict[int, contextlib.ExitStack] = {}
    rounds: dict[int, Any] = {}

    def close(wid: int) -> None:
        rounds.pop(wid, None)
        stack = stacks.pop(wid, None)
        if stack is not None:
            stack.close()

    try:
        for line in inp:
            req = json.loads(line)
            wid = int(req.get("id", 0))
            try:
                if req["op"] == "open":
                    close(wid)
                    stacks[wid] = contextlib.ExitStack()
                    rounds[wid] = stacks[wid].enter_context(
                        WORKLOADS[req["workload"]](**req["params"]))
                    reply: dict[str, Any] = {"ok": None}
                elif req["op"] == "round":
                    if wid not in rounds:
                        raise RuntimeError(f"no workload {wid} is open")
                    reply = {"ok": rounds[wid]()}
                else:
                    close(wid)
                    reply = {"ok": None}
            except (HostUnsupported, OSError, RuntimeError) as exc:
                close(wid)
                reply = {"skip": str(exc) or type(exc).__name__}
            out.write(json.dumps(reply) + "\n")
            out.flush()
    finally:
        for wid in sorted(stacks, reverse=True):
            close(wid)


if __name__ == "__main__":
    serve()
