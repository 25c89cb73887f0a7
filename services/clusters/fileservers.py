"""FileServerService: NFS file servers (`az batchai file-server create/list/show/delete`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from services.clusters.files import MAX_DISK_GB, MAX_DISKS
from services.clusters.files import VM_SIZE_RE as _VM_SIZE_RE
from services.clusters.lifecycle import FileServerState, move_file_server
from services.clusters.names import check_admin_name
from services.core.errors import Conflict, NotAllowed, NotFound, UserError
from services.core.ports import Clock, StorageBackend
from services.core.suggest import did_you_mean
from services.jobs.sources import ConfigLoader
from services.jobspec import load_file_server_spec
from services.models import NAME_RE, Actor, FileServer
from services.spend.gate import SpendGate, refusal
from services.store import SqlStore


@dataclass(frozen=True)
class FileServerRequest:
    """A `file-server create` after parsing; None: the file-server JSON (or a default) decides."""

    name: str
    vm_size: str | None = None
    disk_count: int | None = None
    disk_size_gb: int | None = None
    storage_sku: str | None = None
    user_name: str | None = None
    subnet: str | None = None
    resource_group: str | None = None
    workspace: str | None = None
    config: object | None = None  # a ConfigSource


class FileServerLookup(Protocol):
    async def get_file_server(self, name: str) -> FileServer | None: ...

    async def list_file_servers(self) -> list[FileServer]: ...


async def check_ready(store: FileServerLookup, names: Iterable[str]) -> None:
    """Every file server named exists and is ready to mount (`file-server create` first)."""
    for name in names:
        server = await store.get_file_server(name)
        if server is None:
            known = [s.name for s in await store.list_file_servers()]
            raise NotFound(
                f"file server {name} not found{did_you_mean(name, known)}: "
                "create it with file-server create"
            )
        if server.state != FileServerState.SUCCEEDED:
            raise Conflict(f"file server {name} is {server.state}, not ready to mount")


class FileServerService:
    def __init__(
        self,
        *,
        store: SqlStore,
        backend: StorageBackend,
        clock: Clock,
        configs: ConfigLoader,
        resource_group: str,
        workspace: str,
        gate: SpendGate | None = None,
    ) -> None:
        self._gate = gate
        self._store = store
        self._backend = backend
        self._clock = clock
        self._configs = configs
        self._rg = resource_group
        self._ws = workspace

    async def create_file_server(self, request: FileServerRequest, *, actor: Actor) -> FileServer:
        server = self._build(request, actor)
        if await self._store.get_file_server(server.name) is not None:
            raise Conflict(f"file server {server.name} already exists")
        if self._gate is not None:  # a VM that runs until deleted: standing capacity
            commitment = self._gate.server(
                actor=actor,
                vm_size=server.vm_size,
                disks=server.disk_count,
                disk_gb=server.disk_size_gb,
                disk_sku=server.storage_sku,
            )
            why_not = refusal(await self._gate.assess(commitment, actor=actor))
            if why_not is not None:
                raise NotAllowed(why_not)
        await self._store.insert_file_server(server)  # stored before the VM is asked for
        try:
            address = await self._backend.create_file_server(server)
        except Exception as err:
            await self._store.update_file_server(
                move_file_server(server, FileServerState.FAILED, error=str(err))
            )
            raise
        ready = move_file_server(server, FileServerState.SUCCEEDED, address=address)
        await self._store.update_file_server(ready)
        return ready

    async def list_file_servers(self) -> list[FileServer]:
        return await self._store.list_file_servers()

    async def get_file_server(self, name: str, *, resource_group: str | None = None) -> FileServer:
        server = await self._store.get_file_server(name)
        if server is None or (
            resource_group is not None and resource_group.lower() != server.resource_group.lower()
        ):
            known = [s.name for s in await self._store.list_file_servers()]
            raise NotFound(f"file server {name} not found{did_you_mean(name, known)}")
        return server

    async def delete_file_server(self, name: str, *, resource_group: str | None = None) -> bool:
        """Deleting what is gone succeeds (False); a server a cluster mounts is refused."""
        server = await self._store.get_file_server(name)
        if server is None:
            return False
        await self.get_file_server(name, resource_group=resource_group)
        users = [
            c.name
            for c in await self._store.list_clusters()
            if any(m.kind == "nfs" and m.share == name for m in c.mounts)
        ]
        if users:
            raise Conflict(
                f"file server {name} is mounted by cluster {', '.join(users[:5])}; "
                "delete the cluster first"
            )
        await self._store.update_file_server(move_file_server(server, FileServerState.DELETING))
        await self._backend.delete_file_server(server)
        await self._store.delete_file_server(name)
        return True

    def _build(self, r: FileServerRequest, actor: Actor) -> FileServer:
        if not NAME_RE.match(r.name):
            raise UserError(f"file server name {r.name!r} must be 1-64 letters, digits, - or _")
        vm_size, count, size, sku, user = r.vm_size, r.disk_count, r.disk_size_gb, None, None
        if r.config is not None:
            text, label = self._configs.load(
                r.config,  # type: ignore[arg-type]
                may_read_paths=actor.may_read_paths,
                folder="fileservers",
            )
            p = load_file_server_spec(text, source=label).properties
            if p.subnet is not None and r.subnet is None:
                raise UserError("properties.subnet: " + self._subnet_refusal())
            vm_size = vm_size or p.vm_size
            count = count if count is not None else p.data_disks.disk_count
            size = size if size is not None else p.data_disks.disk_size_in_gb
            sku = p.data_disks.storage_account_type
            user = p.ssh_configuration.user_account_settings.admin_user_name
        if r.subnet is not None:
            raise UserError("--subnet: " + self._subnet_refusal())
        if not vm_size or count is None or size is None:
            raise UserError(
                "give -s/--vm-size, --disk-count and --disk-size (or a file-server JSON)"
            )
        if not _VM_SIZE_RE.match(vm_size):
            raise UserError(f"{vm_size!r} is not a VM size (e.g. Standard_D2s_v3)")
        if not 1 <= count <= MAX_DISKS:
            raise UserError(f"--disk-count must be from 1 to {MAX_DISKS}, not {count}")
        if not 1 <= size <= MAX_DISK_GB:
            raise UserError(f"--disk-size must be from 1 to {MAX_DISK_GB} GB, not {size}")
        admin = r.user_name or user or actor.user
        check_admin_name(admin)
        return FileServer(
            name=r.name,
            resource_group=r.resource_group or self._rg,
            workspace=r.workspace or self._ws,
            vm_size=vm_size,
            disk_count=count,
            disk_size_gb=size,
            storage_sku=r.storage_sku or sku or "Premium_LRS",
            admin_user=admin,
            state=FileServerState.CREATING.value,
            created_by=actor.user,
            created_at=self._clock.now(),
        )

    def _subnet_refusal(self) -> str:
        if self._backend.name == "local":
            return "the local backend's file servers are directories on this machine, in no subnet"
        return "the azure backend puts file servers in the bot's subnet (AZURE_SUBNET_ID)"
