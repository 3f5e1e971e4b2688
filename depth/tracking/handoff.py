"""Handing a writer process what is left of a fit, so that teardown does not wait for it.

At the end of a fit with the run depth opened itself, the training process does not wait
for its writer process (which may still be importing MLflow): it appends what the writer
has not acknowledged, and the run's end, to the spool, and sends the writer one
``{"handoff": ...}`` line naming those spool events (`spool_unfinished`). The writer, in
the background, stores what it was sent, then marks each stored event and the run's end
in the spool's ``.done`` (`finish_handoff`) and removes the spool file once all of it is
done. A writer that dies (or is killed) before that leaves the events in the spool:
`depth sync` stores them, each once. Both sides are here so the protocol is in one place;
this module imports only the standard library and depth's spool helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from depth.tracking.spool_input import DONE_SUFFIX, SpoolError, mark_done, read_done, read_spool


def spool_unfinished(spool: Any, unacked: Mapping[int, tuple[Sequence[Any], Sequence[Any]]],
                     status: str | None) -> dict[str, Any]:
    """Appends every unacknowledged batch (points, checkpoint events) and, when `status` is
    given, the run's end to `spool`; returns the handoff message's body.

    Raises:
        OSError: The spool cannot be written (the caller then waits for the writer).
    """
    seqs: dict[str, list[str]] = {}
    for seq in sorted(unacked):
        points, checkpoints = unacked[seq]
        seqs[str(seq)] = spool.add_points(points) + spool.add_checkpoints(checkpoints)
    end_id = spool.end(status) if status is not None else None
    return {"spool": str(spool.path), "seqs": seqs, "end": [status, end_id]}


def finish_handoff(handoff: Mapping[str, Any], run_id: str | None, stored: set[int],
                   end_run: Callable[[str], bool]) -> None:
    """The writer's side: marks done the spool events of the batches it stored, ends the
    run with `end_run(status)` (True once stored), and removes the spool file when nothing
    in it is left to replay.

    Args:
        handoff: The body of the ``{"handoff": ...}`` line (`spool_unfinished`), or one
            with ``"spool": None`` (the spool could not be written: only the end).
        run_id: The run the writer writes to (``None``: it could not create one; the
            events stay in the spool and `depth sync` creates it).
        stored: The sequence numbers of the batches the writer stored.
        end_run: Ends the run with a status; True when it did.
    """
    status, end_id = handoff.get("end") or (None, None)
    spool = handoff.get("spool")
    if spool is None:
        if status is not None and run_id is not None:
            end_run(status)
        return
    path = Path(spool)
    done_path = path.with_name(path.name + DONE_SUFFIX)
    if run_id is None:
        return  # nothing stored; everything waits in the spool for `depth sync`
    mark_done(done_path, {"run_id": run_id})  # the run the spooled events belong to
    for seq, ids in handoff.get("seqs", {}).items():
        if int(seq) in stored:
            for key in ids:
                mark_done(done_path, {"id": key})
    if status is not None and end_run(status) and end_id is not None:
        mark_done(done_path, {"id": end_id})
    try:
        contents = read_spool(path)
        done, _ = read_done(done_path)
    except SpoolError:
        return
    if not contents.set_aside and all(key in done for key, _ in contents.events):
        for leftover in (path, done_path):
            leftover.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # only when empty: a user's other spool files stay
        except OSError:
            pass
