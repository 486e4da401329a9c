"""Pods per version during a canary (`core.replicas`), as Argo Rollouts' canary arithmetic."""

from __future__ import annotations

from mlkube.core import replicas


def test_a_service_split_keeps_one_stable_pod_and_rounds_the_canary_up() -> None:
    assert replicas.split(4, 25) == (3, 1)
    assert replicas.split(10, 33) == (6, 4), "3.3 canary pods round up to 4"
    assert replicas.split(1, 10) == (1, 1), "one pod each: the stable never goes to 0"
    assert replicas.split(4, 100) == (1, 4)


def test_no_weight_or_no_pods_gives_the_canary_none() -> None:
    assert replicas.split(4, 0) == (4, 0)
    assert replicas.split(1, 0) == (1, 0)
    assert replicas.split(0, 50) == (0, 0)
    assert replicas.split(0, 50, routed=True, autoscaled=True) == (0, 0)


def test_a_routed_canary_leaves_the_stable_whole() -> None:
    assert replicas.split(4, 25, routed=True) == (4, 1)
    assert replicas.split(4, 1, routed=True) == (4, 1), "any weight has a pod behind it"
    assert replicas.split(4, 100, routed=True) == (4, 4)


def test_an_autoscaled_canary_is_sized_so_its_share_of_all_pods_approximates_the_weight() -> None:
    assert replicas.split(4, 25, autoscaled=True) == (4, 2), "4 * 25/75 = 1.33, up to 2"
    assert replicas.split(3, 50, autoscaled=True) == (3, 3)
    assert replicas.split(6, 10, autoscaled=True) == (6, 1)
    assert replicas.split(4, 100, autoscaled=True) == (4, 4)
    assert replicas.split(4, 25, routed=True, autoscaled=True) == (4, 4), (
        "behind a router the canary matches the stable, whatever the weight"
    )


def test_weight_to_replicas_rounds_up() -> None:
    assert [replicas.weight_to_replicas(10, w) for w in (0, 1, 10, 11, 100)] == [0, 1, 1, 2, 10]


def test_the_stable_total_is_the_spec_unless_an_hpa_owns_it() -> None:
    assert replicas.stable_total(3, None, live=7) == 3
    assert replicas.stable_total(3, 2, live=7) == 7
    assert replicas.stable_total(3, 2, live=0) == 2, "never below the HPA's minReplicas"


def test_the_stable_gives_up_only_pods_the_canary_has_ready() -> None:
    stable, canary = replicas.split(4, 50)
    assert (stable, canary) == (2, 2)
    assert replicas.canary_first(4, stable, canary, ready_canary=0) == 4
    assert replicas.canary_first(4, stable, canary, ready_canary=1) == 3
    assert replicas.canary_first(4, stable, canary, ready_canary=2) == 2
    assert replicas.canary_first(4, stable, canary, ready_canary=5) == 2, (
        "surplus ready canary pods (a scale-down under way) never shrink the stable below its share"
    )


def test_a_promoted_autoscaled_stable_starts_with_at_least_the_replaced_ones_pods() -> None:
    assert replicas.after_promotion(2, live_promoted=3, live_replaced=5) == 5
    assert replicas.after_promotion(6, live_promoted=3, live_replaced=5) == 6
    assert replicas.after_promotion(2, live_promoted=7, live_replaced=5) == 7


def test_a_warm_previous_stable_keeps_its_live_count_when_known() -> None:
    assert replicas.warm(4, None) == 4
    assert replicas.warm(4, 6) == 6
