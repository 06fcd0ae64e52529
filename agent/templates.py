"""Write each compute kind's base job template to deployments/<kind>.json:

    .venv/bin/python -m airavata_prefect.agent.templates

The files are what `prefect work-pool create NAME --type TYPE --base-job-template FILE` takes;
`airavata resource compute create` fills the same templates with the resource's defaults.
A test keeps the files equal to what the code generates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from airavata_prefect.usecases.kinds import base_job_templates

DEPLOYMENTS = Path(__file__).resolve().parent.parent / "deployments"


def rendered() -> dict[str, str]:
    return {f"{kind}.json": json.dumps(template, indent=2, sort_keys=True) + "\n"
            for kind, template in base_job_templates().items()}


def main() -> int:
    for name, text in rendered().items():
        (DEPLOYMENTS / name).write_text(text)
        print(f"wrote deployments/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
