"""The one module that talks to the Kubernetes API, as plain JSON over the official client's
connection pool (no discovery round trips, no model classes to build and throw away).

Every request has a timeout, every failure becomes one of `mlkube.controller.errors`' kinds, and
children are written with server-side apply under one field manager, so applying the same
manifest twice is a no-op and a restarted operator never creates anything twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client, config

from mlkube.api.common import API_VERSION, GROUP, VERSION, Body
from mlkube.api.crdgen import KINDS, Kind
from mlkube.controller.errors import ApiError, Conflict, NotFound, Temporary, classify
from mlkube.controller.metrics import API_REQUESTS

FIELD_MANAGER = "mlkube-operator"
REQUEST_TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for every request: no call can hang a reconcile."""
POOL_CONNECTIONS = 64
"""Kept-alive connections: more than the work queue's threads plus the event sender, so no request
pays for a new TLS handshake (the client's default is 5 per CPU)."""
SCRAPE_CONNECT_TIMEOUT = 2.0
SCRAPE_CHUNK = 64 * 1024
SCRAPE_PARALLEL = 16
"""Pods of one Deployment scraped at once (more wait their turn within the same deadline)."""
logger = logging.getLogger("mlkube.kube")

_PLURALS: dict[tuple[str, str], str] = {
    ("v1", "Pod"): "pods",
    ("v1", "Service"): "services",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "Event"): "events",
    ("v1", "Namespace"): "namespaces",
    ("batch/v1", "Job"): "jobs",
    ("batch/v1", "CronJob"): "cronjobs",
    ("apps/v1", "Deployment"): "deployments",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "customresourcedefinitions",
    **{(API_VERSION, kind.kind): kind.plural for kind in KINDS},
}
_CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition"}


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def load_config(kubeconfig: str | None = None, context: str | None = None) -> str:
    """In a pod, the service account; elsewhere, the kubeconfig. Returns the namespace a
    command without -n means, as kubectl picks it: the pod's own namespace, else the
    context's `namespace`, else `default`."""
    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            pass
        else:
            try:
                return Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip() or "default"
            except OSError:
                return "default"
    config.load_kube_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    return context_namespace(contexts, active, context)


def context_namespace(
    contexts: list[dict[str, Any]], active: dict[str, Any] | None, name: str | None
) -> str:
    """The namespace of kubeconfig context `name` (None: the current context), `default`
    when it names none. `contexts`/`active` as kubernetes.config.list_kube_config_contexts
    gives them: [{"name": ..., "context": {"cluster": ..., "namespace": ...}}]."""
    chosen = next((c for c in contexts if c.get("name") == name), None) if name else active
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


def resource_path(
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    plural = _PLURALS[(api_version, kind)]
    parts = ["/api/v1" if api_version == "v1" else f"/apis/{api_version}"]
    if namespace is not None and kind not in _CLUSTER_SCOPED:
        parts.append(f"namespaces/{quote(namespace)}")
    parts.append(plural)
    if name is not None:
        parts.append(quote(name))
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


class Cluster:
    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        self.namespace = load_config(kubeconfig, context)
        """The namespace meant when none is given (kubectl's choice: see load_config)."""
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = POOL_CONNECTIONS
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        """The typed client, for scripts (hack/, benchmarks/); the operator never needs it."""

    # -- the one request path ---------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> Any:
        """JSON in, JSON out (text when the answer is not JSON); failures raised as ApiError."""
        try:
            response = self._send(
                method, path, body, query, content_type,
                urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            )  # fmt: skip
            try:
                data = response.read()
            finally:
                response.release_conn()
        except urllib3.exceptions.HTTPError as e:
            raise Temporary(0, type(e).__name__, str(e)) from e
        if response.status >= 300:
            raise classify(response.status, response.reason or "", data, response.headers)
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data.decode(errors="replace")

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        query: dict[str, str] | None,
        content_type: str,
        timeout: urllib3.Timeout,
    ) -> urllib3.BaseHTTPResponse:
        """The response with its headers read and its body not yet."""
        API_REQUESTS.labels(method).inc()
        url_path = f"{path}?{urlencode(query)}" if query else path
        headers = {"Accept": "application/json, */*", "Content-Type": content_type}
        method, url, headers, _, _ = self.api.param_serialize(
            method, url_path, header_params=headers, auth_settings=["BearerToken"]
        )
        payload = json.dumps(body) if body is not None else None
        return self.api.rest_client.pool_manager.request(
            method,
            url,
            body=payload,
            headers=headers,
            timeout=timeout,
            retries=False,  # the work queue is the one place that retries
            preload_content=False,
        )

    # -- any kind ---------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Body | None:
        try:
            return cast(
                Body, self.request("GET", resource_path(api_version, kind, namespace, name))
            )
        except NotFound:
            return None

    def list_of(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str = "",
        field_selector: str = "",
    ) -> list[Body]:
        return self.list_at(api_version, kind, namespace, label_selector, field_selector)[0]

    def list_at(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        label_selector: str = "",
        field_selector: str = "",
    ) -> tuple[list[Body], str]:
        """The objects and the list's resourceVersion (the point in time they are as of)."""
        query = {"labelSelector": label_selector} if label_selector else {}
        if field_selector:
            query["fieldSelector"] = field_selector
        path = resource_path(api_version, kind, namespace)
        result = self.request("GET", path, query=query or None)
        version = str((result.get("metadata") or {}).get("resourceVersion") or "")
        return cast(list[Body], result.get("items") or []), version

    def create(self, manifest: Body) -> bool:
        """Create once; False when it already exists (a 409 is success)."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        try:
            self.request("POST", path, manifest)
        except Conflict:
            return False
        return True

    def apply(self, manifest: Body) -> Body:
        """Server-side apply: create or converge, idempotent."""
        meta = manifest["metadata"]
        path = resource_path(
            manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]
        )
        return cast(
            Body,
            self.request(
                "PATCH",
                path,
                manifest,
                query={"fieldManager": FIELD_MANAGER, "force": "true"},
                content_type="application/apply-patch+yaml",
            ),
        )

    def replace(self, manifest: Body) -> Body:
        """A PUT of the whole object; with its resourceVersion, a Conflict if it changed since."""
        meta = manifest["metadata"]
        path = resource_path(
            manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]
        )
        return cast(Body, self.request("PUT", path, manifest))

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        patch: Body,
        subresource: str | None = None,
    ) -> Body:
        """A JSON merge patch (of the status subresource with `subresource="status"`)."""
        path = resource_path(api_version, kind, namespace, name, subresource)
        return cast(
            Body, self.request("PATCH", path, patch, content_type="application/merge-patch+json")
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self.request(
                "DELETE",
                resource_path(api_version, kind, namespace, name),
                {"propagationPolicy": "Background"},
            )

    # -- mlkube objects ----------------------------------------------------------------------

    def get_object(self, kind: Kind, namespace: str, name: str) -> Body | None:
        return self.get(API_VERSION, kind.kind, namespace, name)

    def list_objects(
        self, kind: Kind, namespace: str | None, label_selector: str = ""
    ) -> list[Body]:
        return self.list_of(API_VERSION, kind.kind, namespace, label_selector)

    def patch_object(self, kind: Kind, namespace: str, name: str, body: Body) -> Body:
        return self.patch(API_VERSION, kind.kind, namespace, name, body)

    def patch_status(self, kind: Kind, namespace: str, name: str, status: Body) -> Body:
        """The object as it is after the patch (callers keep their cache up to date with it)."""
        return self.patch(API_VERSION, kind.kind, namespace, name, {"status": status}, "status")

    def create_custom(self, kind: Kind, manifest: Body) -> bool:
        """Create an mlkube object; False when one of that name exists (a 409 is success)."""
        return self.create({"apiVersion": API_VERSION, "kind": kind.kind, **manifest})

    # -- events, pods ---------------------------------------------------------------------------

    def post_event(
        self, obj: Body, type_: str, reason: str, message: str, at: datetime | None = None
    ) -> None:
        """A core/v1 Event about `obj`, as `kubectl describe` shows them, stamped `at` (when it
        happened; default now)."""
        meta = obj["metadata"]
        now = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event: Body = {
            "apiVersion": "v1",
            "kind": "Event",
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
            self.create(event)
        except ApiError as e:  # an Event is a courtesy: losing one must not stop a reconcile
            logger.warning("could not post event %s on %s: %s", reason, meta["name"], e)

    def scrape(
        self,
        namespace: str,
        pods: list[str],
        port: int,
        timeout: float,
        max_bytes: int,
        path: str = "metrics",
    ) -> Scraped:
        """Pods' HTTP endpoint through the API server's pod proxy (works in and out of cluster),
        all at once within one deadline, each answer within `max_bytes`, as Prometheus bounds a
        scrape (scrape_timeout, body_size_limit). The proxy is a long-running request, so socket
        timeouts alone would let a pod that drips a byte a second hold a worker for ever."""
        deadline = time.monotonic() + timeout
        texts: dict[str, str] = {}
        exceeded: dict[str, str] = {}
        if not pods:
            return Scraped(texts, exceeded)

        def one(pod: str) -> str:
            proxy = f"{resource_path('v1', 'Pod', namespace, f'{pod}:{port}', 'proxy')}/{path}"
            return self._get_bounded(proxy, timeout, deadline, max_bytes)

        with ThreadPoolExecutor(min(len(pods), SCRAPE_PARALLEL), "scrape") as pool:
            answers = {pod: pool.submit(one, pod) for pod in pods}
        for pod, answer in answers.items():
            try:
                texts[pod] = answer.result()
            except ScrapeLimit as e:
                exceeded[pod] = str(e)
                logger.warning("scrape of %s/%s cut off: %s", namespace, pod, e)
            except ApiError as e:
                logger.info("no metrics from %s/%s: %s", namespace, pod, e)
        return Scraped(texts, exceeded)

    def _get_bounded(self, path: str, timeout: float, deadline: float, max_bytes: int) -> str:
        """A GET whose answer must be whole by `deadline` (monotonic) and at most `max_bytes`.

        Raises:
            ScrapeLimit: the answer was not whole in time, or was larger.
            ApiError: the API server or the pod refused, or the connection failed.
        """
        late = ScrapeLimit(f"answered no whole /metrics within {timeout:g}s (scrape timeout)")
        left = deadline - time.monotonic()
        if left <= 0:
            raise late
        try:
            response = self._send(
                "GET", path, None, None, "application/json",
                urllib3.Timeout(total=left, connect=min(SCRAPE_CONNECT_TIMEOUT, left)),
            )  # fmt: skip
        except urllib3.exceptions.TimeoutError as e:
            raise late from e
        except urllib3.exceptions.HTTPError as e:
            raise Temporary(0, type(e).__name__, str(e)) from e
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            response.shutdown()  # a blocked read returns at once, however slowly bytes drip

        timer = threading.Timer(max(deadline - time.monotonic(), 0.0), expire)
        timer.start()
        data = bytearray()
        complete = False
        try:
            while chunk := response.read(SCRAPE_CHUNK):
                data += chunk
                if len(data) > max_bytes:
                    raise ScrapeLimit(
                        f"answered more than {max_bytes} bytes of /metrics (scrape byte limit)"
                    )
            complete = not expired.is_set()
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if not expired.is_set():
                raise Temporary(0, type(e).__name__, str(e)) from e
        finally:
            timer.cancel()
            timer.join()  # an expiry under way ends before the connection goes back
            if not complete:
                response.close()  # half read: never reused
            response.release_conn()
        if not complete:
            raise late
        if response.status >= 300:
            raise classify(response.status, response.reason or "", bytes(data), response.headers)
        return data.decode(errors="replace")

    def pod_logs(self, namespace: str, label_selector: str) -> dict[str, str]:
        """Logs of every pod matching the selector, by pod name."""
        logs = {}
        for pod in self.list_of("v1", "Pod", namespace, label_selector):
            name = pod["metadata"]["name"]
            logs[name] = str(
                self.request("GET", resource_path("v1", "Pod", namespace, name, "log")) or ""
            )
        return logs

    def server_version(self) -> str:
        return str(self.request("GET", "/version")["gitVersion"])


class ScrapeLimit(Exception):
    """A pod's answer was cut off by the scrape's time or byte bound."""


@dataclass(frozen=True)
class Scraped:
    texts: dict[str, str]
    """Each answering pod's text."""
    exceeded: dict[str, str]
    """Pods whose answer was cut off by a bound, with why: their figures cannot be judged."""


__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Body",
    "Cluster",
    "Scraped",
    "context_namespace",
    "load_config",
]
