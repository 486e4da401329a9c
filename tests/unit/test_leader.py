"""Who may hold the operator's Lease (client-go's leader-election rules), decided by one's own
clock: acquire a missing, released or expired Lease, renew one's own, wait for another's."""

from __future__ import annotations

from typing import Any

from mlkube.controller.errors import Conflict
from mlkube.controller.leader import RENEW_DEADLINE, Elector, Record, decide, written

ME, OTHER = "mlkube-operator-a", "mlkube-operator-b"


def held(by: str, renewed: str = "2026-01-01T00:00:00.000000Z", duration: float = 15) -> Record:
    return Record(holder=by, renew_time=renewed, duration=duration)


def test_a_missing_lease_is_created_and_ones_own_renewed() -> None:
    assert decide(None, ME, None, 100.0)[0] == "create"
    assert decide(held(ME), ME, None, 100.0)[0] == "renew"


def test_anothers_lease_is_taken_only_once_unchanged_for_a_whole_lease_on_ones_own_clock() -> None:
    lease = held(OTHER)
    action, seen = decide(lease, ME, None, 100.0)
    assert action == "wait", "first seen now, however old its renewTime reads"
    action, seen = decide(lease, ME, seen, 114.9)
    assert action == "wait"
    assert decide(lease, ME, seen, 115.0)[0] == "take"


def test_a_renewal_restarts_the_count() -> None:
    _, seen = decide(held(OTHER, "t1"), ME, None, 100.0)
    action, seen = decide(held(OTHER, "t2"), ME, seen, 112.0)
    assert (action, seen.at) == ("wait", 112.0)
    assert decide(held(OTHER, "t2"), ME, seen, 126.0)[0] == "wait"
    assert decide(held(OTHER, "t2"), ME, seen, 127.0)[0] == "take"


def test_a_released_lease_is_taken_at_once() -> None:
    assert decide(held(""), ME, None, 100.0)[0] == "take"


def test_what_each_action_writes() -> None:
    lease: dict[str, Any] = {
        "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "7"},
        "spec": {"holderIdentity": OTHER, "leaseTransitions": 3, "acquireTime": "old"},
    }
    taken = written(lease, "take", ME, "ns", "l")
    assert taken["metadata"]["resourceVersion"] == "7", "a race for it has one winner"
    assert taken["spec"]["holderIdentity"] == ME
    assert taken["spec"]["leaseTransitions"] == 4
    assert taken["spec"]["leaseDurationSeconds"] == 10
    mine = {**lease, "spec": {**lease["spec"], "holderIdentity": ME}}
    renewed = written(mine, "renew", ME, "ns", "l")["spec"]
    assert (renewed["acquireTime"], renewed["leaseTransitions"]) == ("old", 3)
    assert renewed["renewTime"] != "old"
    assert "resourceVersion" not in written(None, "create", ME, "ns", "l")["metadata"]


class FakeLeases:
    """The API server's part: one Lease, optimistic concurrency by resourceVersion."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def get(self, *_: Any) -> dict[str, Any] | None:
        if self.down:
            raise Conflict(503, "Unavailable", "down")  # any failure of the read
        return self.lease

    def create(self, body: dict[str, Any]) -> bool:
        if self.lease is not None:
            return False
        self._store(body)
        return True

    def replace(self, body: dict[str, Any]) -> None:
        assert self.lease is not None
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "the object has been modified")
        self._store(body)

    def _store(self, body: dict[str, Any]) -> None:
        self.version += 1
        self.lease = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": str(self.version)},
        }


def elector(leases: FakeLeases, me: str, clock: list[float]) -> Elector:
    return Elector(leases, "ns/mlkube-operator", me, monotonic=lambda: clock[0])  # type: ignore[arg-type]


def test_two_replicas_one_leader_and_a_released_lease_changes_hands_at_once() -> None:
    leases, clock = FakeLeases(), [0.0]
    a, b = elector(leases, ME, clock), elector(leases, OTHER, clock)
    assert a._try()
    assert not b._try()
    clock[0] = 20.0
    assert a._try(), "renewed"
    assert not b._try(), "a renewal seen is a live leader"
    a.release()
    assert leases.lease is not None and not leases.lease["spec"]["holderIdentity"]
    assert b._try()
    assert leases.lease["spec"]["leaseTransitions"] == 1


def test_a_leader_that_cannot_renew_within_the_deadline_has_lost() -> None:
    leases, clock = FakeLeases(), [0.0]
    a = elector(leases, ME, clock)
    assert a._try()
    leases.down = True
    clock[0] = RENEW_DEADLINE
    a.stopping.wait = lambda timeout=None: False  # type: ignore[method-assign]
    a.hold()  # returns: lost


def test_a_leader_that_sees_another_holder_has_lost() -> None:
    leases, clock = FakeLeases(), [0.0]
    a, b = elector(leases, ME, clock), elector(leases, OTHER, clock)
    assert a._try()
    assert not b._try()
    clock[0] = 15.0  # a stalled (a long GC pause, a partition): its Lease expired for b
    assert b._try()
    a.stopping.wait = lambda timeout=None: False  # type: ignore[method-assign]
    a.hold()  # returns at its first look: lost
    assert leases.lease is not None and leases.lease["spec"]["holderIdentity"] == OTHER
