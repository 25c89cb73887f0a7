"""Jobs on a scale set's nodes by managed run command: the launch (once per node, completed,
never repeated, after a restart), the stop (a synchronous run command with its own timeout, the
TERMINATE file behind it), the instance view of a launch that never reported, and the clean-up.

A node's run command `job-<id>-<rank>` (async) starts the node runner (`noderun.runner`, stdlib
only) under systemd-run; its spec (secrets too) travels in the command's protected parameters,
and the node runs the runner only when its sha256 is the bot's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.compute.models import VirtualMachineRunCommand

from services.backends.azure import node
from services.backends.azure.config import AzureConfig
from services.backends.azure.control import ControlRecords, JobInfo
from services.backends.azure.errors import azure_errors
from services.backends.azure.jobplan import JobPlanner, node_dirs
from services.backends.azure.keyvault import KeyVaultSecrets, with_vault_secrets
from services.backends.azure.preflight import Preflight
from services.backends.azure.scalesets import ScaleSets, Snapshot
from services.backends.azure.sizes import wire_text
from services.backends.noderun import runner as noderunner
from services.backends.noderun.launch import check_node_count, layout_to_json, share_layout
from services.backends.noderun.registry import RegistryLogin, registry_login, with_password
from services.backends.noderun.runner import RunnerSpec
from services.backends.noderun.specs import DEADLINE, TERMINATE
from services.core.errors import BatchAIError, Conflict, NotFound, TransientError, UserError
from services.core.ports import LaunchRequest, LaunchResult
from services.jobspec import LaunchPlan
from services.models import NodeOutput

log = logging.getLogger(__name__)

RUN_COMMAND_OUTPUT_LIMIT = 4096  # Azure keeps the last 4 KB of a run command's output and error
MAX_SPEC_BYTES = 96 * 1024  # a node spec rides in one environment variable (128 KiB on Linux)
_TERMINAL_RC = {"Failed", "TimedOut", "Canceled"}


class RunCommands:
    """Start, stop and clean up the run commands of jobs; the job's control files on the share."""

    def __init__(
        self,
        config: AzureConfig,
        *,
        compute: ComputeManagementClient,
        control: ControlRecords,
        scalesets: ScaleSets,
        preflight: Preflight,
        planner: JobPlanner,
        key_vault: KeyVaultSecrets,
        wall_time: Callable[[], float],
        node_states: Callable[[str, Snapshot], Awaitable[list[tuple[str, str]]]],
    ) -> None:
        self._node_states = node_states
        self._config = config
        self._compute = compute
        self._control = control
        self._scalesets = scalesets
        self._preflight = preflight
        self._planner = planner
        self._key_vault = key_vault
        self._now = wall_time
        self._rg = config.resource_group
        self._locks: dict[str, asyncio.Lock] = {}

    async def start_job(self, request: LaunchRequest) -> LaunchResult:
        lock = self._locks.setdefault(request.job_id, asyncio.Lock())
        async with lock:
            job = await self._control.load(request.job_id)
            if job is not None and job.final is not None:
                return job.result
            # Before anything is written or started: a registry password that cannot be read
            # (a wrong Key Vault reference) refuses the job in one line with nothing running.
            request, login = await self._registry(request)
            request = await with_vault_secrets(request, self._key_vault)
            if job is None:
                job = await self._prepare(request)
            await self._launch_missing(job, request, login)
            return job.result

    async def _registry(self, request: LaunchRequest) -> tuple[LaunchRequest, RegistryLogin | None]:
        """The container registry login of the job, its password read from Key Vault (with the
        bot's credential) when the job.json gives a reference."""
        login = registry_login(request)
        if login is None or login.secret is None:
            return request, login
        password = await self._key_vault.get(login.secret, "the registry password")
        return with_password(request, password), RegistryLogin(
            login.server, login.username, password
        )

    async def _prepare(self, request: LaunchRequest) -> JobInfo:
        spec, c = request.spec, request.cluster
        check_node_count(request)
        links, mount_notes = self._planner.job_mounts(request.job_id, spec)
        snap = await self._scalesets.snapshot(c.name, fresh=True)
        if not snap.exists:
            raise NotFound(f"cluster {c.name} does not exist")
        if any(i < 0 or i >= len(snap.vms) for i in request.nodes):
            raise Conflict(f"nodes {list(request.nodes)} are not all on {c.name}")
        vms = [snap.vms[i] for i in request.nodes]
        # Never a VM another live job holds: positions move when a VM before them is deleted
        # (evicted), and the dispatcher's may be a poll old.
        held = {
            instance: other.job_id
            for other in self._control.jobs.values()
            if other.cluster == c.name and other.final is None and other.job_id != request.job_id
            for instance in other.instances
        }
        taken = [f"{vm.name} (job {held[vm.instance_id]})" for vm in vms if vm.instance_id in held]
        if taken:
            raise TransientError(f"{', '.join(taken)} still running; the job starts when free")
        # A job is never started on a node that failed its health check (nor on one whose
        # check has not reported yet: it waits, as for a node still booting).
        states = await self._node_states(c.name, snap)
        picked = [(vm, *states[i]) for vm, i in zip(vms, request.nodes, strict=True)]
        broken = [f"{vm.name} ({why})" for vm, st, why in picked if st in ("unusable", "leaving")]
        if broken:
            raise Conflict(f"cannot start on {', '.join(broken)}")
        waiting = [vm.name for vm, st, _ in picked if st == "preparing"]
        if waiting:
            raise TransientError(f"{', '.join(waiting)} still preparing; the job starts when ready")
        ips = await self._scalesets.private_ips(c.name)
        missing = [vm.name for vm in vms if vm.instance_id not in ips]
        if missing:
            raise Conflict(f"no private IP yet for {', '.join(missing)}; try again shortly")
        sku = (await self._preflight.skus_in_region()).get(c.vm_size.lower())
        gpus = sku.gpus if sku else 0
        rdma = sku.rdma if sku else False
        hosts = [(vm.name, ips[vm.instance_id]) for vm in vms]
        plan = self._planner.plan(request, hosts, gpus, rdma=rdma)
        notes = [*plan.warnings, *mount_notes]
        containers = self._planner.job_containers(request.job_id, spec)
        layout = share_layout(
            plan, lambda path: self._planner.on_share(c, path, links, containers), notes
        )
        journals = tuple(
            self._control.loc("jobs", request.job_id, f"node-{i}", noderunner.JOURNAL)
            for i in range(len(vms))
        )
        layout = replace(layout, journals=journals) if layout.stdouterr is not None else layout
        result = LaunchResult(layout=layout, notes=tuple(notes))
        job = JobInfo(
            job_id=request.job_id,
            cluster=c.name,
            instances=[vm.instance_id for vm in vms],
            result=result,
            launched_at=self._now(),
            spot=c.vm_priority == "lowpriority",
            uuid=request.uuid,
        )
        # What a relaunch needs besides the job's own spec (which comes from the store): no
        # script text and no secret; sealed, so an altered record is refused, never used.
        launch = {
            "job_id": job.job_id,
            "cluster": job.cluster,
            "instances": job.instances,
            "launched_at": job.launched_at,
            "spot": job.spot,
            "uuid": job.uuid,
            "hosts": [list(h) for h in hosts],
            "gpus": gpus,
            "rdma": rdma,
            "deadline": self._now() + plan.max_wall_clock.total_seconds(),
            "result": layout_to_json(result),
        }
        # launch.json last: from here on a repeated start_job only completes this launch.
        await self._control.write(
            self._control.loc("jobs", job.job_id, "launch.json"), self._control.seal(launch)
        )
        self._control.jobs[job.job_id] = job
        return job

    async def _ensure_runner(self) -> str:
        """The node runner's source on the share, checked (and rewritten if it differs) at every
        launch; its sha256, which the launch script checks again on the node."""
        source = Path(noderunner.__file__).read_bytes()
        loc = self._control.loc("noderunner.py")
        entry = await self._control.share.stat(loc)
        current = None
        if entry is not None and entry.size == len(source):
            current = await self._control.share.read_range(loc, 0, entry.size)
        if current != source:
            await self._control.share.write_file(loc, source)
        return hashlib.sha256(source).hexdigest()

    async def _launch_missing(
        self, job: JobInfo, request: LaunchRequest, login: RegistryLogin | None
    ) -> None:
        """Create the run command of every node that has not started (the script skips a node
        whose runner already began, and systemd refuses a second unit of the same name). The
        scripts are made from the job's spec and the sealed launch record, nothing else."""
        if job.final is not None:
            return
        raw = await self._control.read(self._control.loc("jobs", job.job_id, "launch.json"))
        if raw is None:
            raise NotFound(f"job {job.job_id} has no launch record")
        record = self._control.unseal(raw, f"the launch record of job {job.job_id}")
        hosts = [(str(name), str(ip)) for name, ip in record["hosts"]]
        plan = self._planner.plan(
            request, hosts, int(record["gpus"]), rdma=bool(record.get("rdma", False))
        )
        statuses = await asyncio.gather(
            *(self._control.node_files(job.job_id, i) for i in range(len(job.instances)))
        )
        todo = [
            i
            for i, names in enumerate(statuses)
            if noderunner.PID not in names and noderunner.EXIT_CODE not in names
        ]
        if not todo:
            return
        runner_sha = await self._ensure_runner()
        links, _ = self._planner.job_mounts(job.job_id, request.spec)
        deadline = float(record["deadline"])
        await asyncio.gather(
            *(
                self._run_command(
                    job,
                    i,
                    plan,
                    self._planner.node_spec(request, plan, deadline, i),
                    runner_sha,
                    [
                        *self._planner.mount_prelude(links),
                        *self._planner.extra_prelude(job.job_id, request.spec),
                    ],
                    login,
                )
                for i in todo
            )
        )

    async def _run_command(
        self,
        job: JobInfo,
        index: int,
        plan: LaunchPlan,
        spec: RunnerSpec,
        runner_sha: str,
        prelude: Sequence[str],
        login: RegistryLogin | None,
    ) -> None:
        encoded = base64.b64encode(json.dumps(spec.to_json()).encode()).decode()
        if len(encoded) > MAX_SPEC_BYTES:
            raise UserError(
                f"job {job.job_id}: its node spec is {len(encoded) // 1024} KiB, more than the "
                f"{MAX_SPEC_BYTES // 1024} KiB a launch can carry; shorten its environment"
            )
        script = node.launch_script(
            job_id=job.job_id,
            node_index=index,
            python=self._config.node_python,
            runner=self._control.node_path("noderunner.py"),
            runner_sha256=runner_sha,
            status_dir=self._control.node_path("jobs", job.job_id, f"node-{index}"),
            dirs=node_dirs(plan),
            host_file=plan.env["AZ_BATCHAI_MPI_HOST_FILE"],
            host_lines=plan.mpi_host_file_lines,
            owner=self._planner.job_owner(job.uuid),  # as node_spec's run_as: every attempt
            container=plan.container_image is not None,
            prelude=prelude,
            registry=(login.server, login.username) if login else None,
            image=plan.container_image,
        )
        # The spec, secrets included, and the registry password: write-only in ARM, environment
        # variables of the script on the node, then root-only files removed once read.
        protected = [{"name": node.SPEC_PARAMETER, "value": encoded}]
        if login is not None and login.password is not None:
            protected.append({"name": node.REGISTRY_PARAMETER, "value": login.password})
        body: dict[str, Any] = {
            "location": self._config.location,
            "properties": {
                "source": {"script": script},
                "protectedParameters": protected,
                "asyncExecution": True,
                "timeoutInSeconds": 600,
            },
        }
        name = f"job-{job.job_id}-{index}"
        async with azure_errors(f"start job {job.job_id} on node {index}"):
            poller = await self._compute.virtual_machine_scale_set_vm_run_commands.begin_create_or_update(  # noqa: E501
                self._rg, job.cluster, job.instances[index], name, VirtualMachineRunCommand(body)
            )
            await poller.result()

    async def launch_problem(self, job: JobInfo, index: int) -> str | None:
        name = f"job-{job.job_id}-{index}"
        try:
            async with azure_errors(f"read the run command of job {job.job_id}"):
                rc = await self._compute.virtual_machine_scale_set_vm_run_commands.get(
                    self._rg, job.cluster, job.instances[index], name, expand="instanceView"
                )
        except NotFound:
            if self._now() - job.launched_at > self._config.launch_grace:
                return f"the run command for node {index} is gone and the node never started"
            return None
        view = rc.instance_view
        state = wire_text(view.execution_state if view else None)
        exit_code = view.exit_code if view else None
        if state in _TERMINAL_RC or (state == "Succeeded" and exit_code not in (None, 0)):
            error = " ".join(str(view.error or view.execution_message or "").split())[-300:]
            return f"could not start node {index} ({state}, exit {exit_code}): {error}".rstrip(": ")
        if state == "Succeeded" and self._now() - job.launched_at > self._config.launch_grace:
            return f"node {index}: the launch ran but the node runner never reported"
        return None

    async def delete_run_command(self, job: JobInfo, index: int, name: str) -> None:
        try:
            async with azure_errors(f"delete run command {name}"):
                poller = await self._compute.virtual_machine_scale_set_vm_run_commands.begin_delete(
                    self._rg, job.cluster, job.instances[index], name
                )
                await poller.result()
        except NotFound:
            pass

    async def terminate_job(self, job_id: str) -> None:
        """TERMINATE on the share (a runner not yet started obeys it too), then stop the unit on
        every node. Repeated calls (each poll while terminating) cost nothing."""
        job = await self._control.load(job_id)
        if job is None or job.final is not None or job.terminated:
            return
        await self._control.write(self._control.loc("jobs", job_id, TERMINATE), "")
        job.terminated = True
        await asyncio.gather(*(self._stop_node(job, i) for i in range(len(job.instances))))

    async def _stop_node(self, job: JobInfo, index: int) -> None:
        name = f"stop-{job.job_id}-{index}"
        body: dict[str, Any] = {
            "location": self._config.location,
            "properties": {
                "source": {"script": node.stop_script(job.job_id, index)},
                "asyncExecution": False,
                "timeoutInSeconds": 120,
            },
        }
        try:
            async with (
                asyncio.timeout(self._config.stop_timeout),
                azure_errors(f"stop job {job.job_id} on node {index}"),
            ):
                poller = await self._compute.virtual_machine_scale_set_vm_run_commands.begin_create_or_update(  # noqa: E501
                    self._rg,
                    job.cluster,
                    job.instances[index],
                    name,
                    VirtualMachineRunCommand(body),
                )
                await poller.result()
        except NotFound:
            return  # the node is gone: nothing runs there
        except TimeoutError:
            log.warning("job %s: stop on node %d timed out; TERMINATE stops it", job.job_id, index)
            return
        except BatchAIError as err:
            # The TERMINATE file still stops the runner within a second of its next look.
            log.warning("job %s: stop on node %d failed: %s", job.job_id, index, err)
            return
        await self.delete_run_command(job, index, name)

    async def run_on_node(
        self, cluster: str, node_id: str, command: str, *, timeout: float, job_id: str | None
    ) -> NodeOutput:
        """`node exec`: a synchronous run command with a unique name on the node's instance,
        read back (Azure keeps the last 4 KB of its output) and deleted."""
        snap = await self._scalesets.snapshot(cluster, fresh=True)
        vm = next((v for v in snap.vms if v.name == node_id), None)
        if not snap.exists or vm is None:
            raise NotFound(f"cluster {cluster} has no node {node_id}")
        if job_id is not None:
            owner = self._planner.job_owner(job_id)
        else:
            gid = self._config.job_gid
            owner = None if gid is None else (node.EXEC_UID, gid)
        name = f"exec-{uuid.uuid4().hex[:12]}"
        body: dict[str, Any] = {
            "location": self._config.location,
            "properties": {
                "source": {
                    "script": node.exec_script(
                        mount_root=self._config.mount_root.rstrip("/"), owner=owner
                    )
                },
                "parameters": [{"name": node.EXEC_PARAMETER, "value": command}],
                "asyncExecution": False,
                "timeoutInSeconds": max(1, int(timeout)),
            },
        }
        ops = self._compute.virtual_machine_scale_set_vm_run_commands
        try:
            async with (
                asyncio.timeout(timeout + self._config.stop_timeout),
                azure_errors(f"run a command on node {node_id}"),
            ):
                poller = await ops.begin_create_or_update(
                    self._rg, cluster, vm.instance_id, name, VirtualMachineRunCommand(body)
                )
                await poller.result()
                rc = await ops.get(self._rg, cluster, vm.instance_id, name, expand="instanceView")
        except TimeoutError:
            raise TransientError(
                f"node {node_id} did not answer within {int(timeout)} s; try again"
            ) from None
        finally:
            with contextlib.suppress(BatchAIError):
                async with azure_errors(f"delete run command {name}"):
                    deleting = await ops.begin_delete(self._rg, cluster, vm.instance_id, name)
                    await deleting.result()
        view = rc.instance_view
        state = wire_text(view.execution_state if view else None)
        output = (view.output or "") if view else ""
        error = (view.error or "") if view else ""
        if error and output and not output.endswith("\n"):
            output += "\n"
        text = output + error  # the script's own errors (stderr of the command is in output)
        truncated = max(len(output.encode()), len(error.encode())) >= RUN_COMMAND_OUTPUT_LIMIT
        return NodeOutput(
            node_id=node_id,
            exit_code=None if state == "TimedOut" else (view.exit_code if view else None),
            output=text,
            truncated=truncated,
            timed_out=state == "TimedOut",
            limit="Azure returns only the last 4 KB of a run command's output" if truncated else "",
        )

    async def set_time_left(self, job_id: str, remaining: timedelta) -> None:
        """Move the wall-clock limit (an approved extension); the node runners re-read it."""
        job = await self._control.load(job_id)
        if job is not None and job.final is None:
            deadline = self._now() + remaining.total_seconds()
            await self._control.write(
                self._control.loc("jobs", job_id, DEADLINE), f"{deadline:.3f}\n"
            )
