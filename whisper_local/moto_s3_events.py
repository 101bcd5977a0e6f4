"""moto's S3 event notifications with the two fields AWS puts in them and moto 5 leaves out.

S3's event message structure (https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html)
has ``s3.object.sequencer`` on every PUT/DELETE event (a hex string that grows with each
later event on the same key) and ``s3.object.versionId`` when the bucket is versioned. The
trigger Lambda tells uploads apart by them, so the local pipeline and the tests must get
them as AWS sends them. ``install()`` wraps moto's event builder (idempotent); run moto as
``python -m whisper_local.moto_s3_events [moto.server args]`` to have it in a server child.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from typing import Any, Callable

_LOCK = threading.Lock()
# Per process and increasing, like S3's per key: nanoseconds at start, then +1 per event.
_COUNTER = itertools.count(time.time_ns())


def _next_sequencer() -> str:
    with _LOCK:
        return f"{next(_COUNTER):X}"


def install() -> None:
    from moto.s3 import notifications

    original: Callable[..., dict[str, Any]] = notifications._get_s3_event
    if getattr(original, "_whisper_wrapped", False):
        return

    def get_s3_event(event_name: str, bucket: Any, key: Any, notification_id: str) -> dict[str, Any]:
        event = original(event_name, bucket, key, notification_id)
        for record in event["Records"]:
            obj = record["s3"]["object"]
            obj["sequencer"] = _next_sequencer()
            if bucket.is_versioned and getattr(key, "version_id", None) not in (None, "null"):
                obj["versionId"] = key.version_id
        return event

    get_s3_event._whisper_wrapped = True  # type: ignore[attr-defined]
    notifications._get_s3_event = get_s3_event


def main(argv: list[str] | None = None) -> None:
    from moto.server import main as moto_main

    install()
    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
