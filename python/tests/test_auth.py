"""Authentication from Python: Cellar's client with an API key, and Feast 0.67's client
sending it as its bearer token, against a server that requires one."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from feast import Entity, FeatureStore, FeatureView, Field, FileSource
from feast.repo_config import RepoConfig
from feast.types import Array, Int64, String
from feast.value_type import ValueType

import cellar
from cellar import Client
from conftest import digest, start

READER = "cellar_pytest-reader-0d7f3c2a9b"
ADMIN = "cellar_pytest-admin-51e6a08c44"


CONFIG = f"""
[auth]
enabled = true

[[auth.api_keys]]
name = "pytest-reader"
sha256 = "{digest(READER)}"
roles = ["reader"]

[[auth.api_keys]]
name = "pytest-admin"
sha256 = "{digest(ADMIN)}"
roles = ["admin"]

[[auth.roles]]
name = "reader"
[[auth.roles.grants]]
actions = ["read_features"]
resources = ["group:user_*", "service:none"]

[[auth.roles]]
name = "admin"
[[auth.roles.grants]]
actions = ["read_features", "write_features", "publish_events", "operate_jobs", "operate_dead_letters", "read_metrics"]
resources = ["*"]
"""


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory):
    server = start(tmp_path_factory.mktemp("secured"), config=CONFIG)
    yield server
    server.stop()


def test_the_client_sends_its_key_and_refusals_are_typed(secured) -> None:
    keys = {"user_id": ["u1", "u2"]}
    with Client(secured.url) as anonymous:
        with pytest.raises(cellar.Unauthenticated):
            anonymous.get_online_features(["user_profile:age"], entities=keys)
    with Client(secured.url, token="cellar_not-a-key") as wrong:
        with pytest.raises(cellar.Unauthenticated):
            wrong.get_online_features(["user_profile:age"], entities=keys)
    with Client(secured.url, token=READER) as reader:
        ages = reader.get_online_features(["user_profile:age"], entities=keys).to_dict()["age"]
        assert len(ages) == 2 and all(isinstance(a, int) for a in ages)
        with pytest.raises(cellar.PermissionDenied, match="article_stats"):
            reader.get_online_features(["article_stats:ctr_7d"], entities={"article_id": ["a1"]})
        with pytest.raises(cellar.PermissionDenied):
            reader.push("user_profile", {"user_id": ["pa1"], "age": [1]})
        with pytest.raises(cellar.PermissionDenied):
            reader.jobs()
    with Client(secured.url, token=ADMIN) as admin:
        admin.push("user_profile", {"user_id": ["pa1"], "age": [41]})
        assert admin.get_online_features(["user_profile:age"], entities={"user_id": ["pa1"]}).to_dict()["age"] == [41]


def feast_store(url: str, work, token: str | None) -> FeatureStore:
    auth = {"type": "oidc", "token": token} if token else {"type": "no_auth"}
    store = FeatureStore(
        config=RepoConfig(
            project="cellar_auth",
            provider="local",
            registry=str(work / "registry.db"),
            online_store={"type": "remote", "path": url},
            entity_key_serialization_version=3,
            auth=auth,
        )
    )
    files = FileSource(name="files", path=str(work / "unused.parquet"), timestamp_field="event_timestamp")
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    view = FeatureView(
        name="user_profile",
        entities=[user],
        source=files,
        schema=[Field(name="country", dtype=String), Field(name="age", dtype=Int64), Field(name="keywords", dtype=Array(String))],
    )
    store.apply([user, view])
    return store


def test_feasts_client_reads_and_writes_with_a_bearer_token(secured, tmp_path) -> None:
    rows = [{"user_id": "u1"}, {"user_id": "u2"}]
    admin = feast_store(secured.url, tmp_path / "admin", ADMIN)
    theirs = admin.get_online_features(features=["user_profile:age"], entity_rows=rows).to_dict()["age"]
    with Client(secured.url, token=ADMIN) as client:
        assert theirs == client.get_online_features(["user_profile:age"], entities={"user_id": ["u1", "u2"]}).to_dict()["age"]
    now = dt.datetime.now(dt.timezone.utc)
    frame = pd.DataFrame({"user_id": ["fa1"], "country": ["EE"], "age": [38], "keywords": [["sauna"]], "event_timestamp": [now]})
    admin.write_to_online_store("user_profile", frame)
    assert admin.get_online_features(features=["user_profile:age"], entity_rows=[{"user_id": "fa1"}]).to_dict()["age"] == [38]
    # The reader's token reads but may not write; no token reads nothing.
    reader = feast_store(secured.url, tmp_path / "reader", READER)
    assert reader.get_online_features(features=["user_profile:age"], entity_rows=rows).to_dict()["age"] == theirs
    with pytest.raises(Exception, match="403|permission"):
        reader.write_to_online_store("user_profile", frame)
    nobody = feast_store(secured.url, tmp_path / "nobody", None)
    with pytest.raises(Exception, match="401|unauthenticated"):
        nobody.get_online_features(features=["user_profile:age"], entity_rows=rows).to_dict()
