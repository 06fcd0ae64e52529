"""Write each worker type's base job template to deployments/<type>.json:

    .venv/bin/python -m agent.templates

The files are what `prefect work-pool create NAME --type TYPE --base-job-template FILE` takes;
`airavata resource compute create` fills the same templates with the resource's defaults.
A test keeps the files equal to what the code generates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEPLOYMENTS = Path(__file__).resolve().parent.parent / "deployments"


def rendered() -> dict[str, str]:
    from airavata_prefect.agent.workers import WORKERS
    return {f"{kind}.json": json.dumps(worker.get_default_base_job_template(), indent=2,
                                       sort_keys=True) + "\n"
            for kind, worker in WORKERS.items()}


def main() -> int:
    for name, text in rendered().items():
        (DEPLOYMENTS / name).write_text(text)
        print(f"wrote deployments/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
