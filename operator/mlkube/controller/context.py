"""What every per-kind reconciler shares: the API client, the watch-fed caches, the clock, events,
the work queue, and the few chores common to all kinds (getting an object, writing its status,
turning a refused spec into a condition).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from pydantic import BaseModel

from mlkube.api.common import Body, Condition, ConditionStatus, StatusBase
from mlkube.api.crdgen import BY_KIND
from mlkube.builders.common import artifact_pvc
from mlkube.config import OperatorConfig
from mlkube.contract import (
    DEPLOYMENT_LABEL,
    DRIFTMONITOR_LABEL,
    MODELVERSION_LABEL,
    TRAININGJOB_LABEL,
)
from mlkube.controller.cache import Store
from mlkube.controller.errors import ApiError, Forbidden, Invalid
from mlkube.controller.kube import Cluster, Scraped
from mlkube.controller.queue import Key
from mlkube.core.conditions import INVALID_SPEC, condition, set_condition
from mlkube.tenancy import ForbiddenURI, forbidden_uri

SpecT = TypeVar("SpecT", bound=BaseModel)
StatusT = TypeVar("StatusT", bound=StatusBase)
Refused = Callable[[StatusT, str, int | None, datetime], StatusT]
"""(status, message, generation, now) -> the status of a kind whose spec the operator refused."""
Clock = Callable[[], datetime]
EventSink = Callable[[Body, str, str, str], None]
"""(object, type, reason, message) -> posts a Kubernetes Event."""
Enqueue = Callable[[Key, float | None], None]
APPLY_MEMO_SECONDS = 300.0
"""An unchanged manifest is re-applied this often (repairs hand edits) instead of every reconcile."""
"""The reason for a spec the API server, the models or a child's admission refused."""


def spec_version(child: Body) -> object:
    """What changes when a child's spec does: its `metadata.generation`, or for kinds that keep
    none (Service, HorizontalPodAutoscaler) a digest of its spec, so their status updates do
    not count as edits."""
    generation = (child.get("metadata") or {}).get("generation")
    if generation is not None:
        return generation
    return hashlib.sha256(json.dumps(child.get("spec"), sort_keys=True).encode()).hexdigest()


def utc_now() -> datetime:
    return datetime.now(UTC)


def dump(model: BaseModel) -> Body:
    """A status for a merge patch: camelCase, and None where a field must be cleared."""
    return model.model_dump(by_alias=True, mode="json")


def describe(error: ApiError, child: Body) -> str:
    """The API server's refusal of a child, naming the child: a message a user can act on."""
    meta = child.get("metadata") or {}
    return f"{child.get('kind')} {meta.get('name')}: {error.message}"


@dataclass(frozen=True)
class Caches:
    """Our four kinds (whole bodies) and the children decisions read (slim bodies)."""

    objects: dict[str, Store] = field(default_factory=lambda: {kind: Store() for kind in BY_KIND})
    jobs: Store = field(
        default_factory=lambda: Store(
            slim_bodies=True,
            index=(TRAININGJOB_LABEL, MODELVERSION_LABEL, DRIFTMONITOR_LABEL),
        )
    )
    servers: Store = field(
        default_factory=lambda: Store(slim_bodies=True, index=(DEPLOYMENT_LABEL,))
    )


@dataclass(frozen=True)
class Read(Generic[SpecT, StatusT]):
    obj: Body
    spec: SpecT
    status: StatusT

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def generation(self) -> int | None:
        generation = self.obj["metadata"].get("generation")
        return None if generation is None else int(generation)


class Context:
    def __init__(
        self,
        kube: Cluster,
        config: OperatorConfig,
        caches: Caches | None = None,
        clock: Clock = utc_now,
        post_event: EventSink | None = None,
        enqueue: Enqueue | None = None,
    ) -> None:
        self.kube = kube
        self.config = config
        self.caches = caches or Caches()
        self.clock = clock
        self.post_event: EventSink = post_event or kube.post_event
        self.enqueue: Enqueue = enqueue or (lambda key, delay: None)
        self._storage_ready: set[str] = set()
        self._storage_lock = threading.Lock()
        self._applied: dict[tuple[str, str, str, str], tuple[str, float, object]] = {}
        """(digest, when, the generation the API server answered) of each child applied lately."""
        self._asked: set[tuple[str, str, str, str]] = set()

    # -- our objects ---------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Body | None:
        """From the watch-fed cache; the API server only when the cache has not seen it (yet)."""
        store = self.caches.objects[kind]
        cached = store.get(namespace, name)
        if cached is not None:
            return cached
        fresh = self.kube.get_object(BY_KIND[kind], namespace, name)
        return None if fresh is None else store.put(fresh)

    def create_job(self, manifest: Body) -> None:
        """Create a Job and cache what was sent until the watch brings the full object, so the
        next look never creates it again; the API server's refusal is raised (`errors`)."""
        self.kube.create(manifest)
        meta = manifest["metadata"]
        if self.caches.jobs.get(meta["namespace"], meta["name"]) is None:
            self.caches.jobs.put({**manifest, "metadata": {**meta, "resourceVersion": "0"}})

    def write_status(self, kind: str, obj: Body, status: BaseModel) -> None:
        """Patch the status subresource and keep the cache at least as new as the write."""
        meta = obj["metadata"]
        written = self.kube.patch_status(
            BY_KIND[kind], meta["namespace"], meta["name"], dump(status)
        )
        self.caches.objects[kind].put(written)

    def invalid(
        self,
        kind: str,
        obj: Body,
        status: StatusT,
        message: str,
        condition: str = "Ready",
        refused: Refused[StatusT] | None = None,
    ) -> None:
        """A spec that cannot work as written: `<condition>` False (True for `Failed`) with
        reason InvalidSpec and the refusal's own words, or the status `refused` makes (its
        kind's own, e.g. a TrainingJob's phase Failed); nothing retries it hot."""
        generation = obj["metadata"].get("generation")
        previous = next((c for c in status.conditions if c.reason == INVALID_SPEC), None)
        if refused is not None:
            new = refused(status, message, generation, self.clock())
        else:
            value: ConditionStatus = "True" if condition == "Failed" else "False"
            new = status.model_copy(deep=True)
            new.observed_generation = generation
            new.conditions = set_condition(
                new.conditions, condition, value, INVALID_SPEC, message, generation, self.clock()
            )
        if previous is None or (previous.reason, previous.message) != (INVALID_SPEC, message):
            self.post_event(obj, "Warning", INVALID_SPEC, message)
        if new != status:
            self.write_status(kind, obj, new)

    # -- chores ----------------------------------------------------------------------------------

    def forbidden(
        self, namespace: str, uris: dict[str, str | None], data_fields: Collection[str] = ()
    ) -> ForbiddenURI | None:
        return forbidden_uri(
            uris,
            self.config.artifact_root,
            namespace,
            self.config.allowed_uri_prefixes,
            data_fields,
        )

    def scrape(self, namespace: str, pods: list[str], port: int) -> Scraped:
        """The pods' /metrics, within the configured time and byte bounds."""
        return self.kube.scrape(
            namespace, pods, port, self.config.scrape_timeout_seconds, self.config.scrape_max_bytes
        )

    def ensure_artifact_storage(self, namespace: str) -> None:
        """The namespace's artifact claim, created once per operator process."""
        claim = artifact_pvc(namespace, self.config)
        if claim is None or namespace in self._storage_ready:
            return
        self.kube.create(claim)
        with self._storage_lock:
            self._storage_ready.add(namespace)

    def apply(
        self, manifest: Body, force: bool = False, ignore: tuple[str, str] | None = None
    ) -> None:
        """Server-side apply, skipped when this process applied the same manifest lately;
        `ignore` names a (section, field) whose changes alone never cause an apply."""
        meta = manifest["metadata"]
        key = (manifest["apiVersion"], manifest["kind"], meta.get("namespace", ""), meta["name"])
        compared = manifest
        if ignore is not None:
            section, field_ = ignore
            compared = {
                **manifest,
                section: {k: v for k, v in manifest[section].items() if k != field_},
            }
        digest = hashlib.sha256(json.dumps(compared, sort_keys=True).encode()).hexdigest()
        last = self._applied.get(key)
        if (
            not force
            and last
            and last[0] == digest
            and time.monotonic() - last[1] < APPLY_MEMO_SECONDS
        ):
            return
        result = self.kube.apply(manifest)
        if manifest["kind"] == "Deployment" and manifest["apiVersion"] == "apps/v1":
            self.caches.servers.put(result)
        self._applied[key] = (digest, time.monotonic(), spec_version(result))

    def forget_applied(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self._applied.pop((api_version, kind, namespace, name), None)

    def child_changed(self, child: Body, deleted: bool) -> None:
        """A child's watch event: one deleted, or whose spec moved past what this process last
        applied (a hand edit), is applied again at its owner's next look instead of up to
        APPLY_MEMO_SECONDS later."""
        meta = child.get("metadata") or {}
        key = (
            child.get("apiVersion", ""),
            child.get("kind", ""),
            meta.get("namespace", ""),
            meta.get("name", ""),
        )
        last = self._applied.get(key)
        if last is not None and (deleted or last[2] != spec_version(child)):
            self._applied.pop(key, None)

    def events_about(self, workload: Body, pods: list[Body]) -> list[Body]:
        """The FailedCreate Events about a workload none of whose pods is pending or running
        (the API server may have refused them: a ResourceQuota), for `core.waiting`; no request
        while a pod is there to say why itself."""
        meta = workload.get("metadata") or {}
        alive = any((p.get("status") or {}).get("phase") in ("Pending", "Running") for p in pods)
        if alive or not meta.get("uid"):
            return []
        selector = f"involvedObject.uid={meta['uid']},reason=FailedCreate"
        return self.kube.list_of("v1", "Event", meta.get("namespace"), field_selector=selector)

    def may_exist(
        self, kind: tuple[str, str], namespace: str, name: str, owner_is_new: bool
    ) -> bool:
        """Whether a child that should not exist may (still) exist: this process applied it, or
        it is the first look since start-up at an owner reconciled before (by an earlier run)."""
        key = (*kind, namespace, name)
        first = key not in self._asked
        self._asked.add(key)
        return (first and not owner_is_new) or key in self._applied

    def write_children(
        self,
        kind: str,
        r: Read[SpecT, StatusT],
        write: Callable[[], None],
        condition: str = "Ready",
    ) -> None:
        """Run `write` (creates and applies of children); a child the API server refuses as
        written becomes an InvalidSpec condition with its message, then the error goes on to the
        work queue, which backs off until the spec changes."""
        try:
            write()
        except (Invalid, Forbidden) as e:
            self.invalid(kind, r.obj, r.status, e.message, condition)
            raise


def ready_reason(conditions: list[Condition]) -> str | None:
    ready = condition(conditions, "Ready")
    return None if ready is None else ready.reason
