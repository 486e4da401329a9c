"""One operator reconciles at a time: a coordination.k8s.io Lease names it, with client-go's
leader-election semantics, with a shorter lease than its 15 s default (lease 10 s, renew deadline
7 s, retry period 1.5 s) so that a killed leader is replaced within 15 s (at most the retry period
until the standby sees the last renewal, the lease, and a retry period), while a standby replica,
or an operator started beside the chart's, waits instead of writing too.

A replica takes the Lease when it is missing, released, or unchanged for a whole lease duration
as measured by the replica's own clock (never the writer's timestamps: two nodes' clocks need not
agree). Every write carries the resourceVersion it read, so of two replicas racing for it one
wins. The leader renews every retry period; one that cannot renew within the renew deadline, or
sees another holder, has lost it and must stop at once (the caller exits, as controller-runtime
does). On a graceful stop the leader releases the Lease, so a standby takes over at its next look.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from mlkube.api.common import Body
from mlkube.controller.errors import ApiError, Conflict
from mlkube.controller.kube import Cluster

LEASE = ("coordination.k8s.io/v1", "Lease")
LEASE_DURATION = 10
RENEW_DEADLINE = 7.0
RETRY_PERIOD = 1.5
logger = logging.getLogger("mlkube.leader")

Action = Literal["create", "renew", "take", "wait"]


@dataclass(frozen=True)
class Record:
    """What of a Lease decides who may hold it."""

    holder: str
    renew_time: str
    """As written; only ever compared for change."""
    duration: float

    @classmethod
    def of(cls, lease: Body | None) -> Record | None:
        if lease is None:
            return None
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            renew_time=spec.get("renewTime") or "",
            duration=float(spec.get("leaseDurationSeconds") or LEASE_DURATION),
        )


@dataclass(frozen=True)
class Seen:
    """A record, and when (this replica's monotonic clock) it was first seen as it is."""

    record: Record | None
    at: float


def decide(current: Record | None, me: str, seen: Seen | None, now: float) -> tuple[Action, Seen]:
    """What to do with the Lease as it reads `now`, and what this replica has now seen."""
    if seen is None or seen.record != current:
        seen = Seen(current, now)
    if current is None:
        return "create", seen
    if current.holder == me:
        return "renew", seen
    if not current.holder or now >= seen.at + current.duration:
        return "take", seen
    return "wait", seen


def micro_time(at: datetime) -> str:
    """A Kubernetes MicroTime."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def written(lease: Body | None, action: Action, me: str, namespace: str, name: str) -> Body:
    """The Lease as `action` writes it (with the resourceVersion read, so a race has one winner)."""
    now = micro_time(datetime.now(UTC))
    spec = dict((lease or {}).get("spec") or {})
    spec.update(renewTime=now, leaseDurationSeconds=LEASE_DURATION)
    if action != "renew":
        transitions = int(spec.get("leaseTransitions") or 0)
        spec.update(
            holderIdentity=me,
            acquireTime=now,
            leaseTransitions=transitions + 1 if action == "take" else 0,
        )
    metadata = {"name": name, "namespace": namespace}
    if lease is not None:
        metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": spec,
    }


class Elector:
    """Blocking calls, for a thread of their own."""

    def __init__(
        self,
        kube: Cluster,
        lease: str,
        identity: str,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace, self.name = lease.split("/")
        self.identity = identity
        self._monotonic = monotonic
        self._seen: Seen | None = None
        self._renewed_at = float("-inf")
        """When this replica last wrote the Lease as its holder (monotonic)."""
        self.stopping = threading.Event()

    def acquire(self) -> bool:
        """Wait until this replica holds the Lease (True), or `stop` (False)."""
        while not self.stopping.is_set():
            if self._try():
                logger.info("%s leads (Lease %s/%s)", self.identity, self.namespace, self.name)
                return True
            self.stopping.wait(RETRY_PERIOD)
        return False

    def hold(self) -> None:
        """Renew every retry period; return once the Lease is lost, or on `stop`."""
        while not self.stopping.wait(RETRY_PERIOD):
            if self._try():
                continue
            holder = self._seen.record.holder if self._seen and self._seen.record else ""
            if holder and holder != self.identity:
                logger.error("Lease %s/%s taken by %s", self.namespace, self.name, holder)
                return
            if self._monotonic() - self._renewed_at >= RENEW_DEADLINE:
                logger.error(
                    "Lease %s/%s not renewed in %.0fs", self.namespace, self.name, RENEW_DEADLINE
                )
                return

    def stop(self) -> None:
        self.stopping.set()

    def release(self) -> None:
        """Hand the Lease over at once (only after this replica stopped reconciling)."""
        lease = self._get()
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        body = written(lease, "renew", self.identity, self.namespace, self.name)
        body["spec"].update(holderIdentity=None, leaseDurationSeconds=1)
        try:
            self.kube.replace(body)
        except ApiError as e:  # the standby then waits for the Lease to expire
            logger.warning("could not release Lease %s/%s: %s", self.namespace, self.name, e)

    def _get(self) -> Body | None:
        return self.kube.get(*LEASE, self.namespace, self.name)

    def _try(self) -> bool:
        """One look and at most one write; True when this replica holds the Lease after it."""
        now = self._monotonic()
        try:
            lease = self._get()
            action, self._seen = decide(Record.of(lease), self.identity, self._seen, now)
            if action == "wait":
                return False
            body = written(lease, action, self.identity, self.namespace, self.name)
            if action == "create":
                if not self.kube.create(body):
                    return False  # another replica created it first
            else:
                self.kube.replace(body)
        except Conflict:
            return False  # another replica wrote first
        except ApiError as e:
            logger.warning("Lease %s/%s: %s", self.namespace, self.name, e)
            return False
        self._renewed_at = now
        return True
