"""The host side's process: `python -m gupsim.bench.worker`, driven over a pipe.

The host half of every case runs here, not in the process that holds the model: a
fork() there would copy the page tables of the model's arrays and the kernel would look
slower than it is. The protocol is one JSON object per line each way:
{"op": "open", "workload": name, "params": {...}} -> {"ok": null} or {"skip": why};
{"op": "round"} -> {"ok": {phase: seconds}}; {"op": "close"} -> {"ok": null}.
End of input closes whatever is open (every pin released, every setting restored).
The parent's side is `runner.HostWorker`; no module imports this one, so `-m` runs it fresh.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any


def serve(inp: Any = None, out: Any = None) -> None:
    """Answer requests until end of input."""
    from ..live.errors import HostUnsupported
    from .host_side import WORKLOADS
    inp, out = inp or sys.stdin, out or sys.stdout
    stack = contextlib.ExitStack()
    round_ = None
    with stack:
        for line in inp:
            req = json.loads(line)
            try:
                if req["op"] == "open":
                    stack.close()
                    round_ = stack.enter_context(WORKLOADS[req["workload"]](**req["params"]))
                    reply: dict[str, Any] = {"ok": None}
                elif req["op"] == "round":
                    if round_ is None:
                        raise RuntimeError("no workload is open")
                    reply = {"ok": round_()}
                else:
                    stack.close()
                    round_ = None
                    reply = {"ok": None}
            except (HostUnsupported, OSError, RuntimeError) as exc:
                stack.close()
                round_ = None
                reply = {"skip": str(exc) or type(exc).__name__}
            out.write(json.dumps(reply) + "\n")
            out.flush()


if __name__ == "__main__":
    serve()
