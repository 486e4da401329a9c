"""The one module that talks to the Kubernetes API (through the official client)."""

from __future__ import annotations

from typing import Any, cast

from kubernetes import client, config

from mlkube.api.common import GROUP, VERSION
from mlkube.api.crdgen import Kind

Body = dict[str, Any]


class Cluster:
    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        config.load_kube_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
        self.custom = client.CustomObjectsApi()
        self.core = client.CoreV1Api()
        self.versions = client.VersionApi()

    def server_version(self) -> str:
        return str(self.versions.get_code().git_version)

    def list(self, kind: Kind, namespace: str | None) -> list[Body]:
        result: Any
        if namespace is None:
            result = self.custom.list_cluster_custom_object(GROUP, VERSION, kind.plural)
        else:
            result = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.plural
            )
        return cast(list[Body], result["items"])

    def get(self, kind: Kind, namespace: str, name: str) -> Body:
        return cast(
            Body,
            self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, kind.plural, name),
        )

    def patch(self, kind: Kind, namespace: str, name: str, body: Body) -> Body:
        return cast(
            Body,
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.plural, name, body
            ),
        )

    def pod_logs(self, namespace: str, label_selector: str) -> dict[str, str]:
        """Logs of every pod matching the selector, by pod name."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=label_selector).items
        names = [str(pod.metadata.name) for pod in pods if pod.metadata]
        return {name: str(self.core.read_namespaced_pod_log(name, namespace)) for name in names}
