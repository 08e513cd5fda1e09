"""The clients: :class:`Client` for plain code, :class:`AsyncClient` for asyncio. Both build
the same requests and read the same answers; only the transport differs."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from . import _errors
from ._jobs import AsyncJob, AsyncTrainingSetJob, Job, TrainingSetJob
from ._response import OnlineResponse
from ._tables import ARROW_STREAM, columns_of, dumps, table_from_ipc, table_from_json

DEFAULT_URL = "http://127.0.0.1:6566"
#: Requests of at least this many entities ask for Arrow: no per-value JSON on either side.
ARROW_FROM_ENTITIES = 100
#: The longest ``Retry-After`` the client waits for before giving up.
MAX_RETRY_AFTER = 30.0


class _Requests:
    """What both clients share: the requests, and how answers and failures are read."""

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout: float,
        retries: int,
        arrow_from_entities: int,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = max(0, retries)
        self.arrow_from_entities = arrow_from_entities
        self.headers = {"User-Agent": "cellar-python/0.1"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.timeout = httpx.Timeout(timeout)
        self.limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)

    def features_request(
        self,
        features: Sequence[str] | None,
        service: str | None,
        entities: Any,
        request_data: Any,
        top_n: int | Mapping[str, int] | None,
        window: str | Mapping[str, str] | None,
        arrow: bool | None,
    ) -> tuple[bytes, dict[str, str], list[str]]:
        if (features is None) == (service is None):
            raise ValueError("give either features=[...] or service=...")
        body: dict[str, Any] = {"entities": columns_of(entities)}
        if request_data is not None:
            body["request_data"] = columns_of(request_data)
        if service is not None:
            body["feature_service"] = service
        else:
            body["groups"] = _groups(features or [], top_n, window)
        rows = max((len(v) for v in body["entities"].values()), default=0)
        if arrow is None:
            arrow = rows >= self.arrow_from_entities
        headers = {"Content-Type": "application/json"}
        if arrow:
            headers["Accept"] = f"{ARROW_STREAM}, application/json;q=0.5"
        return dumps(body), headers, list(body["entities"])

    @staticmethod
    def online_response(
        response: httpx.Response, full_feature_names: bool, entity_order: list[str]
    ) -> OnlineResponse:
        """The answer, its key columns in the order the caller gave them."""
        kind = response.headers.get("content-type", "")
        if kind.startswith(ARROW_STREAM):
            table, format = table_from_ipc(response.content), "arrow"
        else:
            table, format = table_from_json(response.json()), "json"
        return OnlineResponse(table, full_feature_names, format, entity_order)

    @staticmethod
    def push_body(group: str, data: Any) -> bytes:
        return dumps({"push_source_name": group, "df": columns_of(data), "to": "online"})

    @staticmethod
    def produce_body(
        topic: str, events: Iterable[Mapping[str, Any]], producer: str | None, sequence: int | None
    ) -> bytes:
        body: dict[str, Any] = {"topic": topic, "events": list(events)}
        if producer is not None:
            body["producer"] = {"id": producer, "sequence": sequence or 0}
        return dumps(body)

    @staticmethod
    def backfill_body(
        ingestion: str, from_: Any, to: Any, max_attempts: int | None
    ) -> bytes:
        body: dict[str, Any] = {"ingestion": ingestion}
        if from_ is not None:
            body["from"] = from_
        if to is not None:
            body["to"] = to
        if max_attempts is not None:
            body["max_attempts"] = max_attempts
        return dumps(body)

    @staticmethod
    def training_set_request(
        spine: Any,
        service: str | None,
        features: Sequence[str] | None,
        timestamp_column: str,
        top_n: int | None,
    ) -> tuple[bytes, dict[str, str]]:
        if (features is None) == (service is None):
            raise ValueError("give either features=[...] or service=...")
        params: dict[str, str] = {"timestamp_column": timestamp_column}
        if service is not None:
            params["service"] = service
        else:
            params["features"] = ",".join(features or [])
        if top_n is not None:
            params["top_n"] = str(top_n)
        table = spine if isinstance(spine, pa.Table) else pa.table(columns_of(spine))
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue(), params

    def delay(self, response: httpx.Response | None, attempt: int) -> float:
        """How long to wait before attempt ``attempt + 1``: the server's ``Retry-After``,
        else a backoff doubling from 50 ms."""
        if response is not None:
            after = response.headers.get("retry-after")
            if after:
                try:
                    return min(float(after), MAX_RETRY_AFTER)
                except ValueError:
                    pass
        return min(0.05 * 2**attempt, 2.0)

    @staticmethod
    def retryable(response: httpx.Response) -> bool:
        # Refused before the body was read (overload) or the store briefly unreachable.
        return response.status_code == 503

    @staticmethod
    def check(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise _errors.error_for(response.status_code, response.content)
        return response


def _groups(
    features: Sequence[str],
    top_n: int | Mapping[str, int] | None,
    window: str | Mapping[str, str] | None,
) -> list[Any]:
    """``group:feature`` references (``group:*`` for all) as ``/v1/features`` groups, in the
    order first named; ``top_n`` and ``window`` for every group, or by group name."""
    groups: dict[str, list[str] | None] = {}
    for reference in features:
        group, _, feature = reference.partition(":")
        if not group or not feature:
            raise ValueError(f"`{reference}` is not a `group:feature` reference")
        if feature == "*":
            groups[group] = None
        elif group not in groups:
            groups[group] = [feature]
        elif groups[group] is not None:
            groups[group].append(feature)  # type: ignore[union-attr]
    out: list[Any] = []
    for group, names in groups.items():
        entry: dict[str, Any] = {"name": group}
        if names is not None:
            entry["features"] = names
        for key, setting in (("top_n", top_n), ("window", window)):
            value = setting.get(group) if isinstance(setting, Mapping) else setting
            if value is not None:
                entry[key] = value
        out.append(entry)
    return out


class Client:
    """A connection pool to one Cellar server.

    ``token`` is an API key or OIDC token, sent as a bearer token; ``timeout`` bounds each
    request (seconds); ``retries`` is how many times a request the server turned away (503,
    honouring ``Retry-After``) or that could not connect is sent again.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        arrow_from_entities: int = ARROW_FROM_ENTITIES,
        verify: bool | str = True,
    ) -> None:
        self._r = _Requests(url, token, timeout, retries, arrow_from_entities)
        self._http = httpx.Client(
            base_url=self._r.url,
            headers=self._r.headers,
            timeout=self._r.timeout,
            limits=self._r.limits,
            verify=verify,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _send(
        self,
        method: str,
        path: str,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        headers = dict(headers or {})
        if content is not None:
            headers.setdefault("Content-Type", "application/json")
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method, path, content=content, headers=headers, params=params
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                if attempt >= self._r.retries:
                    raise _errors.Unavailable(f"cannot reach {self._r.url}: {e}") from e
                time.sleep(self._r.delay(None, attempt))
                attempt += 1
                continue
            except httpx.TimeoutException as e:
                raise _errors.Unavailable(f"{method} {path}: no answer in time: {e}") from e
            if self._r.retryable(response) and attempt < self._r.retries:
                time.sleep(self._r.delay(response, attempt))
                attempt += 1
                continue
            return self._r.check(response)

    def _json(self, method: str, path: str, body: bytes | None = None, **params: Any) -> Any:
        query = {k: str(v) for k, v in params.items() if v is not None}
        return self._send(method, path, body, params=query or None).json()

    # Online features.

    def get_online_features(
        self,
        features: Sequence[str] | None = None,
        *,
        service: str | None = None,
        entities: Any = None,
        request_data: Any = None,
        full_feature_names: bool = False,
        top_n: int | Mapping[str, int] | None = None,
        window: str | Mapping[str, str] | None = None,
        arrow: bool | None = None,
    ) -> OnlineResponse:
        """Features of entities, by ``group:feature`` references (``group:*`` for a whole
        group) or a feature ``service``. ``entities``: a dict of key columns, a list of rows,
        or a pandas, polars or pyarrow table. ``top_n`` and ``window`` bound time-series
        groups (a value for every group named, or a dict by group). ``arrow`` asks for the
        Arrow answer (default: from ``arrow_from_entities`` entities on)."""
        body, headers, order = self._r.features_request(
            features, service, entities, request_data, top_n, window, arrow
        )
        response = self._send("POST", "/v1/features", body, headers)
        return self._r.online_response(response, full_feature_names, order)

    # Writes.

    def push(self, group: str, data: Any) -> None:
        """Writes rows to ``group``: its entity key columns, an ``event_timestamp`` column (or
        none: now) and feature columns (those not given keep their stored values). Every row
        is checked before any is written: one bad row refuses them all, naming it."""
        self._send("POST", "/push", self._r.push_body(group, data))

    def produce(
        self,
        topic: str,
        events: Iterable[Mapping[str, Any]],
        producer: str | None = None,
        sequence: int | None = None,
    ) -> dict[str, Any]:
        """Appends events to ``topic``. With ``producer`` (and the ``sequence`` of the first
        event), events the producer appended before are skipped: a resend appends nothing
        twice."""
        body = self._r.produce_body(topic, events, producer, sequence)
        return self._send("POST", "/v1/events", body).json()

    # Jobs.

    def backfill(
        self,
        ingestion: str,
        from_: Any = None,
        to: Any = None,
        max_attempts: int | None = None,
    ) -> Job:
        """Submits a batch job of ``ingestion`` over event times ``[from_, to)`` (dates or
        RFC 3339 times; open when None). ``.wait()`` on the answer follows it."""
        body = self._r.backfill_body(ingestion, from_, to, max_attempts)
        return Job(self, self._send("POST", "/v1/jobs", body).json())

    def job(self, job_id: int) -> Job:
        answer = self._json("GET", f"/v1/jobs/{job_id}")
        return Job(self, answer.get("job", answer), answer.get("shards"))

    def jobs(
        self, ingestion: str | None = None, state: str | None = None, limit: int | None = None
    ) -> list[Job]:
        answer = self._json("GET", "/v1/jobs", ingestion=ingestion, state=state, limit=limit)
        items = answer.get("jobs", answer) if isinstance(answer, dict) else answer
        return [Job(self, j) for j in items]

    def dead_letters(
        self, limit: int | None = None, ingestion: str | None = None
    ) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/dead-letters", limit=limit, ingestion=ingestion)

    def redrive(self, limit: int | None = None) -> dict[str, Any]:
        body = dumps({} if limit is None else {"limit": limit})
        return self._send("POST", "/v1/dead-letters/redrive", body).json()

    # Training data.

    def training_set(
        self,
        spine: Any,
        *,
        service: str | None = None,
        features: Sequence[str] | None = None,
        timestamp_column: str = "event_timestamp",
        top_n: int | None = None,
    ) -> TrainingSetJob:
        """Starts a training set on the server: each row of ``spine`` (entity keys, a
        timestamp, labels) with every feature as it was at its time. The answer's
        ``.to_pandas()`` / ``.to_arrow()`` wait for it."""
        body, params = self._r.training_set_request(
            spine, service, features, timestamp_column, top_n
        )
        headers = {"Content-Type": "application/vnd.apache.parquet"}
        answer = self._send("POST", "/v1/training-sets", body, headers, params).json()
        return TrainingSetJob(self, answer)

    def get_historical_features(
        self,
        entity_df: Any,
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        full_feature_names: bool = True,
        timestamp_column: str = "event_timestamp",
    ) -> TrainingSetJob:
        """Feast's shape of :meth:`training_set`: ``features`` as ``group:feature``
        references or a ``feature_service``; ``.to_df()`` gives the DataFrame."""
        job = self.training_set(
            entity_df,
            service=feature_service,
            features=None if feature_service else list(features or []),
            timestamp_column=timestamp_column,
        )
        job.full_feature_names = full_feature_names
        return job

    def health(self) -> bool:
        return self._send("GET", "/health").status_code == 200


class AsyncClient:
    """:class:`Client` for asyncio: the same methods, awaited."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        arrow_from_entities: int = ARROW_FROM_ENTITIES,
        verify: bool | str = True,
    ) -> None:
        self._r = _Requests(url, token, timeout, retries, arrow_from_entities)
        self._http = httpx.AsyncClient(
            base_url=self._r.url,
            headers=self._r.headers,
            timeout=self._r.timeout,
            limits=self._r.limits,
            verify=verify,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _send(
        self,
        method: str,
        path: str,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        headers = dict(headers or {})
        if content is not None:
            headers.setdefault("Content-Type", "application/json")
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method, path, content=content, headers=headers, params=params
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                if attempt >= self._r.retries:
                    raise _errors.Unavailable(f"cannot reach {self._r.url}: {e}") from e
                await asyncio.sleep(self._r.delay(None, attempt))
                attempt += 1
                continue
            except httpx.TimeoutException as e:
                raise _errors.Unavailable(f"{method} {path}: no answer in time: {e}") from e
            if self._r.retryable(response) and attempt < self._r.retries:
                await asyncio.sleep(self._r.delay(response, attempt))
                attempt += 1
                continue
            return self._r.check(response)

    async def _json(self, method: str, path: str, body: bytes | None = None, **params: Any) -> Any:
        query = {k: str(v) for k, v in params.items() if v is not None}
        return (await self._send(method, path, body, params=query or None)).json()

    async def get_online_features(
        self,
        features: Sequence[str] | None = None,
        *,
        service: str | None = None,
        entities: Any = None,
        request_data: Any = None,
        full_feature_names: bool = False,
        top_n: int | Mapping[str, int] | None = None,
        window: str | Mapping[str, str] | None = None,
        arrow: bool | None = None,
    ) -> OnlineResponse:
        body, headers, order = self._r.features_request(
            features, service, entities, request_data, top_n, window, arrow
        )
        response = await self._send("POST", "/v1/features", body, headers)
        return self._r.online_response(response, full_feature_names, order)

    async def push(self, group: str, data: Any) -> None:
        await self._send("POST", "/push", self._r.push_body(group, data))

    async def produce(
        self,
        topic: str,
        events: Iterable[Mapping[str, Any]],
        producer: str | None = None,
        sequence: int | None = None,
    ) -> dict[str, Any]:
        body = self._r.produce_body(topic, events, producer, sequence)
        return (await self._send("POST", "/v1/events", body)).json()

    async def backfill(
        self,
        ingestion: str,
        from_: Any = None,
        to: Any = None,
        max_attempts: int | None = None,
    ) -> AsyncJob:
        body = self._r.backfill_body(ingestion, from_, to, max_attempts)
        return AsyncJob(self, (await self._send("POST", "/v1/jobs", body)).json())

    async def job(self, job_id: int) -> AsyncJob:
        answer = await self._json("GET", f"/v1/jobs/{job_id}")
        return AsyncJob(self, answer.get("job", answer), answer.get("shards"))

    async def jobs(
        self, ingestion: str | None = None, state: str | None = None, limit: int | None = None
    ) -> list[AsyncJob]:
        answer = await self._json("GET", "/v1/jobs", ingestion=ingestion, state=state, limit=limit)
        items = answer.get("jobs", answer) if isinstance(answer, dict) else answer
        return [AsyncJob(self, j) for j in items]

    async def dead_letters(
        self, limit: int | None = None, ingestion: str | None = None
    ) -> list[dict[str, Any]]:
        return await self._json("GET", "/v1/dead-letters", limit=limit, ingestion=ingestion)

    async def redrive(self, limit: int | None = None) -> dict[str, Any]:
        body = dumps({} if limit is None else {"limit": limit})
        return (await self._send("POST", "/v1/dead-letters/redrive", body)).json()

    async def training_set(
        self,
        spine: Any,
        *,
        service: str | None = None,
        features: Sequence[str] | None = None,
        timestamp_column: str = "event_timestamp",
        top_n: int | None = None,
    ) -> AsyncTrainingSetJob:
        body, params = self._r.training_set_request(
            spine, service, features, timestamp_column, top_n
        )
        headers = {"Content-Type": "application/vnd.apache.parquet"}
        answer = (await self._send("POST", "/v1/training-sets", body, headers, params)).json()
        return AsyncTrainingSetJob(self, answer)

    async def health(self) -> bool:
        return (await self._send("GET", "/health")).status_code == 200
