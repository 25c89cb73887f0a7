"""Settings: read once from the environment / .env, typed, secrets masked, failing fast."""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_PROBE_PORT = 9090
# The examples' environment `make run` prepares (numpy, scikit-learn): the default JOB_PYTHON
JOBS_ENV_PYTHON = Path(".venv-jobs", "bin", "python")


def bundled(package: str) -> Path:
    """The folder of a data package installed with the bot (`manifests`, `examples`)."""
    folder = resources.files(package)
    if not isinstance(folder, Path):  # a zip import: pip always installs unpacked
        raise RuntimeError(f"the {package} package must be installed unpacked, as pip does")
    return folder


class Settings(BaseSettings):
    """Every knob of the bot. Names are the environment variables (case-insensitive)."""

    # An error names the variable, never its value: DATABASE_URL and the tokens hold secrets.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, hide_input_in_errors=True
    )

    # Slack (issue: Slack app). Without tokens `run` starts the console.
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_mode: Literal["socket", "http"] = "socket"
    slack_api_url: str = "https://slack.com/api/"
    slack_command: str = "/batchai"
    slack_post_interval: float = Field(1.0, ge=0, le=60)  # seconds between posts per channel
    slack_updates_per_minute: float = Field(50.0, gt=0, le=1000)  # chat.update, per workspace
    # How long a quick command may run for its answer to go in the ack (Slack waits 3 s for
    # one); past it the ack says "working on it…" and the answer comes on response_url.
    # The default is handlers.slack.slash.ANSWER_BUDGET (not imported here: it loads Bolt).
    slack_ack_answer_seconds: float = Field(2.0, ge=0, le=2.5)

    # Authorization (comma-separated Slack IDs; empty = everyone / everywhere)
    allowed_channels: Annotated[frozenset[str], NoDecode] = frozenset()
    allowed_users: Annotated[frozenset[str], NoDecode] = frozenset()
    admin_users: Annotated[frozenset[str], NoDecode] = frozenset()
    # Slack workspaces (T…) or Grid orgs (E…) served; empty: the bot token's own (auth.test)
    allowed_teams: Annotated[frozenset[str], NoDecode] = frozenset()
    # Key Vaults a job.json may reference (read with the bot's identity): `vault` for every
    # channel, `vault:C1|C2` for those channels' jobs; empty: no job may name a vault
    key_vaults: str = ""

    # GPU spend: the approval policy file (none: nobody needs approval) and where requests go
    approvals_file: Path | None = None
    approvals_channel: str | None = None
    price_region: str = "eastus"
    price_refresh_hours: float = Field(24.0, ge=0)  # 0: never ask the Azure Retail Prices API
    prices_api_url: str = "https://prices.azure.com/api/retail/prices"

    # Where things live
    batchai_backend: Literal["local", "azure"] = "local"
    batchai_data_dir: Path = Path(".batchai")
    # Local GPU sizes: auto checks them against the nvidia-smi on PATH when there is one (a
    # machine without one runs them on its CPU); require also fails them without; off: never.
    local_gpu_check: Literal["auto", "require", "off"] = "auto"
    # How often each node runner samples nvidia-smi while a job runs (0: never)
    gpu_sample_seconds: float = Field(30.0, ge=0, le=3600)
    database_url: str | None = None  # default: sqlite+aiosqlite:///<data dir>/batchai.db
    secrets_key: SecretStr | None = None  # seals secrets in the store; default: <data dir> file
    secrets_key_previous: SecretStr | None = None  # the key being rotated out
    manifest_dir: Path = Field(default_factory=lambda: bundled("manifests"))
    examples_dir: Path = Field(default_factory=lambda: bundled("examples"))
    # The interpreter of local jobs' Python scripts, so that the bot's own install need not carry
    # what the jobs import; default: .venv-jobs/bin/python when it exists, else the bot's own
    job_python: str | None = None

    # Batch AI defaults for commands that omit -g / -w / -e
    resource_group: str = "batchai"
    workspace: str = "default"
    experiment: str = "default"
    # fills <AZURE_BATCHAI_STORAGE_ACCOUNT> in job files; az's own variable name works too
    storage_account: str = Field(
        "local", validation_alias=AliasChoices("storage_account", "azure_batchai_storage_account")
    )
    share_name: str = "batchaiquickstart"  # the local share the examples are copied into

    # Azure backend (BATCHAI_BACKEND=azure); the credential is whatever DefaultAzureCredential finds
    azure_subscription_id: str | None = None
    azure_resource_group: str | None = None
    azure_location: str | None = None
    azure_subnet_id: str | None = None  # /subscriptions/…/virtualNetworks/<vnet>/subnets/<subnet>
    azure_storage_account: str | None = None
    azure_storage_key: SecretStr | None = None
    azure_share: str = "batchai-bot"  # the bot's control share: no job may mount it
    azure_cloud: Literal["public", "china", "usgov"] = "public"
    azure_arm_endpoint: str | None = None  # overrides the cloud's Resource Manager endpoint
    azure_storage_endpoint_suffix: str | None = None  # overrides the cloud's, e.g. core.windows.net
    azure_storage_endpoint: str | None = None  # a full Files account URL (a private endpoint)
    azure_ca_bundle: str | None = None  # a CA file for Resource Manager (a TLS-inspecting proxy)
    azure_ssh_public_key: SecretStr | None = None  # put on the nodes' admin user
    azure_admin_user: str = "batchai"
    azure_admin_password: SecretStr | None = None  # only if you must; an SSH key is better
    azure_mount_root: str = "/mnt/batch/tasks/shared/LS_root/mounts"  # $AZ_BATCHAI_MOUNT_ROOT
    azure_control_mount: str = "/mnt/batchai-bot"  # where nodes mount AZURE_SHARE
    azure_job_temp_root: str = "/mnt/batch/tasks/shared/LS_root/jobs"  # node-local job temp
    azure_share_mount_root: str = "/mnt/batchai-shares"  # where nodes mount job-level shares
    # The nodes' image: the interpreter of the node runner and python jobs, and the jobs' PATH.
    azure_node_python: str = "python3"
    azure_node_path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    azure_polling_interval: float = Field(15.0, ge=0, le=300)  # between long-operation polls
    azure_check_vm_size: str = "Standard_NC4as_T4_v3"  # the size `batchai-bot check` looks at

    # Web app: /healthz and signed /files links
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = None  # base of download links; default http://<host>:<port>
    link_secret: SecretStr | None = None  # default: a random key kept in the data dir
    link_ttl_minutes: int = Field(60, ge=5, le=600)
    # /readyz and /metrics: their own listener, loopback unless said otherwise
    probe_host: str = "127.0.0.1"
    probe_port: int | None = Field(None, ge=0, le=65535)  # default 9090; 0 (free) when PORT=0

    # Periodic work
    poll_seconds: float = Field(1.0, gt=0, le=60)
    poll_concurrency: int = Field(32, ge=1, le=512)  # jobs polled, and jobs tailed, at once
    # PostgreSQL: how often a standby asks for the leader lease (and the leader confirms it)
    leader_retry_seconds: float = Field(5.0, gt=0, le=30)
    idle_timeout_minutes: int = Field(15, ge=0, le=10080)  # per cluster: --idle-timeout; 0 never
    idle_warning_minutes: int = Field(5, ge=1, le=1440)  # the warning's lead before scale-down

    # Console
    console_channel: str = "console"
    console_user: str = "console-user"

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"  # json: one object per line, for a log shipper

    @field_validator(
        "allowed_channels", "allowed_users", "admin_users", "allowed_teams", mode="before"
    )
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        """The store needs an async driver: a plain postgres:// URL gets asyncpg."""
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        if scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
            return f"postgresql+asyncpg://{rest}"
        if scheme in ("sqlite", "sqlite+aiosqlite") and sep:
            return f"sqlite+aiosqlite://{rest}"
        raise ValueError(
            "DATABASE_URL must start with postgresql+asyncpg:// (or postgres://) "
            "or sqlite+aiosqlite:///"
        )

    @field_validator("job_python")
    @classmethod
    def _interpreter(cls, value: str | None) -> str | None:
        """A name on PATH or a path; made absolute, as jobs start in their own directories (not
        resolved: a venv's python is a symlink whose target would leave the venv)."""
        if value is None:
            return None
        found = shutil.which(value)
        if found is None:
            raise ValueError(f"{value} is not an executable file or a program on PATH")
        return os.path.abspath(found)

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.job_python is None:
            jobs_env = JOBS_ENV_PYTHON.is_file() and os.access(JOBS_ENV_PYTHON, os.X_OK)
            self.job_python = str(JOBS_ENV_PYTHON.absolute()) if jobs_env else sys.executable
        if self.database_url is None:
            self.database_url = f"sqlite+aiosqlite:///{self.batchai_data_dir / 'batchai.db'}"
        if self.probe_port is None:
            self.probe_port = 0 if self.port == 0 else DEFAULT_PROBE_PORT
        if self.batchai_backend == "azure":
            required = {
                "AZURE_SUBSCRIPTION_ID": self.azure_subscription_id,
                "AZURE_RESOURCE_GROUP": self.azure_resource_group,
                "AZURE_LOCATION": self.azure_location,
                "AZURE_SUBNET_ID": self.azure_subnet_id,
                "AZURE_STORAGE_ACCOUNT": self.azure_storage_account,
                "AZURE_STORAGE_KEY": self.azure_storage_key,
            }
            missing = [name for name, value in required.items() if not value]
            if missing:
                raise ValueError(f"BATCHAI_BACKEND=azure needs {', '.join(missing)}")
            if self.storage_account == "local" and self.azure_storage_account:
                self.storage_account = self.azure_storage_account
        if self.approvals_file is not None and not self.admin_users:
            # An empty admin list makes everyone an admin (budget set, any cluster size).
            raise ValueError(
                "APPROVALS_FILE needs ADMIN_USERS: without it everyone is an admin and may set "
                "budgets; set ADMIN_USERS to the Slack IDs of the admins (e.g. U0123LEAD)"
            )
        return self

    @property
    def slack_configured(self) -> bool:
        return self.slack_bot_token is not None

    @property
    def probes_apart(self) -> bool:
        """Probes get their own listener unless PROBE_HOST:PROBE_PORT is HOST:PORT itself."""
        return (self.probe_host, self.probe_port) != (self.host, self.port) or self.port == 0

    @property
    def job_interpreter(self) -> str:
        assert self.job_python is not None
        return self.job_python

    @property
    def db_url(self) -> str:
        assert self.database_url is not None
        return self.database_url

    def files_base_url(self, bound_port: int | None = None) -> str:
        base = self.public_url or f"http://{self.host}:{bound_port or self.port}"
        return base.rstrip("/") + "/files"
