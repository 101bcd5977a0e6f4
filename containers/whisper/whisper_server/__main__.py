"""``python -m whisper_server [--host H] [--port P]``: the entry point the image's ``serve`` runs."""

from __future__ import annotations

import argparse
import logging
import sys

from whisper_server.settings import Settings


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(prog="python -m whisper_server", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=settings.port,
                        help="port (default $SAGEMAKER_BIND_TO_PORT or 8080)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    from whisper_server.server import serve  # after logging is set up

    return serve(settings, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
