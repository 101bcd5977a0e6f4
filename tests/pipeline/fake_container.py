"""A stand-in container for fast tests of the plumbing (the e2e test uses the real one).

Speaks the container contract: GET /ping; POST /invocations with the audio as the body and
options in X-Amzn-SageMaker-Custom-Attributes; 200 + Transcript JSON, or 4xx + ErrorRecord.
Audio is "recognised" by its container magic bytes only; the text says how many bytes came.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from whisper_contract import ContractError, ErrorCode, ModelInfo, RequestOptions, Segment, Timings, Transcript

MAGIC = (b"RIFF", b"fLaC", b"ID3", b"OggS", b"\xff\xfb", b"\xff\xf3")


def transcribe(body: bytes, attributes: str | None) -> Transcript:
    options = RequestOptions.from_query(attributes)
    if not body:
        raise ContractError(ErrorCode.EMPTY_INPUT, "empty body")
    wav_ok = not body.startswith(b"RIFF") or body[8:16] == b"WAVEfmt "
    if not wav_ok or (not body.startswith(MAGIC) and body[4:8] != b"ftyp"):
        raise ContractError(ErrorCode.CORRUPT_AUDIO, "could not decode the audio")
    text = f"fake transcript of {len(body)} bytes"
    segments = (Segment(id=0, start=0.0, end=1.5, text=" " + text, avg_logprob=-0.1, no_speech_prob=0.01),
                Segment(id=1, start=1.5, end=3.25, text=" second line", avg_logprob=-0.2, no_speech_prob=0.02))
    return Transcript(text=text + " second line", language=options.language or "en", language_probability=1.0,
                      duration=3.25, segments=segments, model=ModelInfo(model="fake", backend="fake", version="0"),
                      timings=Timings(processing_seconds=0.01), options=options.to_dict())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._send(200 if self.path == "/ping" else 404, b"{}")

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            transcript = transcribe(body, self.headers.get("X-Amzn-SageMaker-Custom-Attributes"))
        except ContractError as exc:
            self._send(exc.status, exc.to_record().to_json().encode())
            return
        self._send(200, transcript.to_json().encode())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
