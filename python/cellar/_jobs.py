"""Handles on the server's jobs: batch jobs (backfills, schedules) and training sets."""

from __future__ import annotations

import asyncio
import io
import sys
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import _errors

if TYPE_CHECKING:  # pragma: no cover
    import pandas
    import polars

    from ._client import AsyncClient, Client

#: States a job does not leave.
FINISHED = ("succeeded", "failed", "cancelled")


class _Progress:
    """A progress bar (tqdm's, in a terminal or a notebook, when tqdm is installed; else a
    line on stderr), or nothing."""

    def __init__(self, show: bool, description: str) -> None:
        self._bar: Any = None
        self._line = False
        if not show:
            return
        try:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=1.0, desc=description, unit="", bar_format="{l_bar}{bar}| {postfix}")
        except ImportError:
            self._line = True
            self._description = description

    def update(self, fraction: float | None, text: str) -> None:
        if self._bar is not None:
            if fraction is not None:
                self._bar.n = max(0.0, min(1.0, fraction))
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.refresh()
        elif self._line:
            share = "" if fraction is None else f" {fraction:6.1%}"
            print(f"\r{self._description}:{share} {text}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._line:
            print(file=sys.stderr, flush=True)


class _JobView:
    """What both kinds of batch-job handle read from the server's answer."""

    def __init__(self, info: dict[str, Any], shards: list[dict[str, Any]] | None = None) -> None:
        self.info = info
        self.shards = shards

    @property
    def id(self) -> int:
        return int(self.info["id"])

    @property
    def state(self) -> str:
        return str(self.info.get("state", ""))

    @property
    def ingestion(self) -> str:
        return str(self.info.get("ingestion", ""))

    @property
    def done(self) -> bool:
        return self.state in FINISHED

    def fraction(self) -> float | None:
        planned = self.info.get("rows_planned")
        if planned:
            return self.info.get("rows_read", 0) / planned
        total = self.info.get("shards_total")
        if total:
            return self.info.get("shards_succeeded", 0) / total
        return None

    def summary(self) -> str:
        return (
            f"{self.state}, {self.info.get('rows_written', 0):,} rows written, "
            f"{self.info.get('rows_rejected', 0):,} rejected"
        )

    def raise_if_failed(self) -> None:
        if self.state in ("failed", "cancelled"):
            raise _errors.JobFailed(
                f"job {self.id} ({self.ingestion}) {self.state}: {self.info.get('error') or 'no reason given'}"
            )

    def __repr__(self) -> str:
        return f"Job({self.id}, {self.ingestion}, {self.state})"


class Job(_JobView):
    """A batch job (a backfill or a scheduled run) of an ingestion."""

    def __init__(self, client: Client, info: dict[str, Any], shards: list[dict[str, Any]] | None = None) -> None:
        super().__init__(info, shards)
        self._client = client

    def refresh(self) -> Job:
        fresh = self._client.job(self.id)
        self.info, self.shards = fresh.info, fresh.shards
        return self

    def wait(self, progress: bool = True, poll_interval: float = 1.0, timeout: float | None = None) -> Job:
        """Follows the job until it ends; raises :class:`JobFailed` if it failed or was
        cancelled, :class:`Unavailable` past ``timeout`` seconds."""
        bar = _Progress(progress, f"job {self.id} {self.ingestion}")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                self.refresh()
                bar.update(self.fraction(), self.summary())
                if self.done:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise _errors.Unavailable(f"job {self.id} did not end within {timeout} s")
                time.sleep(poll_interval)
        finally:
            bar.close()
        self.raise_if_failed()
        return self

    def cancel(self) -> Job:
        self._client._send("POST", f"/v1/jobs/{self.id}/cancel")
        return self.refresh()

    def retry(self) -> Job:
        self._client._send("POST", f"/v1/jobs/{self.id}/retry")
        return self.refresh()


class AsyncJob(_JobView):
    """:class:`Job` for :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient, info: dict[str, Any], shards: list[dict[str, Any]] | None = None) -> None:
        super().__init__(info, shards)
        self._client = client

    async def refresh(self) -> AsyncJob:
        fresh = await self._client.job(self.id)
        self.info, self.shards = fresh.info, fresh.shards
        return self

    async def wait(self, progress: bool = False, poll_interval: float = 1.0, timeout: float | None = None) -> AsyncJob:
        bar = _Progress(progress, f"job {self.id} {self.ingestion}")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                await self.refresh()
                bar.update(self.fraction(), self.summary())
                if self.done:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise _errors.Unavailable(f"job {self.id} did not end within {timeout} s")
                await asyncio.sleep(poll_interval)
        finally:
            bar.close()
        self.raise_if_failed()
        return self


class _TrainingView:
    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.full_feature_names = True

    @property
    def id(self) -> int:
        return int(self.info["id"])

    @property
    def state(self) -> str:
        return str(self.info.get("state", ""))

    def fraction(self) -> float | None:
        progress = self.info.get("progress") or {}
        total = progress.get("steps_total")
        if total:
            return progress.get("steps_done", 0) / total
        return 1.0 if self.state == "succeeded" else None

    def summary(self) -> str:
        progress = self.info.get("progress") or {}
        rows = progress.get("rows_done", self.info.get("rows") or 0)
        return f"{self.state}, {rows:,} rows"

    def raise_if_failed(self) -> None:
        if self.state in ("failed", "cancelled"):
            raise _errors.JobFailed(
                f"training set {self.id} {self.state}: {self.info.get('error') or 'no reason given'}"
            )

    def table(self, body: bytes) -> pa.Table:
        table = pq.read_table(io.BytesIO(body))
        if self.full_feature_names:
            return table
        # Feast's short names: `<group>__<feature>` as `<feature>`.
        return table.rename_columns([name.split("__", 1)[-1] for name in table.column_names])

    def __repr__(self) -> str:
        return f"TrainingSetJob({self.id}, {self.state})"


class TrainingSetJob(_TrainingView):
    """A training set being built by the server; ``to_arrow()``, ``to_pandas()`` (Feast's
    ``to_df()``) and ``to_polars()`` wait for it and download it."""

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        super().__init__(info)
        self._client = client

    def refresh(self) -> TrainingSetJob:
        self.info = self._client._json("GET", f"/v1/training-sets/{self.id}")
        return self

    def wait(self, progress: bool = True, poll_interval: float = 0.5, timeout: float | None = None) -> TrainingSetJob:
        bar = _Progress(progress, f"training set {self.id}")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self.state not in FINISHED:
                if deadline is not None and time.monotonic() > deadline:
                    raise _errors.Unavailable(f"training set {self.id} did not end within {timeout} s")
                time.sleep(poll_interval)
                self.refresh()
                bar.update(self.fraction(), self.summary())
        finally:
            bar.close()
        self.raise_if_failed()
        return self

    def to_arrow(self, progress: bool = False) -> pa.Table:
        self.wait(progress=progress)
        body = self._client._send("GET", f"/v1/training-sets/{self.id}/output").content
        return self.table(body)

    def to_pandas(self, progress: bool = False) -> pandas.DataFrame:
        return self.to_arrow(progress).to_pandas()

    def to_df(self, progress: bool = False) -> pandas.DataFrame:
        return self.to_pandas(progress)

    def to_polars(self, progress: bool = False) -> polars.DataFrame:
        import polars

        frame = polars.from_arrow(self.to_arrow(progress))
        assert isinstance(frame, polars.DataFrame)
        return frame

    def cancel(self) -> TrainingSetJob:
        self._client._send("POST", f"/v1/training-sets/{self.id}/cancel")
        return self.refresh()


class AsyncTrainingSetJob(_TrainingView):
    """:class:`TrainingSetJob` for :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient, info: dict[str, Any]) -> None:
        super().__init__(info)
        self._client = client

    async def refresh(self) -> AsyncTrainingSetJob:
        self.info = await self._client._json("GET", f"/v1/training-sets/{self.id}")
        return self

    async def wait(self, poll_interval: float = 0.5, timeout: float | None = None) -> AsyncTrainingSetJob:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state not in FINISHED:
            if deadline is not None and time.monotonic() > deadline:
                raise _errors.Unavailable(f"training set {self.id} did not end within {timeout} s")
            await asyncio.sleep(poll_interval)
            await self.refresh()
        self.raise_if_failed()
        return self

    async def to_arrow(self) -> pa.Table:
        await self.wait()
        body = (await self._client._send("GET", f"/v1/training-sets/{self.id}/output")).content
        return self.table(body)

    async def to_pandas(self) -> pandas.DataFrame:
        return (await self.to_arrow()).to_pandas()
