from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("hostname", "cores", "memory_bytes", "gpus", "slots", "allocation_id", "allocation_ends_at", "pid", "version", "agent_id")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_ENDS_AT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    cores: int
    memory_bytes: int
    gpus: int
    slots: int
    allocation_id: str
    allocation_ends_at: float
    pid: int
    version: str
    agent_id: str
    def __init__(self, hostname: _Optional[str] = ..., cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gpus: _Optional[int] = ..., slots: _Optional[int] = ..., allocation_id: _Optional[str] = ..., allocation_ends_at: _Optional[float] = ..., pid: _Optional[int] = ..., version: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("agent_id", "lease_seconds", "heartbeat_seconds", "idle_seconds")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    lease_seconds: float
    heartbeat_seconds: float
    idle_seconds: float
    def __init__(self, agent_id: _Optional[str] = ..., lease_seconds: _Optional[float] = ..., heartbeat_seconds: _Optional[float] = ..., idle_seconds: _Optional[float] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("item_id", "epoch")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    epoch: int
    def __init__(self, item_id: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("credit", "hand_back")
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    HAND_BACK_FIELD_NUMBER: _ClassVar[int]
    credit: Credit
    hand_back: HandBack
    def __init__(self, credit: _Optional[_Union[Credit, _Mapping]] = ..., hand_back: _Optional[_Union[HandBack, _Mapping]] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("n",)
    N_FIELD_NUMBER: _ClassVar[int]
    n: int
    def __init__(self, n: _Optional[int] = ...) -> None: ...

class HandBack(_message.Message):
    __slots__ = ("leases", "reason")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    reason: str
    def __init__(self, leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("assignment", "cancel", "shutdown")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    assignment: Assignment
    cancel: Cancel
    shutdown: Shutdown
    def __init__(self, assignment: _Optional[_Union[Assignment, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("item_id", "epoch", "experiment_id", "instance_id", "attempt", "script", "script_sha256", "workdir", "env", "walltime_seconds", "outputs", "ram_gb")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_SHA256_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WALLTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    RAM_GB_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    epoch: int
    experiment_id: str
    instance_id: str
    attempt: int
    script: str
    script_sha256: str
    workdir: str
    env: _containers.ScalarMap[str, str]
    walltime_seconds: int
    outputs: _containers.RepeatedScalarFieldContainer[str]
    ram_gb: float
    def __init__(self, item_id: _Optional[int] = ..., epoch: _Optional[int] = ..., experiment_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., attempt: _Optional[int] = ..., script: _Optional[str] = ..., script_sha256: _Optional[str] = ..., workdir: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., walltime_seconds: _Optional[int] = ..., outputs: _Optional[_Iterable[str]] = ..., ram_gb: _Optional[float] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("leases", "reason")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    reason: str
    def __init__(self, leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("wall_seconds", "cpu_seconds", "max_rss_bytes")
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    wall_seconds: float
    cpu_seconds: float
    max_rss_bytes: int
    def __init__(self, wall_seconds: _Optional[float] = ..., cpu_seconds: _Optional[float] = ..., max_rss_bytes: _Optional[int] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("lease", "state", "exit_code", "message", "usage", "at")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    state: str
    exit_code: int
    message: str
    usage: Usage
    at: float
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., state: _Optional[str] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., at: _Optional[float] = ...) -> None: ...

class StatusBatch(_message.Message):
    __slots__ = ("updates",)
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[TaskStatus]
    def __init__(self, updates: _Optional[_Iterable[_Union[TaskStatus, _Mapping]]] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("rejected",)
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    rejected: _containers.RepeatedCompositeFieldContainer[Lease]
    def __init__(self, rejected: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("running", "load", "held")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    running: int
    load: float
    held: _containers.RepeatedCompositeFieldContainer[Lease]
    def __init__(self, running: _Optional[int] = ..., load: _Optional[float] = ..., held: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("lost", "shutdown")
    LOST_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    lost: _containers.RepeatedCompositeFieldContainer[Lease]
    shutdown: bool
    def __init__(self, lost: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., shutdown: _Optional[bool] = ...) -> None: ...

class StagingRequest(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class StagingReply(_message.Message):
    __slots__ = ("inputs", "outputs")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[StagingFile]
    outputs: _containers.RepeatedCompositeFieldContainer[StagingFile]
    def __init__(self, inputs: _Optional[_Iterable[_Union[StagingFile, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[StagingFile, _Mapping]]] = ...) -> None: ...

class StagingFile(_message.Message):
    __slots__ = ("path", "url", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    url: str
    sha256: str
    def __init__(self, path: _Optional[str] = ..., url: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("lease", "stream", "offset", "data")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    stream: str
    offset: int
    data: bytes
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., stream: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class LogAck(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: int
    def __init__(self, chunks: _Optional[int] = ...) -> None: ...
