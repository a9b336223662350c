import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    ALLOW: _ClassVar[Outcome]
    DENY: _ClassVar[Outcome]
    REQUIRE_APPROVAL: _ClassVar[Outcome]

class Effect(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EFFECT_UNSPECIFIED: _ClassVar[Effect]
    EFFECT_ALLOW: _ClassVar[Effect]
    EFFECT_DENY: _ClassVar[Effect]
    EFFECT_REQUIRE_APPROVAL: _ClassVar[Effect]

class ApprovalState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPROVAL_STATE_UNSPECIFIED: _ClassVar[ApprovalState]
    APPROVAL_PENDING: _ClassVar[ApprovalState]
    APPROVAL_APPROVED: _ClassVar[ApprovalState]
    APPROVAL_REJECTED: _ClassVar[ApprovalState]
    APPROVAL_EXPIRED: _ClassVar[ApprovalState]
    APPROVAL_CONSUMED: _ClassVar[ApprovalState]

class Resolution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOLUTION_UNSPECIFIED: _ClassVar[Resolution]
    APPROVE: _ClassVar[Resolution]
    REJECT: _ClassVar[Resolution]
OUTCOME_UNSPECIFIED: Outcome
ALLOW: Outcome
DENY: Outcome
REQUIRE_APPROVAL: Outcome
EFFECT_UNSPECIFIED: Effect
EFFECT_ALLOW: Effect
EFFECT_DENY: Effect
EFFECT_REQUIRE_APPROVAL: Effect
APPROVAL_STATE_UNSPECIFIED: ApprovalState
APPROVAL_PENDING: ApprovalState
APPROVAL_APPROVED: ApprovalState
APPROVAL_REJECTED: ApprovalState
APPROVAL_EXPIRED: ApprovalState
APPROVAL_CONSUMED: ApprovalState
RESOLUTION_UNSPECIFIED: Resolution
APPROVE: Resolution
REJECT: Resolution

class Agent(_message.Message):
    __slots__ = ("id", "instance_id", "owner", "team", "workflow", "model", "session_id", "labels", "capabilities")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    id: str
    instance_id: str
    owner: str
    team: str
    workflow: str
    model: str
    session_id: str
    labels: _containers.ScalarMap[str, str]
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., instance_id: _Optional[str] = ..., owner: _Optional[str] = ..., team: _Optional[str] = ..., workflow: _Optional[str] = ..., model: _Optional[str] = ..., session_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capabilities: _Optional[_Iterable[str]] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("name", "server", "args", "call_id", "risk_tier")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    RISK_TIER_FIELD_NUMBER: _ClassVar[int]
    name: str
    server: str
    args: _struct_pb2.Struct
    call_id: str
    risk_tier: int
    def __init__(self, name: _Optional[str] = ..., server: _Optional[str] = ..., args: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., call_id: _Optional[str] = ..., risk_tier: _Optional[int] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("id", "time", "estimated_cost", "environment", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    time: _timestamp_pb2.Timestamp
    estimated_cost: float
    environment: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., estimated_cost: _Optional[float] = ..., environment: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("agent", "tool", "request", "context", "dry_run")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    tool: ToolCall
    request: Request
    context: _struct_pb2.Struct
    dry_run: bool
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ..., tool: _Optional[_Union[ToolCall, _Mapping]] = ..., request: _Optional[_Union[Request, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("rule_id", "text", "policy", "effect")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    text: str
    policy: str
    effect: Effect
    def __init__(self, rule_id: _Optional[str] = ..., text: _Optional[str] = ..., policy: _Optional[str] = ..., effect: _Optional[_Union[Effect, str]] = ...) -> None: ...

class BundleRef(_message.Message):
    __slots__ = ("name", "version", "revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    revision: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., revision: _Optional[str] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("approval_id", "approvers", "expires_at", "state", "resolved_by", "resolved_at", "comment")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_BY_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_AT_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    approvers: _containers.RepeatedScalarFieldContainer[str]
    expires_at: _timestamp_pb2.Timestamp
    state: ApprovalState
    resolved_by: str
    resolved_at: _timestamp_pb2.Timestamp
    comment: str
    def __init__(self, approval_id: _Optional[str] = ..., approvers: _Optional[_Iterable[str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[ApprovalState, str]] = ..., resolved_by: _Optional[str] = ..., resolved_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., comment: _Optional[str] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("decision_id", "outcome", "reasons", "bundle", "approval", "matched_rules", "deciding_rule", "eval_us", "dry_run", "request_id", "error")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    MATCHED_RULES_FIELD_NUMBER: _ClassVar[int]
    DECIDING_RULE_FIELD_NUMBER: _ClassVar[int]
    EVAL_US_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    outcome: Outcome
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    bundle: BundleRef
    approval: Approval
    matched_rules: _containers.RepeatedScalarFieldContainer[str]
    deciding_rule: str
    eval_us: int
    dry_run: bool
    request_id: str
    error: StreamError
    def __init__(self, decision_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., bundle: _Optional[_Union[BundleRef, _Mapping]] = ..., approval: _Optional[_Union[Approval, _Mapping]] = ..., matched_rules: _Optional[_Iterable[str]] = ..., deciding_rule: _Optional[str] = ..., eval_us: _Optional[int] = ..., dry_run: _Optional[bool] = ..., request_id: _Optional[str] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class DecideBatch(_message.Message):
    __slots__ = ("requests", "outcomes")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[DecideRequest]
    outcomes: _containers.RepeatedCompositeFieldContainer[ReportOutcomeRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[DecideRequest, _Mapping]]] = ..., outcomes: _Optional[_Iterable[_Union[ReportOutcomeRequest, _Mapping]]] = ...) -> None: ...

class DecideBatchResponse(_message.Message):
    __slots__ = ("responses", "outcomes")
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[DecideResponse]
    outcomes: _containers.RepeatedCompositeFieldContainer[ReportOutcomeReply]
    def __init__(self, responses: _Optional[_Iterable[_Union[DecideResponse, _Mapping]]] = ..., outcomes: _Optional[_Iterable[_Union[ReportOutcomeReply, _Mapping]]] = ...) -> None: ...

class ReportOutcomeReply(_message.Message):
    __slots__ = ("decision_id", "error")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    error: StreamError
    def __init__(self, decision_id: _Optional[str] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ...) -> None: ...

class GetDecisionRequest(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...

class DecisionRecord(_message.Message):
    __slots__ = ("decision_id", "time", "agent", "tool_name", "tool_server", "call_id", "args", "args_hash", "risk_tier", "outcome", "reasons", "matched_rules", "deciding_rule", "bundle", "shadow_outcome", "shadow_rules", "shadow_bundle", "eval_us", "approval", "estimated_cost", "actual_cost", "outcome_status", "request_id", "environment", "context", "dry_run", "caller", "labels")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    TOOL_SERVER_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ARGS_HASH_FIELD_NUMBER: _ClassVar[int]
    RISK_TIER_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_RULES_FIELD_NUMBER: _ClassVar[int]
    DECIDING_RULE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SHADOW_RULES_FIELD_NUMBER: _ClassVar[int]
    SHADOW_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    EVAL_US_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_COST_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    time: _timestamp_pb2.Timestamp
    agent: Agent
    tool_name: str
    tool_server: str
    call_id: str
    args: _struct_pb2.Struct
    args_hash: str
    risk_tier: int
    outcome: Outcome
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    matched_rules: _containers.RepeatedScalarFieldContainer[str]
    deciding_rule: str
    bundle: BundleRef
    shadow_outcome: Outcome
    shadow_rules: _containers.RepeatedScalarFieldContainer[str]
    shadow_bundle: BundleRef
    eval_us: int
    approval: Approval
    estimated_cost: float
    actual_cost: float
    outcome_status: str
    request_id: str
    environment: str
    context: _struct_pb2.Struct
    dry_run: bool
    caller: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, decision_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent: _Optional[_Union[Agent, _Mapping]] = ..., tool_name: _Optional[str] = ..., tool_server: _Optional[str] = ..., call_id: _Optional[str] = ..., args: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., args_hash: _Optional[str] = ..., risk_tier: _Optional[int] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., matched_rules: _Optional[_Iterable[str]] = ..., deciding_rule: _Optional[str] = ..., bundle: _Optional[_Union[BundleRef, _Mapping]] = ..., shadow_outcome: _Optional[_Union[Outcome, str]] = ..., shadow_rules: _Optional[_Iterable[str]] = ..., shadow_bundle: _Optional[_Union[BundleRef, _Mapping]] = ..., eval_us: _Optional[int] = ..., approval: _Optional[_Union[Approval, _Mapping]] = ..., estimated_cost: _Optional[float] = ..., actual_cost: _Optional[float] = ..., outcome_status: _Optional[str] = ..., request_id: _Optional[str] = ..., environment: _Optional[str] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., dry_run: _Optional[bool] = ..., caller: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ResolveApprovalRequest(_message.Message):
    __slots__ = ("decision_id", "resolution", "approver", "comment")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    resolution: Resolution
    approver: str
    comment: str
    def __init__(self, decision_id: _Optional[str] = ..., resolution: _Optional[_Union[Resolution, str]] = ..., approver: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("decision_id", "actual_cost", "status", "labels", "result")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_COST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    actual_cost: float
    status: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    result: _struct_pb2.Value
    def __init__(self, decision_id: _Optional[str] = ..., actual_cost: _Optional[float] = ..., status: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("state", "limit")
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    state: ApprovalState
    limit: int
    def __init__(self, state: _Optional[_Union[ApprovalState, str]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[DecisionRecord]
    def __init__(self, approvals: _Optional[_Iterable[_Union[DecisionRecord, _Mapping]]] = ...) -> None: ...

class KillSwitch(_message.Message):
    __slots__ = ("id", "scope", "value", "reason", "created_by", "created_at", "cleared_at", "cleared_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CLEARED_AT_FIELD_NUMBER: _ClassVar[int]
    CLEARED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    scope: str
    value: str
    reason: str
    created_by: str
    created_at: _timestamp_pb2.Timestamp
    cleared_at: _timestamp_pb2.Timestamp
    cleared_by: str
    def __init__(self, id: _Optional[str] = ..., scope: _Optional[str] = ..., value: _Optional[str] = ..., reason: _Optional[str] = ..., created_by: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cleared_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cleared_by: _Optional[str] = ...) -> None: ...

class SetKillSwitchRequest(_message.Message):
    __slots__ = ("scope", "value", "reason")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    scope: str
    value: str
    reason: str
    def __init__(self, scope: _Optional[str] = ..., value: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ClearKillSwitchRequest(_message.Message):
    __slots__ = ("id", "scope", "value")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    id: str
    scope: str
    value: str
    def __init__(self, id: _Optional[str] = ..., scope: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class ListKillSwitchesRequest(_message.Message):
    __slots__ = ("include_cleared",)
    INCLUDE_CLEARED_FIELD_NUMBER: _ClassVar[int]
    include_cleared: bool
    def __init__(self, include_cleared: _Optional[bool] = ...) -> None: ...

class ListKillSwitchesResponse(_message.Message):
    __slots__ = ("kill_switches",)
    KILL_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    kill_switches: _containers.RepeatedCompositeFieldContainer[KillSwitch]
    def __init__(self, kill_switches: _Optional[_Iterable[_Union[KillSwitch, _Mapping]]] = ...) -> None: ...

class BundleInfo(_message.Message):
    __slots__ = ("name", "version", "revision", "loaded_at", "activated_at", "source", "signed", "active", "shadow")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    revision: str
    loaded_at: _timestamp_pb2.Timestamp
    activated_at: _timestamp_pb2.Timestamp
    source: str
    signed: bool
    active: bool
    shadow: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., revision: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., activated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., signed: _Optional[bool] = ..., active: _Optional[bool] = ..., shadow: _Optional[bool] = ...) -> None: ...

class ActivateBundleRequest(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: str
    def __init__(self, revision: _Optional[str] = ...) -> None: ...

class RollbackBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetShadowBundleRequest(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: str
    def __init__(self, revision: _Optional[str] = ...) -> None: ...

class ListBundlesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBundlesResponse(_message.Message):
    __slots__ = ("bundles",)
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[BundleInfo]
    def __init__(self, bundles: _Optional[_Iterable[_Union[BundleInfo, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("active", "shadow", "last_reload_error", "last_reload_at", "decisions_by_outcome", "started_at", "instance", "active_kill_switches", "budgets")
    class DecisionsByOutcomeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    LAST_RELOAD_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_RELOAD_AT_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_BY_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_KILL_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    active: BundleInfo
    shadow: BundleInfo
    last_reload_error: str
    last_reload_at: _timestamp_pb2.Timestamp
    decisions_by_outcome: _containers.ScalarMap[str, int]
    started_at: _timestamp_pb2.Timestamp
    instance: str
    active_kill_switches: int
    budgets: _containers.RepeatedCompositeFieldContainer[BudgetStatus]
    def __init__(self, active: _Optional[_Union[BundleInfo, _Mapping]] = ..., shadow: _Optional[_Union[BundleInfo, _Mapping]] = ..., last_reload_error: _Optional[str] = ..., last_reload_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decisions_by_outcome: _Optional[_Mapping[str, int]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., instance: _Optional[str] = ..., active_kill_switches: _Optional[int] = ..., budgets: _Optional[_Iterable[_Union[BudgetStatus, _Mapping]]] = ...) -> None: ...

class BudgetStatus(_message.Message):
    __slots__ = ("scope", "scope_key", "window", "window_start", "limit", "spent", "reserved", "remaining")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_KEY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    scope: str
    scope_key: str
    window: str
    window_start: int
    limit: float
    spent: float
    reserved: float
    remaining: float
    def __init__(self, scope: _Optional[str] = ..., scope_key: _Optional[str] = ..., window: _Optional[str] = ..., window_start: _Optional[int] = ..., limit: _Optional[float] = ..., spent: _Optional[float] = ..., reserved: _Optional[float] = ..., remaining: _Optional[float] = ...) -> None: ...

class DecisionFilter(_message.Message):
    __slots__ = ("agent_id", "team", "tool_name", "outcome", "rule_id", "session_id")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    team: str
    tool_name: str
    outcome: Outcome
    rule_id: str
    session_id: str
    def __init__(self, agent_id: _Optional[str] = ..., team: _Optional[str] = ..., tool_name: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., rule_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class ListDecisionsRequest(_message.Message):
    __slots__ = ("filter", "after_id", "before_id", "limit", "newest_first")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    BEFORE_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    filter: DecisionFilter
    after_id: str
    before_id: str
    limit: int
    newest_first: bool
    def __init__(self, filter: _Optional[_Union[DecisionFilter, _Mapping]] = ..., after_id: _Optional[str] = ..., before_id: _Optional[str] = ..., limit: _Optional[int] = ..., newest_first: _Optional[bool] = ...) -> None: ...

class ListDecisionsResponse(_message.Message):
    __slots__ = ("decisions", "next_after_id")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[DecisionRecord]
    next_after_id: str
    def __init__(self, decisions: _Optional[_Iterable[_Union[DecisionRecord, _Mapping]]] = ..., next_after_id: _Optional[str] = ...) -> None: ...

class WatchDecisionsRequest(_message.Message):
    __slots__ = ("after_id", "filter")
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    after_id: str
    filter: DecisionFilter
    def __init__(self, after_id: _Optional[str] = ..., filter: _Optional[_Union[DecisionFilter, _Mapping]] = ...) -> None: ...

class WatchDecisionsResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[DecisionRecord]
    def __init__(self, decisions: _Optional[_Iterable[_Union[DecisionRecord, _Mapping]]] = ...) -> None: ...

class BudgetUsage(_message.Message):
    __slots__ = ("scope", "scope_key", "window", "window_start", "limit", "spent", "reserved", "remaining")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_KEY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    scope: str
    scope_key: str
    window: str
    window_start: _timestamp_pb2.Timestamp
    limit: float
    spent: float
    reserved: float
    remaining: float
    def __init__(self, scope: _Optional[str] = ..., scope_key: _Optional[str] = ..., window: _Optional[str] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[float] = ..., spent: _Optional[float] = ..., reserved: _Optional[float] = ..., remaining: _Optional[float] = ...) -> None: ...

class ListBudgetsRequest(_message.Message):
    __slots__ = ("scope",)
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    scope: str
    def __init__(self, scope: _Optional[str] = ...) -> None: ...

class ListBudgetsResponse(_message.Message):
    __slots__ = ("budgets",)
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    budgets: _containers.RepeatedCompositeFieldContainer[BudgetUsage]
    def __init__(self, budgets: _Optional[_Iterable[_Union[BudgetUsage, _Mapping]]] = ...) -> None: ...

class ShadowDiffRequest(_message.Message):
    __slots__ = ("limit", "examples")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    limit: int
    examples: int
    def __init__(self, limit: _Optional[int] = ..., examples: _Optional[int] = ...) -> None: ...

class ShadowDiffCount(_message.Message):
    __slots__ = ("outcome", "shadow_outcome", "count")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SHADOW_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    outcome: Outcome
    shadow_outcome: Outcome
    count: int
    def __init__(self, outcome: _Optional[_Union[Outcome, str]] = ..., shadow_outcome: _Optional[_Union[Outcome, str]] = ..., count: _Optional[int] = ...) -> None: ...

class ShadowDiffResponse(_message.Message):
    __slots__ = ("active", "shadow", "compared", "changed", "counts", "examples")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    active: BundleRef
    shadow: BundleRef
    compared: int
    changed: int
    counts: _containers.RepeatedCompositeFieldContainer[ShadowDiffCount]
    examples: _containers.RepeatedCompositeFieldContainer[DecisionRecord]
    def __init__(self, active: _Optional[_Union[BundleRef, _Mapping]] = ..., shadow: _Optional[_Union[BundleRef, _Mapping]] = ..., compared: _Optional[int] = ..., changed: _Optional[int] = ..., counts: _Optional[_Iterable[_Union[ShadowDiffCount, _Mapping]]] = ..., examples: _Optional[_Iterable[_Union[DecisionRecord, _Mapping]]] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WhoAmIResponse(_message.Message):
    __slots__ = ("principal", "roles", "groups", "authenticated")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    principal: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    groups: _containers.RepeatedScalarFieldContainer[str]
    authenticated: bool
    def __init__(self, principal: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., groups: _Optional[_Iterable[str]] = ..., authenticated: _Optional[bool] = ...) -> None: ...
