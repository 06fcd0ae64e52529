"""`python -m airavata_prefect.api.rest [--host H] [--port P]`: the REST API in the foreground
(what `airavata server start` runs in the background)."""

from __future__ import annotations

import argparse

from airavata_prefect.api.rest.app import serve
from airavata_prefect.usecases.settings import get_settings

parser = argparse.ArgumentParser(prog="python -m airavata_prefect.api.rest")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=None, help="default: AIRAVATA_API_PORT")
args = parser.parse_args()
serve(get_settings(), host=args.host, port=args.port)
