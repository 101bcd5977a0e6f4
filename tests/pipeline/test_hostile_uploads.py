"""Hostile uploads through the local pipeline (issue 12.1): an object named innocent.mp3 whose
bytes are a playlist naming a real clip on disk or a loopback URL ends in a clear error
record, never in that clip's transcript, and nothing is fetched."""

from __future__ import annotations

import http.server
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from whisper_contract import ErrorRecord
from whisper_local.pipeline import LocalPipeline, PipelineConfig

LJ = Path(__file__).resolve().parents[1] / "data" / "audio" / "en_ljspeech_LJ001-0001.flac"
LJ_WORDS = ("printing", "arts", "exhibition")


def test_playlist_named_innocent_mp3_gets_an_error_record(tmp_path):
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(LJ.read_bytes())

        def log_message(self, *args) -> None:
            pass

    listener = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{listener.server_address[1]}"
    # Beside the container's spooled bodies (it inherits this temp folder), so a relative
    # ffconcat entry would find it: before the fix its transcript came back.
    planted = Path(tempfile.gettempdir()) / f"planted-{uuid.uuid4().hex}.flac"
    planted.write_bytes(LJ.read_bytes())
    bodies = {
        "hostile/innocent.mp3": f"ffconcat version 1.0\nfile {planted.name}\n".encode(),
        "hostile/also-innocent.mp3": f"ffconcat version 1.0\nfile '{url}/x.flac'\nfile '{planted}'\n".encode(),
        "hostile/stream.mp3": (f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{url}/a.flac\n"
                               f"#EXT-X-ENDLIST\n").encode(),
    }
    config = PipelineConfig(state_path=tmp_path / "state.json", log_dir=tmp_path / "logs", visibility_timeout_s=3)
    try:
        with LocalPipeline(config) as state:
            s3 = state.client("s3")
            for key, body in bodies.items():
                s3.put_object(Bucket=state.input_bucket, Key=key, Body=body)
            wanted = {f"{key}.error.json" for key in bodies}
            deadline = time.time() + 180
            while time.time() < deadline:
                listing = s3.list_objects_v2(Bucket=state.output_bucket, Prefix="hostile/").get("Contents", [])
                keys = {o["Key"] for o in listing}
                if wanted <= keys:
                    break
                time.sleep(0.5)
            assert keys == wanted, keys  # an error record each, and no transcript
            for key in wanted:
                record = ErrorRecord.from_json(s3.get_object(Bucket=state.output_bucket, Key=key)["Body"].read())
                assert record.code in ("unsupported_media", "not_audio"), record
                assert not any(word in record.message.lower() for word in LJ_WORDS)
                assert "/tmp" not in record.message and "Errno" not in record.message, record.message
    finally:
        planted.unlink()
        listener.shutdown()
        listener.server_close()
    assert requests == []
