"""The committed gRPC code is what proto/agent.proto generates (scripts/gen_proto.sh)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ("agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py")


def test_generated_code_is_current(tmp_path: Path) -> None:
    pkg = tmp_path / "airavata_prefect" / "proto"
    pkg.mkdir(parents=True)
    shutil.copy(ROOT / "proto" / "agent.proto", pkg / "agent.proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
                    "--grpc_python_out=.", "--pyi_out=.", "airavata_prefect/proto/agent.proto"],
                   cwd=tmp_path, check=True)
    for name in GENERATED:
        fresh = (pkg / name).read_text()
        assert fresh == (ROOT / "proto" / name).read_text(), \
            f"proto/{name} is stale: run scripts/gen_proto.sh"


def test_the_contract_has_airavatas_worker_calls() -> None:
    from airavata_prefect.proto import agent_pb2

    service = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    assert {"RegisterWorker", "PollForTask", "ReportTaskStatus", "SendHeartbeat",
            "RequestDataStaging"} <= set(service.methods_by_name)
    poll = service.methods_by_name["PollForTask"]
    assert poll.client_streaming and poll.server_streaming
