"""Which URIs a namespace may name: its own part of the store, allowed prefixes, public data."""

from __future__ import annotations

import pytest

from mlkube.config import OperatorConfig
from mlkube.tenancy import forbidden_uri, namespace_prefix, uri_allowed

pytestmark = pytest.mark.unit

S3_ROOT = "s3://mlkube/prod"
PVC_ROOT = "file:///var/lib/mlkube/artifacts"


def test_the_namespace_prefix_ends_with_a_slash_so_team_a_never_matches_team_ab() -> None:
    assert namespace_prefix(S3_ROOT, "team-a") == "s3://mlkube/prod/team-a/"
    prefixes = [namespace_prefix(S3_ROOT, "team-a")]
    assert uri_allowed("s3://mlkube/prod/team-a/iris/1", prefixes)
    assert not uri_allowed("s3://mlkube/prod/team-ab/iris/1", prefixes)
    assert not uri_allowed("s3://mlkube/prod/team-a", prefixes)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://mlkube/prod/team-b/iris/1",
        "s3://other-bucket/team-a/data.csv",
        "s3://mlkube/prod/team-a/../team-b/iris/1",
        "s3://mlkube/prod/team-a/./../team-b",
        "s3://mlkube/prod/team-a//iris",
        "file:///etc/passwd",
        "/var/lib/mlkube/artifacts/team-b/data.csv",
        "http://169.254.169.254/latest/meta-data",
        "gs://mlkube/prod/team-a/x",
    ],
)
def test_uris_outside_the_namespace_or_climbing_out_of_it_are_refused(uri: str) -> None:
    assert not uri_allowed(
        uri, [namespace_prefix(S3_ROOT, "team-a"), namespace_prefix(PVC_ROOT, "team-a")]
    )


@pytest.mark.parametrize(
    "uri",
    [
        "/var/lib/mlkube/artifacts/team-a/data.csv",
        "file:///var/lib/mlkube/artifacts/team-a/iris/1/reference.parquet",
    ],
)
def test_uris_in_the_namespace_store_are_allowed(uri: str) -> None:
    assert uri_allowed(uri, [namespace_prefix(PVC_ROOT, "team-a")])


@pytest.mark.parametrize(
    "uri", ["builtin:iris", "https://example.org/churn.csv", "builtin:../../etc"]
)
def test_bundled_and_public_data_only_where_a_field_names_training_data(uri: str) -> None:
    fields = {"spec.dataset.uri": uri, "spec.artifact.uri": None}
    assert forbidden_uri(fields, S3_ROOT, "team-a", data_fields={"spec.dataset.uri"}) is None
    refused = forbidden_uri(
        {"spec.artifact.uri": uri}, S3_ROOT, "team-a", data_fields={"spec.dataset.uri"}
    )
    assert refused is not None
    assert refused.field == "spec.artifact.uri"


def test_a_forbidden_uri_names_the_field_and_what_is_allowed() -> None:
    found = forbidden_uri(
        {
            "spec.dataset.uri": "builtin:iris",
            "spec.reference.uri": "s3://mlkube/prod/team-b/ref.parquet",
        },
        S3_ROOT,
        "team-a",
        data_fields={"spec.dataset.uri"},
    )
    assert found is not None
    assert found.field == "spec.reference.uri"
    assert found.message == (
        "spec.reference.uri: s3://mlkube/prod/team-b/ref.parquet is outside this namespace's store; "
        "it must start with s3://mlkube/prod/team-a/"
    )


def test_prefixes_the_platform_team_allows_are_open_to_every_namespace() -> None:
    shared = "s3://mlkube/shared-datasets"
    uris = {"spec.dataset.uri": "s3://mlkube/shared-datasets/churn.csv"}
    assert forbidden_uri(uris, S3_ROOT, "team-a") is not None
    assert forbidden_uri(uris, S3_ROOT, "team-a", [shared]) is None
    assert forbidden_uri({"spec.dataset.uri": None}, S3_ROOT, "team-a") is None


def test_an_allowed_prefix_overlapping_the_root_is_refused_at_start() -> None:
    for prefix in ("s3://mlkube", "s3://mlkube/prod/", "s3://mlkube/prod/team-a"):
        with pytest.raises(ValueError, match="overlaps the artifact root"):
            OperatorConfig(artifact_pvc=None, artifact_root=S3_ROOT, allowed_uri_prefixes=(prefix,))
    OperatorConfig(
        artifact_pvc=None, artifact_root=S3_ROOT, allowed_uri_prefixes=("s3://mlkube/production",)
    )


def test_the_storage_secret_reaches_pods_only_in_object_storage_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLKUBE_S3_SECRET", "mlkube-s3")
    assert OperatorConfig.from_env().s3_secret is None, "PVC mode asks for no Secret"
    monkeypatch.setenv("MLKUBE_ARTIFACT_ROOT", "s3://mlkube/prod")
    assert OperatorConfig.from_env().s3_secret == "mlkube-s3"
