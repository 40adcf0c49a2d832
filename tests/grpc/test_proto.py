"""The committed code of gotask/v1 is what grpcio-tools makes of gotask.proto today."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "gotask" / "v1" / "gotask.proto"
GENERATED = ("gotask_pb2.py", "gotask_pb2.pyi", "gotask_pb2_grpc.py")


def regenerate_command() -> list[str]:
    """The command the proto's header says regenerates the code."""
    text = PROTO.read_text()
    found = re.search(r"//   python (-m grpc_tools\.protoc .*?)\\\n//\s+(\S+)", text)
    assert found is not None, "gotask.proto lost its regenerate command"
    return [sys.executable, *found.group(1).split(), found.group(2)]


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    command = [arg.replace("_out=.", f"_out={tmp_path}") for arg in regenerate_command()]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    for name in GENERATED:
        fresh = (tmp_path / "gotask" / "v1" / name).read_text()
        assert fresh == (ROOT / "gotask" / "v1" / name).read_text(), (
            f"gotask/v1/{name} is stale: run the command in gotask/v1/gotask.proto")


def test_the_service_has_every_operation_of_the_issue() -> None:
    from gotask.v1 import gotask_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["GoTask"]
    assert pb.DESCRIPTOR.package == "gotask.v1"
    assert {m.name for m in service.methods} == {
        "Enqueue", "EnqueueStream", "GetJob", "WatchJob", "CancelJob", "ListJobs",
        "ListQueues", "ListDead", "RetryDead", "PurgeDead", "ListNodes"}
    stream = service.methods_by_name["EnqueueStream"]
    assert stream.client_streaming and stream.server_streaming
    assert service.methods_by_name["WatchJob"].server_streaming
