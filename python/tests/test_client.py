"""The client against a real server: reads in every input and output shape, the Arrow answer
against the JSON one, writes, jobs, training sets and the errors on the way."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import httpx
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import cellar
from cellar import AsyncClient, Client

RANKER = ["user_profile", "recent_clicked_articles", "article_stats"]


def entities(n: int) -> dict[str, list[str]]:
    # Some users and articles the sample data has, some it has not.
    return {
        "user_id": [f"u{i * 7 % 12_000}" for i in range(n)],
        "article_id": [f"a{i * 13 % 120_000}" for i in range(n)],
    }


def raw(server, body: dict) -> dict:
    """The server's own JSON answer, untouched by the client."""
    response = httpx.post(f"{server.url}/v1/features", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_a_feature_service_reads_into_pandas_as_the_server_answered(server) -> None:
    keys = entities(20)
    with Client(server.url) as client:
        df = client.get_online_features(service="home_feed_ranker", entities=keys).to_pandas()
    answer = raw(server, {"entities": keys, "feature_service": "home_feed_ranker"})
    assert list(df["user_id"]) == keys["user_id"]
    assert list(df["article_id"]) == keys["article_id"]
    checked = 0
    for result in answer["results"]:
        assert result["group"] in RANKER
        for i, feature in enumerate(result["features"]):
            # `article_id` is a key and a feature of recent_clicked_articles: that one keeps
            # its group's name.
            name = feature if feature not in keys else f"{result['group']}__{feature}"
            column = list(df[name])
            for row, served in enumerate(result["rows"]):
                if result["kind"] == "timeseries":
                    want = [r["values"][i] for r in served["records"]] if served.get("records") else None
                    got = None if column[row] is None else list(column[row])
                else:
                    want = served["values"][i] if "values" in served else None
                    got = column[row]
                    if isinstance(want, list):
                        got = None if got is None else list(got)
                    elif want is None:
                        got = None if pd.isna(got) else got
                assert got == want, f"{feature} row {row}"
                checked += 1
    assert checked >= 20 * 5


def test_every_input_shape_gives_the_same_answer(server) -> None:
    keys = entities(5)
    rows = [dict(zip(keys, values)) for values in zip(*keys.values())]
    shapes = [
        keys,
        rows,
        pd.DataFrame(keys),
        pl.DataFrame(keys),
        pa.table(keys),
        {name: pd.Series(values) for name, values in keys.items()},
    ]
    with Client(server.url) as client:
        answers = [
            client.get_online_features(["user_profile:*", "article_stats:ctr_7d"], entities=shape).to_dict()
            for shape in shapes
        ]
    for answer in answers[1:]:
        assert answer == answers[0]
    assert set(answers[0]) == {"user_id", "article_id", "country", "age", "keywords", "ctr_7d"}


def test_the_arrow_answer_equals_the_json_answer_for_a_thousand_entities(server) -> None:
    keys = entities(1000)
    with Client(server.url) as client:
        as_json = client.get_online_features(service="home_feed_ranker", entities=keys, arrow=False)
        as_arrow = client.get_online_features(service="home_feed_ranker", entities=keys, arrow=True)
    assert (as_json.format, as_arrow.format) == ("json", "arrow")
    assert len(as_arrow) == 1000
    assert as_arrow.to_dict(statuses=True) == as_json.to_dict(statuses=True)
    # The Arrow answer is typed by the specs: no inference from values.
    table = as_arrow.to_arrow(full_feature_names=True)
    assert table.schema.field("user_profile__age").type == pa.int64()
    assert table.schema.field("recent_clicked_articles__article_id").type == pa.list_(pa.string())


def test_statuses_event_times_and_full_names(server) -> None:
    with Client(server.url) as client:
        response = client.get_online_features(
            ["user_profile:age", "recent_clicked_articles:article_id"],
            entities={"user_id": ["u1", "nobody"]},
            top_n={"recent_clicked_articles": 3},
        )
    assert response.statuses() == {
        "user_profile": ["present", "not_found"],
        "recent_clicked_articles": ["present", "not_found"],
    }
    full = response.to_dict(full_feature_names=True, statuses=True)
    assert full["user_profile__age"][1] is None
    assert isinstance(full["user_profile__event_time"][0], dt.datetime)
    clicks = full["recent_clicked_articles__article_id"][0]
    times = full["recent_clicked_articles__event_time"][0]
    assert 1 <= len(clicks) <= 3 and len(times) == len(clicks)
    assert times == sorted(times, reverse=True), "newest first"
    frame = response.to_polars()
    assert frame.columns == ["user_id", "age", "article_id"]
    # With the key among the entities, the feature of the same name keeps its group's.
    both = Client(server.url).get_online_features(
        ["recent_clicked_articles:article_id"], entities={"user_id": ["u1"], "article_id": ["a1"]}
    )
    assert list(both.to_dict()) == ["user_id", "article_id", "recent_clicked_articles__article_id"]


def test_errors_carry_the_servers_message(server) -> None:
    with Client(server.url) as client:
        with pytest.raises(cellar.NotFound, match="agee"):
            client.get_online_features(["user_profile:agee"], entities={"user_id": ["u1"]})
        with pytest.raises(cellar.NotFound, match="no_such_service"):
            client.get_online_features(service="no_such_service", entities={"user_id": ["u1"]})
        with pytest.raises(cellar.InvalidRequest) as refused:
            client.get_online_features(["user_profile:age"], entities={"user_id": ["u\x00"]})
        assert refused.value.status == 400 and refused.value.kind
        with pytest.raises(cellar.TooLarge):
            client.get_online_features(["user_profile:age"], entities={"user_id": ["u1"] * 100_000})
        with pytest.raises(ValueError, match="either"):
            client.get_online_features(entities={"user_id": ["u1"]})
    with Client("http://127.0.0.1:9", retries=1) as nowhere:
        with pytest.raises(cellar.Unavailable, match="cannot reach"):
            nowhere.get_online_features(["user_profile:age"], entities={"user_id": ["u1"]})


def test_a_push_is_read_back_and_a_bad_row_refuses_the_push(server) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    with Client(server.url) as client:
        client.push(
            "user_profile",
            pd.DataFrame(
                {
                    "user_id": ["py1", "py2"],
                    "event_timestamp": [now, now],
                    "country": ["NZ", "FI"],
                    "age": [33, 44],
                }
            ),
        )
        got = client.get_online_features(["user_profile:country", "user_profile:age"], entities={"user_id": ["py1", "py2"]})
        assert got.to_dict() == {"user_id": ["py1", "py2"], "country": ["NZ", "FI"], "age": [33, 44]}
        with pytest.raises(cellar.InvalidRequest, match="age"):
            client.push("user_profile", {"user_id": ["py3", "py4"], "age": [1, "old"]})
        assert client.get_online_features(["user_profile:age"], entities={"user_id": ["py3"]}).statuses() == {
            "user_profile": ["not_found"]
        }


def test_produced_events_are_ingested_once_even_when_sent_twice(server) -> None:
    now_ms = int(time.time() * 1000)
    events = [
        {"type": "article_clicked", "user_id": "pyclicker", "ts": now_ms + i, "article_id": f"pa{i}", "session_id": "s"}
        for i in range(3)
    ]
    with Client(server.url) as client:
        first = client.produce("user-actions", events, producer="pytest-clicks", sequence=0)
        again = client.produce("user-actions", events, producer="pytest-clicks", sequence=0)
        assert first["appended"] == 3
        assert again["appended"] == 0 and again["duplicates"] == 3
        deadline = time.monotonic() + 30
        while True:
            clicks = client.get_online_features(
                ["recent_clicked_articles:article_id"], entities={"user_id": ["pyclicker"]}, top_n=10
            ).to_dict()["article_id"][0]
            if clicks is not None and len(clicks) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert clicks == ["pa2", "pa1", "pa0"]
        assert isinstance(client.dead_letters(limit=5), list)


def test_a_backfill_is_followed_to_its_end(server) -> None:
    with Client(server.url) as client:
        job = client.backfill("profile_import")
        assert job.ingestion == "profile_import"
        job.wait(progress=False, poll_interval=0.2, timeout=120)
        assert job.state == "succeeded"
        assert job.info["rows_written"] == 100
        assert any(j.id == job.id for j in client.jobs(ingestion="profile_import"))
        got = client.get_online_features(["user_profile:age"], entities={"user_id": ["p0", "p99"]})
        assert got.to_dict()["age"] == [20, 119]
        with pytest.raises(cellar.NotFound):
            client.backfill("no_such_ingestion")


def test_a_training_set_comes_back_as_a_dataframe(server) -> None:
    spine = pd.DataFrame(
        {
            "user_id": ["p0", "p1", "p2", "nobody"],
            # p0's record is at 2026-01-01T00:00:00Z: before it, nothing.
            "event_timestamp": pd.to_datetime(
                ["2026-01-02T00:00:00Z", "2026-01-02T00:00:00Z", "2025-12-31T00:00:00Z", "2026-01-02T00:00:00Z"]
            ),
            "label": [1, 0, 1, 0],
        }
    )
    with Client(server.url) as client:
        client.backfill("profile_import").wait(progress=False, poll_interval=0.2, timeout=120)
        df = client.training_set(spine, features=["user_profile:age"]).to_pandas()
        assert list(df["label"]) == [1, 0, 1, 0]
        ages = [None if pd.isna(v) else int(v) for v in df["user_profile__age"]]
        assert ages == [20, 21, None, None]
        feast_shaped = client.get_historical_features(
            entity_df=spine, features=["user_profile:age"], full_feature_names=False
        ).to_df()
        assert [None if pd.isna(v) else int(v) for v in feast_shaped["age"]] == ages
        with pytest.raises(cellar.CellarError, match="agee"):
            client.training_set(spine, features=["user_profile:agee"]).to_pandas()


def test_the_async_client_answers_as_the_sync_one(server) -> None:
    keys = entities(50)

    async def read() -> dict:
        async with AsyncClient(server.url) as client:
            answers = await asyncio.gather(
                *[client.get_online_features(service="home_feed_ranker", entities=keys) for _ in range(4)]
            )
            assert all(a.to_dict() == answers[0].to_dict() for a in answers)
            with pytest.raises(cellar.NotFound):
                await client.get_online_features(service="nope", entities=keys)
            return answers[0].to_dict()

    with Client(server.url) as client:
        want = client.get_online_features(service="home_feed_ranker", entities=keys).to_dict()
    assert asyncio.run(read()) == want
