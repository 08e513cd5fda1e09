"""Cellar's Python client: online features into pandas, polars or Arrow; pushes, events and
batch jobs; training sets built by the server.

>>> from cellar import Client
>>> with Client("http://127.0.0.1:6566") as cellar:
...     df = cellar.get_online_features(
...         service="home_feed_ranker",
...         entities={"user_id": ["u1", "u2"], "article_id": ["a1", "a2"]},
...     ).to_pandas()
"""

from ._client import AsyncClient, Client
from ._errors import (
    CellarError,
    Conflict,
    InvalidRequest,
    JobFailed,
    NotFound,
    PermissionDenied,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from ._jobs import AsyncJob, AsyncTrainingSetJob, Job, TrainingSetJob
from ._response import OnlineResponse

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "AsyncTrainingSetJob",
    "CellarError",
    "Client",
    "Conflict",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "NotFound",
    "OnlineResponse",
    "PermissionDenied",
    "TooLarge",
    "TrainingSetJob",
    "Unauthenticated",
    "Unavailable",
]
