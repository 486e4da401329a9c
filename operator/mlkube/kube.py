"""The one module that talks to the Kubernetes API (through the official client).

Children are written with server-side apply under one field manager, so applying the same
manifest twice is a no-op and a restarted operator never creates anything twice.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError
from prometheus_client import Counter

from mlkube.api.common import API_VERSION, GROUP, VERSION
from mlkube.api.crdgen import Kind

Body = dict[str, Any]
FIELD_MANAGER = "mlkube-operator"
logger = logging.getLogger("mlkube.kube")


def load_config(kubeconfig: str | None = None, context: str | None = None) -> None:
    """In a pod, the service account; elsewhere, the kubeconfig."""
    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return
        except config.ConfigException:
            pass
    config.load_kube_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]


API_REQUESTS = Counter("mlkube_operator_api_requests", "Requests to the API server.", ["method"])


class CountingApiClient(client.ApiClient):
    """The official client, counting its requests for the operator's /metrics."""

    def call_api(self, method: str, *args: Any, **kwargs: Any) -> Any:
        API_REQUESTS.labels(method).inc()
        return super().call_api(method, *args, **kwargs)


class Cluster:
    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        load_config(kubeconfig, context)
        self.api = CountingApiClient()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.versions = client.VersionApi(self.api)
        self._dynamic: DynamicClient | None = None

    @property
    def dynamic(self) -> DynamicClient:
        if self._dynamic is None:
            self._dynamic = DynamicClient(self.api)  # type: ignore[no-untyped-call]
        return self._dynamic

    def server_version(self) -> str:
        return str(self.versions.get_code().git_version)

    # -- mlkube objects ----------------------------------------------------------------------

    def list_objects(
        self, kind: Kind, namespace: str | None, label_selector: str | None = None
    ) -> list[Body]:
        result: Any
        if namespace is None:
            result = self.custom.list_cluster_custom_object(
                GROUP, VERSION, kind.plural, label_selector=label_selector
            )
        else:
            result = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.plural, label_selector=label_selector
            )
        return cast(list[Body], result["items"])

    def get_object(self, kind: Kind, namespace: str, name: str) -> Body | None:
        try:
            return cast(
                Body,
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, kind.plural, name
                ),
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def patch_object(self, kind: Kind, namespace: str, name: str, body: Body) -> Body:
        return cast(
            Body,
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.plural, name, body
            ),
        )

    def patch_status(self, kind: Kind, namespace: str, name: str, status: Body) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, kind.plural, name, {"status": status}
        )

    def create_custom(self, kind: Kind, manifest: Body) -> bool:
        """Create an mlkube object; False when one of that name exists (a 409 is success)."""
        try:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, manifest["metadata"]["namespace"], kind.plural, manifest
            )
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    # -- any kind, through discovery ----------------------------------------------------------

    def _resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def apply(self, manifest: Body) -> Body:
        """Server-side apply: create or converge, idempotent."""
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        meta = manifest["metadata"]
        result = resource.server_side_apply(
            body=manifest,
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )
        return cast(Body, result.to_dict())

    def create(self, manifest: Body) -> bool:
        """Create once; False when it already exists (a 409 is success)."""
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        try:
            resource.create(body=manifest, namespace=manifest["metadata"].get("namespace"))
        except ConflictError:
            return False
        return True

    def get_any(self, api_version: str, kind: str, namespace: str, name: str) -> Body | None:
        try:
            return cast(
                Body,
                self._resource(api_version, kind).get(name=name, namespace=namespace).to_dict(),
            )
        except NotFoundError:
            return None

    def list_any(
        self, api_version: str, kind: str, namespace: str, label_selector: str
    ) -> list[Body]:
        result = self._resource(api_version, kind).get(
            namespace=namespace, label_selector=label_selector
        )
        return [cast(Body, item.to_dict()) for item in result.items]

    def label(
        self, api_version: str, kind: str, namespace: str, name: str, labels: dict[str, str]
    ) -> None:
        self._resource(api_version, kind).patch(
            name=name,
            namespace=namespace,
            body={"metadata": {"labels": labels}},
            content_type="application/merge-patch+json",
        )

    def delete_any(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFoundError):
            self._resource(api_version, kind).delete(
                name=name, namespace=namespace, body={"propagationPolicy": "Background"}
            )

    def post_event(self, obj: Body, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about `obj`, as `kubectl describe` shows them."""
        meta = obj["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event: Any = {
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", API_VERSION),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], event)
        except ApiException as e:  # an Event is a courtesy: losing one must not stop a reconcile
            logger.warning("could not post event %s on %s: %s", reason, meta["name"], e.reason)

    # -- pods -----------------------------------------------------------------------------------

    def label_pods(self, namespace: str, label_selector: str, labels: dict[str, str]) -> None:
        for pod in self.core.list_namespaced_pod(namespace, label_selector=label_selector).items:
            if pod.metadata and pod.metadata.name:
                self.core.patch_namespaced_pod(
                    pod.metadata.name, namespace, {"metadata": {"labels": labels}}
                )

    def scrape(self, namespace: str, pod: str, port: int, path: str = "metrics") -> str | None:
        """A pod's HTTP endpoint through the API server's pod proxy (works in and out of cluster)."""
        try:
            text = self.core.connect_get_namespaced_pod_proxy_with_path(
                f"{pod}:{port}", namespace, path
            )
        except ApiException:
            return None
        return str(text)

    def pod_logs(self, namespace: str, label_selector: str) -> dict[str, str]:
        """Logs of every pod matching the selector, by pod name."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=label_selector).items
        names = [str(pod.metadata.name) for pod in pods if pod.metadata]
        return {name: str(self.core.read_namespaced_pod_log(name, namespace)) for name in names}


__all__ = ["API_VERSION", "Body", "Cluster", "load_config"]
