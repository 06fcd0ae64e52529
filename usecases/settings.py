"""Configuration from `AIRAVATA_*` environment variables (pydantic-settings)."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIRAVATA_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".airavata")
    database_url: str | None = None  # default: SQLite under `home`
    max_instances: int = Field(1_000_000, ge=1)
    task_run_threshold: int = Field(500, ge=0)  # above it: one Prefect task run per step
    concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    cancel_poll_seconds: float = Field(1.0, gt=0)
    user: str = Field(default_factory=getpass.getuser, min_length=1)  # who acts (AIRAVATA_USER)
    openbao_url: str = "http://127.0.0.1:8200"
    # A secret: read from the environment only, never printed, logged or stored.
    openbao_token: SecretStr | None = None
    project: str = Field("default", min_length=1)  # where experiments go (AIRAVATA_PROJECT)
    # A SpiceDB server (production, docker-compose); unset: an embedded one rebuilt from the
    # store's journal in each process.
    spicedb_endpoint: str | None = None
    spicedb_token: SecretStr | None = None
    spicedb_insecure: bool = False  # plaintext gRPC, for a server on loopback
    # The embedded default (`airavata server start`): its listeners, all on 127.0.0.1.
    prefect_port: int = Field(4200, ge=1, le=65535)
    api_port: int = Field(8080, ge=1, le=65535)
    agent_port: int = Field(50051, ge=1, le=65535)
    # The Prefect server's own database (default: SQLite under `home`); PostgreSQL for more
    # than a few concurrent runs, e.g. postgresql+asyncpg://user@host/prefect
    prefect_database_url: str | None = None
    worker_limit: int | None = Field(None, ge=1)  # flow runs one worker runs at once
    # The REST API. `api_url` set (AIRAVATA_API_URL, or `airavata config set server URL`)
    # switches the CLI to server mode: it then talks to that API only.
    api_url: str | None = None
    # Signs access tokens (HS256); unset: a random key made on first use in `home`/api, 0600.
    jwt_secret: SecretStr | None = None
    # Signs pilot agents' tokens only; unset: derived from the key above. Where agents' tokens
    # are minted away from the server (a Kubernetes pod), that side holds this one alone
    # (`airavata server agent-key`), never the key that signs people's tokens.
    agent_key: SecretStr | None = None
    access_token_seconds: int = Field(900, ge=30)
    refresh_token_seconds: int = Field(14 * 24 * 3600, ge=60)
    api_token_days: int = Field(90, ge=1, le=3650)
    # An OIDC issuer vouches for people instead of local passwords (tokens checked against
    # its JWKS); the claim that names the user.
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None  # default: the issuer's discovery document says
    oidc_username_claim: str = "preferred_username"
    # Per identity, per minute: sign-in attempts and writes through the API.
    api_login_rate: int = Field(10, ge=1)
    api_write_rate: int = Field(300, ge=1)
    api_max_body_bytes: int = Field(1 << 20, ge=1024)  # request bodies; a spec's YAML included
    # GET /metrics (Prometheus): open when unset (bind the API to an address only the scraper
    # reaches); set, a scrape must carry `Authorization: Bearer <it>`.
    metrics_token: SecretStr | None = Field(None, min_length=1)
    # The scheduler service pilot agents pull from (gRPC, TLS). `agent_url` is where agents
    # reach it (host:port); default 127.0.0.1:`agent_port`. Unset cert/key: a CA made on first
    # start in `home`/agent-tls signs the service's certificate; set: the site's own.
    agent_url: str | None = None
    agent_host: str = "127.0.0.1"  # where the service listens
    agent_tls_cert: Path | None = None
    agent_tls_key: Path | None = None
    agent_tls_ca: Path | None = None  # what agents trust (with the site's own certificate)
    agent_lease_seconds: float = Field(30.0, gt=0)  # a lease not renewed within this is lost
    agent_heartbeat_seconds: float = Field(5.0, gt=0)
    agent_idle_seconds: float = Field(30.0, gt=0)  # an agent with nothing to do stops
    agent_slots: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    # How the `local` resource runs instances: `process` (each a child of the experiment's
    # flow) or `pilot` (agents pull them from the scheduler service, which must be running).
    local_mode: Literal["process", "pilot"] = "process"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'airavata.db'}"

    @property
    def agent_target(self) -> str:
        return self.agent_url or f"{self.agent_host}:{self.agent_port}"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"


def get_settings() -> Settings:
    return Settings()
