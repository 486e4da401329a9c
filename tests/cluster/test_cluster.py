"""The test cluster itself: real pods, Services, volumes, Jobs and CronJobs on a real node."""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from tests.cluster.fixtures import (
    KubeCluster,
    pod_logs,
    wait_pod_phase,
    wait_until,
)

pytestmark = pytest.mark.integration


def _pod(
    name: str,
    image: str,
    command: list[str],
    *,
    restart: str = "Never",
    labels: dict[str, str] | None = None,
    run_as_root: bool = False,
    volumes: list[client.V1Volume] | None = None,
    mounts: list[client.V1VolumeMount] | None = None,
    readiness_port: int | None = None,
) -> client.V1Pod:
    probe = None
    if readiness_port is not None:
        probe = client.V1Probe(
            tcp_socket=client.V1TCPSocketAction(port=readiness_port),
            period_seconds=1,
        )
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            restart_policy=restart,
            termination_grace_period_seconds=1,
            automount_service_account_token=False,
            security_context=client.V1PodSecurityContext(run_as_user=0) if run_as_root else None,
            volumes=volumes,
            containers=[
                client.V1Container(
                    name="main",
                    image=image,
                    image_pull_policy="IfNotPresent",
                    command=command,
                    volume_mounts=mounts,
                    readiness_probe=probe,
                )
            ],
        ),
    )


def test_api_server_version(kube_cluster: KubeCluster) -> None:
    version = kube_cluster.version()
    assert version.startswith(kube_cluster.expected_version_prefix), version
    # the raw GET /version, as curl would see it
    resp = client.VersionApi(kube_cluster.api_client).get_code(_preload_content=False)
    raw = json.loads(resp.data)
    assert raw["gitVersion"] == version
    nodes = kube_cluster.core.list_node().items
    assert nodes, "no nodes"
    ready = {c.type: c.status for c in nodes[0].status.conditions}
    assert ready.get("Ready") == "True", ready
    assert nodes[0].status.node_info.kubelet_version.startswith(
        kube_cluster.expected_version_prefix
    )


def test_runtime_image_pod_runs_to_completion(
    kube_cluster: KubeCluster, namespace: str, runtime_image: str
) -> None:
    script = (
        "import shutil, sklearn, bentoml, mlkube; "
        "print('mlkube-runtime at', shutil.which('mlkube-runtime')); "
        "print('sklearn', sklearn.__version__, 'bentoml', bentoml.__version__); "
        "print('RUNTIME-OK')"
    )
    kube_cluster.core.create_namespaced_pod(
        namespace, _pod("runtime", runtime_image, ["python", "-c", script])
    )
    wait_pod_phase(kube_cluster, namespace, "runtime", {"Succeeded"}, 180)
    logs = pod_logs(kube_cluster, namespace, "runtime")
    assert "RUNTIME-OK" in logs, logs
    assert "mlkube-runtime at /" in logs, logs


def test_pod_reaches_pod_through_clusterip_service(
    kube_cluster: KubeCluster, namespace: str, runtime_image: str
) -> None:
    core = kube_cluster.core
    core.create_namespaced_pod(
        namespace,
        _pod(
            "web",
            runtime_image,
            ["python", "-m", "http.server", "8080", "--directory", "/tmp"],
            restart="Always",
            labels={"app": "web"},
            readiness_port=8080,
        ),
    )
    svc = core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1ServiceSpec(
                selector={"app": "web"},
                ports=[client.V1ServicePort(port=80, target_port=8080)],
            ),
        ),
    )
    cluster_ip = svc.spec.cluster_ip
    assert cluster_ip and cluster_ip != "None"

    def ready() -> bool:
        pod = core.read_namespaced_pod("web", namespace)
        return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])

    wait_until(ready, 120, "pod web Ready")
    fetch = (
        "import sys, time, urllib.request\n"
        "for i in range(30):\n"
        "    try:\n"
        f"        r = urllib.request.urlopen('http://{cluster_ip}:80/', timeout=3)\n"
        "        print('STATUS', r.status); sys.exit(0)\n"
        "    except Exception as e:\n"
        "        print('retry', e); time.sleep(1)\n"
        "sys.exit(1)\n"
    )
    core.create_namespaced_pod(namespace, _pod("client", runtime_image, ["python", "-c", fetch]))
    wait_pod_phase(kube_cluster, namespace, "client", {"Succeeded"}, 120)
    logs = pod_logs(kube_cluster, namespace, "client")
    assert "STATUS 200" in logs, logs


def test_pvc_binds_and_a_non_root_pod_writes(
    kube_cluster: KubeCluster, namespace: str, runtime_image: str
) -> None:
    core = kube_cluster.core
    core.create_namespaced_persistent_volume_claim(
        namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="data"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                resources=client.V1VolumeResourceRequirements(requests={"storage": "16Mi"}),
            ),
        ),
    )
    wait_until(
        lambda: (
            core.read_namespaced_persistent_volume_claim("data", namespace).status.phase == "Bound"
        ),
        90,
        "PVC data Bound",
    )
    script = (
        "from pathlib import Path; p = Path('/data/model.txt'); p.write_text('weights'); "
        "print('READ', p.read_text())"
    )
    core.create_namespaced_pod(
        namespace,
        _pod(
            "writer",
            runtime_image,
            ["python", "-c", script],
            run_as_root=False,
            volumes=[
                client.V1Volume(
                    name="data",
                    persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                        claim_name="data"
                    ),
                )
            ],
            mounts=[client.V1VolumeMount(name="data", mount_path="/data")],
        ),
    )
    wait_pod_phase(kube_cluster, namespace, "writer", {"Succeeded"}, 120)
    assert "READ weights" in pod_logs(kube_cluster, namespace, "writer")


def _job_template(image: str) -> client.V1PodTemplateSpec:
    return client.V1PodTemplateSpec(
        spec=client.V1PodSpec(
            restart_policy="Never",
            termination_grace_period_seconds=1,
            containers=[
                client.V1Container(
                    name="main",
                    image=image,
                    image_pull_policy="IfNotPresent",
                    command=["python", "-c", "print('JOB-DONE')"],
                )
            ],
        )
    )


def test_job_completes(kube_cluster: KubeCluster, namespace: str, runtime_image: str) -> None:
    kube_cluster.batch.create_namespaced_job(
        namespace,
        client.V1Job(
            metadata=client.V1ObjectMeta(name="once"),
            spec=client.V1JobSpec(backoff_limit=0, template=_job_template(runtime_image)),
        ),
    )
    job = wait_until(
        lambda: (
            (j := kube_cluster.batch.read_namespaced_job("once", namespace)).status.succeeded and j
        ),
        180,
        "job once to succeed",
    )
    assert job.status.succeeded == 1


def test_cronjob_fires(kube_cluster: KubeCluster, namespace: str, runtime_image: str) -> None:
    kube_cluster.batch.create_namespaced_cron_job(
        namespace,
        client.V1CronJob(
            metadata=client.V1ObjectMeta(name="every-minute"),
            spec=client.V1CronJobSpec(
                schedule="* * * * *",
                successful_jobs_history_limit=1,
                job_template=client.V1JobTemplateSpec(
                    spec=client.V1JobSpec(backoff_limit=0, template=_job_template(runtime_image))
                ),
            ),
        ),
    )
    # fires at the next minute boundary (<= 60 s), then the Job has to run
    cj = wait_until(
        lambda: (
            (
                c := kube_cluster.batch.read_namespaced_cron_job("every-minute", namespace)
            ).status.last_successful_time
            and c
        ),
        150,
        "cronjob every-minute to fire and complete a job",
    )
    assert cj.status.last_schedule_time is not None
