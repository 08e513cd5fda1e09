"""Feast 0.67's own client, its `remote` online store pointed at Cellar: what users switching
from Feast try first. Reads, `write_to_online_store`, `push` and `materialize` all go through
Feast's code to a server of their own (the batch ingestion below is what materialization runs).
"""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd
import pytest
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, PushSource
from feast.data_source import PushMode
from feast.repo_config import RepoConfig
from feast.types import Array, Float64, Int64, String
from feast.value_type import ValueType

from cellar import Client

from conftest import start

# The batch file of the fixture's `profile_import`: p0..p99 at T0 + i ms.
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)

logging.getLogger("feast").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def cellar(tmp_path_factory: pytest.TempPathFactory):
    server = start(tmp_path_factory.mktemp("feast-cellar"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store(cellar, tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    """Feast's registry of the quickstart's entities, views and service; its online store,
    Cellar."""
    work = tmp_path_factory.mktemp("feast")
    feast = FeatureStore(
        config=RepoConfig(
            project="cellar_test",
            provider="local",
            registry=str(work / "registry.db"),
            online_store={"type": "remote", "path": cellar.url},
            entity_key_serialization_version=3,
        )
    )
    files = FileSource(name="files", path=str(work / "unused.parquet"), timestamp_field="event_timestamp")
    profile_push = PushSource(name="profile_push", batch_source=files)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    article = Entity(name="article", join_keys=["article_id"], value_type=ValueType.STRING)
    views = [
        FeatureView(
            name="user_profile",
            entities=[user],
            source=profile_push,
            schema=[
                Field(name="country", dtype=String),
                Field(name="age", dtype=Int64),
                Field(name="keywords", dtype=Array(String)),
            ],
        ),
        FeatureView(
            name="recent_clicked_articles",
            entities=[user],
            source=files,
            schema=[Field(name="article_id", dtype=Array(String))],
        ),
        FeatureView(name="article_stats", entities=[article], source=files, schema=[Field(name="ctr_7d", dtype=Float64)]),
    ]
    feast.apply([user, article, profile_push, *views, FeatureService(name="home_feed_ranker", features=views)])
    return feast


def ages(cellar, users: list[str]) -> list[int | None]:
    with Client(cellar.url) as client:
        return client.get_online_features(["user_profile:age"], entities={"user_id": users}).to_dict()["age"]


def test_feast_reads_a_feature_service_as_cellars_client_does(cellar, store) -> None:
    users = [f"u{i}" for i in range(0, 400, 7)] + ["nobody"]
    articles = [f"a{i}" for i in range(0, 4000, 70)] + ["a_none"]
    rows = [{"user_id": u, "article_id": a} for u, a in zip(users, articles)]
    theirs = store.get_online_features(features=store.get_feature_service("home_feed_ranker"), entity_rows=rows).to_df()
    with Client(cellar.url) as client:
        ours = client.get_online_features(
            service="home_feed_ranker", entities={"user_id": users, "article_id": articles}
        ).to_pandas()

    def plain(values):
        out = []
        for v in values:
            if v is None or (not hasattr(v, "__len__") and pd.isna(v)):
                out.append(None)
            elif hasattr(v, "__len__") and not isinstance(v, str):
                out.append(list(v))
            else:
                out.append(v)
        return out

    # Feast's frame puts the clicks feature over the article_id key, which Cellar's keeps.
    for mine, feasts in [
        ("country", "country"),
        ("age", "age"),
        ("keywords", "keywords"),
        ("recent_clicked_articles__article_id", "article_id"),
        ("ctr_7d", "ctr_7d"),
    ]:
        assert plain(ours[mine]) == plain(theirs[feasts]), mine
    assert plain(ours["age"])[-1] is None
    assert sum(v is not None for v in plain(ours["age"])) > 10


def test_feast_writes_to_the_online_store_with_times_without_a_zone(cellar, store) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    store.write_to_online_store(
        "user_profile",
        pd.DataFrame(
            {
                "user_id": ["fw1", "fw2"],
                "country": ["NO", "IS"],
                "age": [50, 60],
                "keywords": [["ski"], ["sagas"]],
                "event_timestamp": [now, now],
            }
        ),
    )
    assert ages(cellar, ["fw1", "fw2"]) == [50, 60]


def test_feast_pushes_through_a_push_source(cellar, store) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    store.push(
        "profile_push",
        pd.DataFrame(
            {"user_id": ["fp1"], "country": ["DK"], "age": [51], "keywords": [["bikes"]], "event_timestamp": [now]}
        ),
        to=PushMode.ONLINE,
    )
    assert ages(cellar, ["fp1"]) == [51]


def test_feast_materializes_through_cellars_batch_ingestion(cellar, store) -> None:
    users = ["p0", "p49", "p50", "p99"]
    assert ages(cellar, users) == [None, None, None, None]
    # p50.. and later: only the period asked is loaded.
    store.materialize(T0 + dt.timedelta(milliseconds=50), T0 + dt.timedelta(days=1), feature_views=["user_profile"])
    assert ages(cellar, users) == [None, None, 70, 119]
    # Incremental: from where the last load ended; nothing before it comes back.
    store.materialize_incremental(T0 + dt.timedelta(days=2), feature_views=["user_profile"])
    assert ages(cellar, users) == [None, None, 70, 119]
    with Client(cellar.url) as client:
        loads = client.jobs(ingestion="profile_import")
    assert [j.state for j in loads] == ["succeeded", "succeeded"]
    assert loads[0].info["period_from_ms"] == loads[1].info["period_to_ms"]
    # A view only streams load has nothing to materialize from: Feast shows Cellar's reason.
    with pytest.raises(RuntimeError, match="no batch ingestion loads `recent_clicked_articles`"):
        store.materialize(T0, T0 + dt.timedelta(days=1), feature_views=["recent_clicked_articles"])


def test_feasts_client_reads_cellars_refusal_of_an_oversized_write(cellar, store) -> None:
    # Past server.max_body_bytes (4 MiB): a JSON 413 Feast's client reads and shows.
    n = 120_000
    now = dt.datetime.now(dt.timezone.utc)
    frame = pd.DataFrame(
        {
            "user_id": [f"big{i}" for i in range(n)],
            "country": ["SE"] * n,
            "age": list(range(n)),
            "keywords": [["a-long-enough-keyword"]] * n,
            "event_timestamp": [now] * n,
        }
    )
    with pytest.raises(RuntimeError, match=r"413.*max_body_bytes"):
        store.write_to_online_store("user_profile", frame)
    assert ages(cellar, ["big0"]) == [None]
