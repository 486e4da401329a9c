"""Pods per version while a canary rolls out: pure arithmetic over counts and weights.

Modelled on Argo Rollouts' `utils/replicaset/canary.go`. A canary's traffic share is either its
share of the pods (Service traffic, Argo's basic canary: the stable gives up what the canary takes)
or a weight a router enforces (`traffic: GatewayAPI`, Argo's traffic-routed canary without
dynamic stable scaling: the stable stays whole and the canary is sized from the weight). Weights
are percentages (0-100); counts are pods.
"""

from __future__ import annotations

import math

MAX_WEIGHT = 100


def stable_total(replicas: int, min_replicas: int | None = None, live: int = 0) -> int:
    """The pod count a split divides: `spec.replicas`; with autoscaling (`min_replicas` set) the
    HPA owns it, so the stable workload's live count, never below the HPA's `minReplicas`."""
    return replicas if min_replicas is None else max(live, min_replicas)


def weight_to_replicas(total: int, weight: int) -> int:
    """Pods that carry `weight` percent of `total`, rounded up (Argo's `trafficWeightToReplicas`)."""
    return math.ceil(total * weight / MAX_WEIGHT)


def split(
    total: int, weight: int, *, routed: bool = False, autoscaled: bool = False
) -> tuple[int, int]:
    """(stable, canary) pod counts for a canary at `weight` percent of `total` pods.

    A canary with any weight has at least one pod. Service traffic (`routed` False) splits
    `total`, the stable keeping at least one pod; a router (`routed`) leaves the stable whole.
    With autoscaling the HPA owns the stable's count (`total`, the live one) and it is never
    reduced: the canary is sized so its share of all pods approximates the weight (the whole
    `total` at 100 or behind a router)."""
    if weight == 0 or total == 0:
        return total, 0
    if autoscaled:
        if weight >= MAX_WEIGHT or routed:
            return total, max(1, total)
        return total, max(1, math.ceil(total * weight / (MAX_WEIGHT - weight)))
    canary = max(1, weight_to_replicas(total, weight))
    if routed:
        return total, canary
    return max(1, total - canary), canary


def canary_first(total: int, stable: int, canary: int, ready_canary: int) -> int:
    """The stable's pods while a canary comes up: it gives up only as many pods as the canary
    has ready (never more than its `split` share), so it keeps its capacity while the canary
    cannot start. Argo's basic canary likewise scales the stable down only as far as available
    pods allow (`CalculateReplicaCountsForBasicCanary`, with maxUnavailable 0)."""
    return max(stable, total - min(ready_canary, canary))


def after_promotion(total: int, live_promoted: int, live_replaced: int) -> int:
    """With autoscaling, the stable promoted in this decision starts with at least the pods the
    replaced stable had (the HPA then owns the count): a promotion never drops capacity."""
    return max(live_promoted, live_replaced, total)


def warm(replicas: int, live: int | None) -> int:
    """Pods of a previous stable kept warm for a fast rollback: as many as it had (`live`, known
    with autoscaling), else `spec.replicas`."""
    return replicas if live is None else live
