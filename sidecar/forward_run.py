"""A forward route's run: one POST of the stored body to the live table's target (forward.Forwarder), told
as a runner.Result so the job's state is decided as a hook's is (attempts.run).

2xx is done; a connection error, a timeout, 408, 429 or 5xx is worth another try (a longer Retry-After
honoured); any other status is final. The target and its signing secret come from the live table's route
alone: a stored job names its target but never holds how to sign for it.
"""

from __future__ import annotations

import threading

from .carry import Job
from .config import Route
from .forward import Forwarder
from .forward_sign import Facts
from .runner import Result


class Forwarding:
    """Carries forward jobs over the keep-alive pools of one Forwarder."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder

    def carry(self, job: Job, body: bytes, live: Route | None, cancel: threading.Event | None,
              reply_bytes: int = 0) -> Result:
        target = live.forward if live is not None else None
        if target is None:  # attempts.run checks first: the table has no forward route of this name
            return Result(None, False, 0.0, "", error="no forward target in the live table")
        ctx = job.context
        facts = Facts(delivery=job.delivery, event=job.event, attempt=job.attempt, request_id=job.request_id,
                      endpoint=job.endpoint, provider=job.provider, headers=dict(ctx.forwarded),
                      received=job.received_at or None, cloudevent=dict(ctx.cloudevent) or None)
        sent = self.forwarder.post(target, body, ctx.content_type, facts)
        return Result(0 if sent.ok else None, sent.error == "timeout", sent.duration_s, sent.tail,
                      transient=sent.retryable, retry_after_s=sent.retry_after_s or 0.0, fields=sent.log_fields())

    def close(self) -> None:
        self.forwarder.close()
