"""Names the operator and the in-pod runtime both use: the interface of a workload pod.

Free of heavy imports: the operator image has no pyarrow or scikit-learn.
"""

from __future__ import annotations

BATCHPREDICTION_ENV = "MLKUBE_BATCHPREDICTION"
"""The BatchPrediction a batch pod works for: the plan and the manifest name it."""
SHARD_INDEX_ENV = "JOB_COMPLETION_INDEX"
"""Set by the Job controller on every pod of an Indexed Job: the pod's index, its shard."""
POD_NAME_ENV = "MLKUBE_POD_NAME"
"""A trial pod's own name (downward API), recorded with its trial."""
SHARD_ATTEMPT_ENV = {
    "batch.kubernetes.io/job-index-failure-count": "MLKUBE_INDEX_FAILURES",
    "batch.kubernetes.io/job-index-ignored-failure-count": "MLKUBE_INDEX_IGNORED_FAILURES",
}
"""Annotations the Job controller writes on an index's pods (its earlier failed, and ignored,
attempts), handed to the worker by the downward API under these names."""

# -- owner labels: the mlkube object a child (a Job, its pods, an apps/v1 Deployment, a CronJob)
# belongs to; builders set them, caches index by them, reconcilers and the CLI select by them
TRAININGJOB_LABEL = "mlkube.io/trainingjob"
MODELVERSION_LABEL = "mlkube.io/modelversion"
DEPLOYMENT_LABEL = "mlkube.io/deployment"
DRIFTMONITOR_LABEL = "mlkube.io/driftmonitor"
BATCHPREDICTION_LABEL = "mlkube.io/batchprediction"
OWNER_LABELS = {
    TRAININGJOB_LABEL: "TrainingJob",
    MODELVERSION_LABEL: "ModelVersion",
    DRIFTMONITOR_LABEL: "DriftMonitor",
}
"""Labels naming the object a Job belongs to when its controller is not ours (a drift run's Job
is owned by its CronJob)."""
