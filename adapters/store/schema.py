"""The store's tables (SQLAlchemy 2 Core). Alembic migrations create them; a test keeps the two
equal (tests/test_store.py::test_schema_matches_the_models)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
UtcDateTime = sa.DateTime(timezone=True)

experiments = sa.Table(
    "experiments", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("spec_text", sa.Text, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("workdir", sa.Text, nullable=False),
    sa.Column("total_tasks", sa.Integer, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("flow_run_id", sa.String(36)),
    sa.Column("runner_pid", sa.Integer),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("started_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("plan", sa.JSON),
    sa.Column("owner", sa.String(200)),  # who submitted it (credential checks act for them)
    sa.Column("project", sa.String(200)),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("resumes", sa.Integer, nullable=False, server_default="0"),  # after crashes
    # The flow run that submitted it (a `spec` run): its resumption finds it by this.
    sa.Column("origin_flow_run_id", sa.String(36)),
    sa.Index("ix_experiments_created_at", "created_at"),
    sa.Index("ix_experiments_origin", "origin_flow_run_id", unique=True),
    sa.Index("ix_experiments_status", "status"),  # counted by /metrics at every scrape
)

tasks = sa.Table(
    "tasks", metadata,
    sa.Column("experiment_id", sa.String(36), sa.ForeignKey("experiments.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("instance_id", sa.String(300), primary_key=True),
    sa.Column("step", sa.String(200), nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("exit_code", sa.Integer),
    sa.Column("reason", sa.Text),
    sa.Column("resource", sa.String(200)),
    sa.Column("workdir", sa.Text, nullable=False),
    sa.Column("started_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    # What the last attempt used (migration 0015); NULL until it ends, or where unmeasured.
    sa.Column("wall_seconds", sa.Float),
    sa.Column("cpu_seconds", sa.Float),
    sa.Column("max_rss_bytes", sa.BigInteger),
    sa.Column("queue_seconds", sa.Float),
    sa.Column("script_hash", sa.String(64)),  # its step's script, for runtime history
    sa.Index("ix_tasks_state", "experiment_id", "step", "state"),
    sa.Index("ix_tasks_history", "script_hash", "state", "finished_at"),
)

# The instance-duration histogram (domain/usage.py's buckets), per resource, kept as instances
# end: /metrics reads a few rows, never every task.
instance_durations = sa.Table(
    "instance_durations", metadata,
    sa.Column("resource", sa.String(200), primary_key=True),
    sa.Column("bucket", sa.Integer, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("seconds", sa.Float, nullable=False, server_default="0"),
)

task_events = sa.Table(
    "task_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("experiment_id", sa.String(36),
              sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
    sa.Column("instance_id", sa.String(300), nullable=False),
    sa.Column("from_state", sa.String(16)),
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("message", sa.Text),
    sa.Index("ix_task_events_task", "experiment_id", "instance_id"),
)

audit_events = sa.Table(
    "audit_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(100), nullable=False),
    sa.Column("object", sa.String(400), nullable=False),
    sa.Column("correlation_id", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # allowed | denied | ok | error
    sa.Column("detail", sa.Text),  # never a secret
    sa.Index("ix_audit_events_correlation", "correlation_id"),
    sa.Index("ix_audit_events_actor_at", "actor", "at"),
)

# The permission graph as written through adapters.spicedb: the source an embedded SpiceDB
# (memory only) is rebuilt from in each process. A SpiceDB server keeps its own.
relationships = sa.Table(
    "relationships", metadata,
    sa.Column("object_type", sa.String(64), primary_key=True),
    sa.Column("object_id", sa.String(200), primary_key=True),
    sa.Column("relation", sa.String(64), primary_key=True),
    sa.Column("subject_type", sa.String(64), primary_key=True),
    sa.Column("subject_id", sa.String(200), primary_key=True),
    sa.Column("subject_relation", sa.String(64), primary_key=True),
)

# Which OpenBao path each credential id names; the secret itself never enters this database.
credentials = sa.Table(
    "credentials", metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("mount", sa.String(100), nullable=False),
    sa.Column("path", sa.String(400), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# A bundle: placed task instances of one step that one flow run in a resource's work pool runs
# inside one allocation (a job array, a process group over SSH, an indexed Job). Its flow run's
# parameters are the experiment and bundle ids only: everything else is read from here.
bundles = sa.Table(
    "bundles", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("experiment_id", sa.String(36),
              sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
    sa.Column("resource", sa.String(200), nullable=False),
    sa.Column("step", sa.String(200), nullable=False),
    sa.Column("instances", sa.JSON, nullable=False),  # [[index, attempt], ...] by position
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("flow_run_id", sa.String(36)),
    sa.Column("infrastructure", sa.JSON),  # job ids / process group, for cancel and follow-up
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("message", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("heartbeat_at", UtcDateTime),
    sa.Column("finished_at", UtcDateTime),
    sa.Index("ix_bundles_experiment", "experiment_id", "status"),
    sa.Index("ix_bundles_status", "status", "resource"),  # active ones, by resource
)

# What a worker saw happen to each instance of a bundle, in order; the experiment's flow reads
# these (after the last id it read) and turns them into task state transitions.
bundle_events = sa.Table(
    "bundle_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("experiment_id", sa.String(36),
              sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
    sa.Column("bundle_id", sa.String(36), sa.ForeignKey("bundles.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("exit_code", sa.Integer),
    sa.Column("message", sa.Text),
    sa.Column("at", UtcDateTime, nullable=False),
    # What the attempt used, with its end: Usage.to_line() (migration 0016).
    sa.Column("usage", sa.String(200)),
    sa.Index("ix_bundle_events_experiment", "experiment_id", "id"),
)

# Who a deployment of the experiment flow acts as: its service account, a member of exactly one
# project (same-project only), with the permission keys a person has there.
service_accounts = sa.Table(
    "service_accounts", metadata,
    sa.Column("deployment_id", sa.String(36), primary_key=True),
    sa.Column("deployment", sa.String(400), nullable=False),  # flow/name, for messages
    sa.Column("account", sa.String(200), nullable=False, unique=True),
    sa.Column("project", sa.String(200), nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# Who may sign in: people (an argon2 password hash, or none when an OIDC issuer vouches for
# them) and API service accounts (no password; API tokens; one project only).
accounts = sa.Table(
    "accounts", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # person | service
    sa.Column("project", sa.String(200)),  # a service account's only project
    sa.Column("password_hash", sa.Text),
    sa.Column("full_name", sa.String(200)),
    sa.Column("email", sa.String(320)),
    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# Refresh tokens and API tokens, by the sha256 of their secret part only (they are random and
# long, so a fast digest suffices); revoked ones stay, for the audit trail.
tokens = sa.Table(
    "tokens", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # refresh | api
    sa.Column("account", sa.String(200), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("label", sa.String(200)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime),
    sa.Column("revoked_at", UtcDateTime),
    sa.Index("ix_tokens_account", "account"),
)

# One row (id 1): bumped with every relationship written, so a long-lived process that keeps an
# embedded SpiceDB sees when another process changed the graph.
relationship_generation = sa.Table(
    "relationship_generation", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("value", sa.BigInteger, nullable=False),
)

# Facts about the store itself: `owner`, the OS login that created it (in local mode only its
# owner may act as another user; anyone else acts as their own login).
# A project's own row; its members and admins are relationships (SpiceDB).
projects = sa.Table(
    "projects", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("description", sa.Text),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

store_info = sa.Table(
    "store_info", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# An API client's Idempotency-Key, per identity: the experiment its first request created (a
# row without one is a request in flight).
idempotency_keys = sa.Table(
    "idempotency_keys", metadata,
    sa.Column("actor", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("experiment_id", sa.String(36)),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# Pilot mode: one attempt of one instance waiting for (or held by) an agent on a compute node.
# An agent holds an item by a lease named (id, epoch); every requeue bumps the epoch, so a late
# report on an old lease is refused.
work_items = sa.Table(
    "work_items", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("experiment_id", sa.String(36),
              sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
    sa.Column("instance_id", sa.String(300), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("resource", sa.String(200), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),  # domain.pilot.TaskPayload
    sa.Column("status", sa.String(16), nullable=False),  # READY | LEASED | DONE
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("agent_id", sa.String(64)),
    sa.Column("lease_expires_at", UtcDateTime),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("state", sa.String(16)),  # the last progress reported, or how it ended
    sa.Column("exit_code", sa.Integer),
    sa.Column("message", sa.Text),
    sa.Column("usage", sa.JSON),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime),
    sa.Index("ix_work_items_attempt", "experiment_id", "instance_id", "attempt", unique=True),
    sa.Index("ix_work_items_claim", "status", "resource", "id"),
    sa.Index("ix_work_items_agent", "agent_id", "status"),
)

# What happened to each work item, in the order the store recorded it: the experiment's flow
# reads these after its cursor. `state` NULL: the item went back to the queue.
pilot_events = sa.Table(
    "pilot_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("experiment_id", sa.String(36),
              sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("work_items.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("instance_id", sa.String(300), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16)),
    sa.Column("exit_code", sa.Integer),
    sa.Column("message", sa.Text),
    sa.Column("usage", sa.JSON),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index("ix_pilot_events_experiment", "experiment_id", "id"),
)

# Pilot agents as they registered, and when they were last heard of.
agents = sa.Table(
    "agents", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("resource", sa.String(200), nullable=False),
    sa.Column("experiments", sa.JSON, nullable=False),  # the experiment ids it may take
    sa.Column("hostname", sa.String(300), nullable=False),
    sa.Column("slots", sa.Integer, nullable=False),
    sa.Column("cores", sa.Integer, nullable=False, server_default="0"),
    sa.Column("memory_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("gpus", sa.Integer, nullable=False, server_default="0"),
    sa.Column("allocation_id", sa.String(200), nullable=False, server_default=""),
    sa.Column("status", sa.String(16), nullable=False),  # ACTIVE | GONE
    sa.Column("registered_at", UtcDateTime, nullable=False),
    sa.Column("heartbeat_at", UtcDateTime),
    sa.Column("stopped_reason", sa.Text),
    sa.Index("ix_agents_resource", "resource", "status"),
)

# The experiments each agent may take (its token's), one row each: found by index.
agent_experiments = sa.Table(
    "agent_experiments", metadata,
    sa.Column("agent_id", sa.String(64), sa.ForeignKey("agents.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("experiment_id", sa.String(64), primary_key=True),
    sa.Index("ix_agent_experiments_experiment", "experiment_id"),
)

# Data staging (issue 14): what each resource's content-addressed cache was asked for, and the
# files each step's storage mounts held when staged (their checksums feed lineage).
staging_totals = sa.Table(
    "staging_totals", metadata,
    sa.Column("resource", sa.String(200), primary_key=True),
    sa.Column("hits", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("misses", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_moved", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_saved", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("retries", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

staged_files = sa.Table(
    "staged_files", metadata,
    sa.Column("experiment_id", sa.String(36),
              sa.ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("step", sa.String(200), primary_key=True),
    sa.Column("mount", sa.Text, primary_key=True),  # the spec's "storage:/remote:./local"
    sa.Column("path", sa.Text, primary_key=True),  # under the mount's target
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("staged_at", UtcDateTime, nullable=False),
)

# Lineage of outputs (issue 14): one row per declared output of a completed instance, keyed by
# its stable id (domain/lineage.py); what it read is kept with it, as it was when read.
output_lineage = sa.Table(
    "output_lineage", metadata,
    sa.Column("output_id", sa.String(16), primary_key=True),
    sa.Column("experiment_id", sa.String(36),
              sa.ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False),
    sa.Column("instance_id", sa.String(300), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("path", sa.Text, nullable=False),  # in the experiment's directory
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("script_sha256", sa.String(64), nullable=False),
    sa.Column("parameters", sa.JSON, nullable=False),
    sa.Column("resource", sa.String(200), nullable=False),
    sa.Column("upstream", sa.JSON, nullable=False),  # [UpstreamInput as a dict]
    sa.Column("mounts", sa.JSON, nullable=False),  # [MountInput as a dict]
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    sa.Index("ix_output_lineage_path", "experiment_id", "path", unique=True),
)
