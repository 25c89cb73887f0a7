"""The tables, as SQLAlchemy Core metadata with the column types of rows.py; Alembic
migrations create them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    true,
)

from services.store.rows import (
    AttemptsJson,
    ConversationJson,
    DecimalText,
    LayoutJson,
    MountsJson,
    ProgressJson,
    SafeText,
    UtcDateTime,
)

metadata = MetaData()

# Ids of the ever-growing tables: BIGSERIAL on PostgreSQL (SERIAL ends at 2**31); on SQLite
# INTEGER, which is 64-bit there and must stay INTEGER to be the autoincrementing rowid.
ROW_ID = BigInteger().with_variant(Integer(), "sqlite")


clusters = Table(
    "clusters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("resource_group", String(90), nullable=False),
    Column("workspace", String(64), nullable=False),
    Column("vm_size", String(64), nullable=False),
    Column("image", Text, nullable=False),  # Text: PostgreSQL enforces VARCHAR lengths
    Column("vm_priority", String(16), nullable=False),
    Column("min_nodes", Integer, nullable=False),
    Column("max_nodes", Integer, nullable=False),
    Column("target_nodes", Integer, nullable=False),
    Column("autoscale", Boolean, nullable=False),
    Column("state", String(16), nullable=False),
    Column("mounts", MountsJson, nullable=False),
    Column("admin_user", String(64)),
    Column("setup_task", SafeText),
    # {"output", "suffix", "env": [[name, value]], "secrets": [[name, sealed value]]}
    Column("setup_task_spec", JSON),
    Column("created_by", String(64)),
    Column("created_at", UtcDateTime()),
    Column("conversation", ConversationJson),
    Column("error", SafeText),
    Column("idle_timeout_s", Integer),  # None: the bot's default idle timeout
    Column("idle_since", UtcDateTime()),
    Column("idle_warned_at", UtcDateTime()),
    Column("idle_keep_until", UtcDateTime()),
    Column("idle_warning", JSON),  # the pending warning: id, deadline, sizes, saving
    Column("unusable_nodes", JSON),  # [[node, reason], ...] failed health checks, announced
)

# Workspaces and experiments (2018-05-01 on): names are unique within their parent; the
# resource group is compared without case, as ARM does, by the repository.
workspaces = Table(
    "workspaces",
    metadata,
    Column("resource_group", String(90), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("location", String(40)),
    Column("created_by", String(64)),
    Column("created_at", UtcDateTime(), nullable=False),
)

experiments = Table(
    "experiments",
    metadata,
    Column("resource_group", String(90), primary_key=True),
    Column("workspace", String(64), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("created_by", String(64)),
    Column("created_at", UtcDateTime(), nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("seq", Integer, nullable=False),  # FIFO order of submission
    Column("name", String(64), nullable=False),
    Column("cluster", String(64), nullable=False),
    Column("resource_group", String(90), nullable=False),
    Column("workspace", String(64), nullable=False),
    Column("experiment", String(64), nullable=False),
    Column("state", String(20), nullable=False),
    Column("spec_json", SafeText, nullable=False),
    Column("node_count", Integer, nullable=False),
    Column("toolkit", String(16), nullable=False),
    Column("max_wall_clock_s", Integer, nullable=False),
    Column("requester", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("queued_at", UtcDateTime()),
    Column("started_at", UtcDateTime()),
    Column("ended_at", UtcDateTime()),
    Column("exit_code", Integer),
    Column("error", SafeText),
    Column("nodes", JSON, nullable=False),
    Column("layout", LayoutJson),
    Column("progress", ProgressJson),
    Column("last_metrics", JSON, nullable=False),
    Column("container_image", Text),  # digest-pinned references exceed 256
    Column("conversation", ConversationJson),
    Column("deleted", Boolean, nullable=False, server_default=false()),
    Column("node_rate", DecimalText),
    Column("wall_clock_warned_at", UtcDateTime()),
    Column("estimate", DecimalText),
    Column("max_retries", Integer),  # lost-node retries allowed; NULL: none (older rows)
    Column("attempts", AttemptsJson),  # the earlier attempts; NULL: none
    Column("gpu", JSON),  # the last GPU reading and since when every GPU idles
    Column("gpu_warning_id", String(32)),  # the one idle-GPU warning, once given
    Column("gpu_warned_at", UtcDateTime()),
    Column("gpu_warning_closed", String(16)),  # kept | stopped: how it was answered
    Column("sweep_id", String(32)),  # the sweep it is one point of; None: a job of its own
)
# A name is taken while a job of that name exists (Batch AI refused duplicates); delete frees it.
Index(
    "ix_jobs_live_name",
    jobs.c.name,
    unique=True,
    sqlite_where=jobs.c.deleted.is_(False),
    postgresql_where=jobs.c.deleted.is_(False),
)
Index("ix_jobs_cluster_state", jobs.c.cluster, jobs.c.state)
Index("ix_jobs_sweep", jobs.c.sweep_id)

# A sweep: its grid and metric; its jobs name it (jobs.sweep_id). Names are never reused.
sweeps = Table(
    "sweeps",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("requester", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("parameters", JSON, nullable=False),  # [[name, [values…]], …] in grid order
    Column("metric", String(72)),  # NAME:max | NAME:min; None: the logs' usual names
    Column("channel", String(64)),
    Column("cluster", String(64), nullable=False),
)

log_offsets = Table(
    "log_offsets",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("file", String(255), primary_key=True),
    Column("offset", BigInteger, nullable=False),
    Column("lines", Integer, nullable=False),
)

metrics = Table(
    "metrics",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("value", Float, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("job_id", String(32)),
    Column("cluster", String(64)),
    Column("payload", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("delivered_at", UtcDateTime()),
)
Index("ix_events_pending", events.c.delivered_at, events.c.id)

deliveries = Table(
    "deliveries",
    metadata,
    Column("key", String(128), primary_key=True),  # the notification's idempotency key
    Column("channel", String(64), nullable=False),
    Column("message_id", String(64), nullable=False),  # Slack ts
    Column("sent_at", UtcDateTime(), nullable=False),
)

audit = Table(
    "audit",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("channel", String(64)),
    Column("action", String(64), nullable=False),  # e.g. "job create", "denied: cluster delete"
    Column("target", String(128)),
    Column("outcome", String(16), nullable=False),  # allowed | denied | failed
    Column("detail", SafeText),
)
Index("ix_audit_at", audit.c.at)

approvals = Table(
    "approvals",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("job_id", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("requester", String(64), nullable=False),
    Column("channel", String(64)),
    Column("estimate", DecimalText, nullable=False),
    Column("formula", SafeText, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("required", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("decided_at", UtcDateTime()),
    Column("extra_hours", DecimalText),
    Column("month_spend", DecimalText),
    Column("budget", DecimalText),
)
Index("ix_approvals_state", approvals.c.state, approvals.c.expires_at)

votes = Table(
    "approval_votes",
    metadata,
    Column("approval_id", String(32), primary_key=True),
    Column("approver", String(64), primary_key=True),  # one vote per approver, ever
    Column("decision", String(8), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("reason", SafeText),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("job_id", String(32), nullable=False),
    Column("user", String(64), nullable=False),
    Column("channel", String(64)),
    Column("cluster", String(64), nullable=False),
    Column("vm_size", String(64), nullable=False),
    Column("nodes", Integer, nullable=False),
    Column("hours", DecimalText, nullable=False),
    Column("usd", DecimalText, nullable=False),
)
Index("ix_ledger_at", ledger.c.at)

budgets = Table(
    "budgets",
    metadata,
    Column("channel", String(64), primary_key=True),
    Column("monthly_usd", DecimalText, nullable=False),
    Column("set_by", String(64), nullable=False),
    Column("set_at", UtcDateTime(), nullable=False),
)

prices = Table(
    "prices",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("region", String(32), primary_key=True),
    Column("spot", Boolean, primary_key=True),
    Column("usd_per_hour", DecimalText, nullable=False),
    Column("fetched_at", UtcDateTime(), nullable=False),
    Column("source", String(256), nullable=False),
)

schedules = Table(
    "schedules",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(8), nullable=False),  # at | cron
    Column("expression", String(128), nullable=False),  # as the user typed it
    Column("timezone", String(64), nullable=False),
    Column("request", JSON, nullable=False),  # the job create request to replay
    Column("requester", String(64), nullable=False),
    Column("channel", String(64)),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("next_run_at", UtcDateTime()),  # None once an `at` schedule has fired
    Column("last_run_at", UtcDateTime()),
    Column("last_job_id", String(32)),
    Column("last_job_name", String(64)),
    Column("last_error", SafeText),
    Column("runs", Integer, nullable=False, server_default="0"),
    Column("active", Boolean, nullable=False, server_default=true()),
)
Index("ix_schedules_active", schedules.c.active, schedules.c.next_run_at)

# One row: a known text sealed with the key of the secret fields, so a start with another key
# stops before it could mix two keys in one database (see services/store/sealing.py).
secrets_check = Table(
    "secrets_check",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", Text, nullable=False),
)


file_servers = Table(
    "file_servers",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("resource_group", String(90), nullable=False),
    Column("workspace", String(64), nullable=False),
    Column("vm_size", String(64), nullable=False),
    Column("disk_count", Integer, nullable=False),
    Column("disk_size_gb", Integer, nullable=False),
    Column("storage_sku", String(16), nullable=False),
    Column("admin_user", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # creating | succeeded | failed | deleting
    Column("created_by", String(64)),
    Column("created_at", UtcDateTime()),
    Column("address", Text),  # private IP (azure) or directory (local)
    Column("export", Text, nullable=False),
    Column("error", SafeText),
)
