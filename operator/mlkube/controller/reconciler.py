"""One reconciler shape for every kind: fetch the object, skip it when it is gone, parse its spec
and status with the kind's api models, then hand the typed object to the kind's own reconcile.

Modelled on controller-runtime's `reconcile.AsReconciler`, which turns an `ObjectReconciler`
(`Reconcile(ctx, obj)`) into a `Reconciler` over keys, fetching the object and ignoring NotFound.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic

from pydantic import ValidationError

from mlkube.api.common import refusal
from mlkube.controller import metrics
from mlkube.controller.context import Context, Read, Refused, SpecT, StatusT


class ObjectReconciler(ABC, Generic[SpecT, StatusT]):
    """A kind's reconciler of one typed object: its models, its reconcile, and what to do when
    the object is not there."""

    kind: str
    spec_model: type[SpecT]
    status_model: type[StatusT]
    refused: Refused[StatusT] | None = None
    """The status of an object whose spec the models refuse (None: Ready False InvalidSpec)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @abstractmethod
    def reconcile(self, r: Read[SpecT, StatusT]) -> float | None:
        """Seconds until the object wants another look (None: nothing pending); an error goes
        to the work queue, which retries or waits for a change (`controller.errors`)."""

    def gone(self, namespace: str, name: str) -> None:
        """The object is not there to reconcile (deleted, being deleted, or its spec refused):
        a kind whose dependants must hear of it tells them here."""


class AsReconciler(Generic[SpecT, StatusT]):
    """The work queue's reconcile of one (namespace, name) key of `reconciler`'s kind."""

    def __init__(self, ctx: Context, reconciler: ObjectReconciler[SpecT, StatusT]) -> None:
        self.ctx = ctx
        self.reconciler = reconciler

    def __call__(self, namespace: str, name: str) -> float | None:
        """Returns seconds until the object wants another look (None: settled or gone)."""
        kind = self.reconciler.kind
        with metrics.reconciling(kind):
            read = self.read(namespace, name)
            if read is None:
                self.reconciler.gone(namespace, name)
                return None
            return self.reconciler.reconcile(read)

    def read(self, namespace: str, name: str) -> Read[SpecT, StatusT] | None:
        """The object, parsed; None when it is gone, being deleted, or its spec is invalid (then
        marked with an InvalidSpec condition: Ready=False, or the status `refused` makes)."""
        rec = self.reconciler
        obj = self.ctx.get(rec.kind, namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return None
        status = rec.status_model.model_validate(obj.get("status") or {})
        try:
            spec = rec.spec_model.model_validate(obj["spec"])
        except ValidationError as e:
            self.ctx.invalid(rec.kind, obj, status, refusal(e), refused=rec.refused)
            return None
        return Read(obj, spec, status)
