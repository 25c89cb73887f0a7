"""A fake Azure Resource Manager (Compute + a little Network) on 127.0.0.1 over TLS, with nodes.

The real `azure.mgmt.compute.aio` / `azure.mgmt.network.aio` clients talk to it:

    async with FakeArm(tmp_path / "nodes") as arm:
        client = ComputeManagementClient(
            FakeCredential(), arm.subscription, base_url=arm.base_url,
            connection_verify=arm.ca_path, polling_interval=0,
        )

Server: aiohttp HTTPS on 127.0.0.1, random port, a `trustme` CA (`ca_path`, a PEM file in a temp
dir) whose certificate names 127.0.0.1 and localhost. Every request needs
`Authorization: Bearer <TOKEN>` (what `FakeCredential.get_token` returns), else 401
AuthenticationFailed. The api-version must be the one azure-mgmt-compute 39 / azure-mgmt-network
send (`API_VERSIONS`), else 400 InvalidApiVersionParameter.

Operations (paths under /subscriptions/{sub}; an unknown subscription is 404 SubscriptionNotFound,
an unknown resource group 404 ResourceGroupNotFound):
- resourceGroups/{rg}: GET, HEAD.
- VM scale sets `.../Microsoft.Compute/virtualMachineScaleSets[/{name}]`: list in RG (and in the
  subscription), PUT (201
  create / 200 update, `Azure-AsyncOperation`), GET, PATCH (sku.capacity, tags, properties merged),
  DELETE (202 + `Azure-AsyncOperation` + `Location`; 204 when already gone), POST `/delete`
  (delete_instances). Checked
  as ARM does: location, the SKU exists in the region catalog and is not restricted (409
  SkuNotAvailable), vCPU quota on create and scale-up (409 OperationNotAllowed with the real
  message: the SKU family's quota and regional `cores`, or only `lowPriorityCores` for priority
  Spot/Low). GET never returns `adminPassword` nor extension `protectedSettings`; customData is
  returned (base64) as stored. The LRO finishes after `lro_polls` polls of the operation (or GETs
  of the resource) and once the instances it created finished provisioning; a failed setup
  extension fails it (VMExtensionProvisioningError) and leaves the set Failed.
- Instances: capacity changes add instances "0", "1", ... (never reused; scale-in removes the
  highest ids), computerName `<computerNamePrefix><6 base-36 digits>`, private IP 10.0.0.4, .5, ...
  `.../virtualMachines` (list, `$expand=instanceView`), `/virtualMachines/{id}` (GET, DELETE),
  `/virtualMachines/{id}/instanceView`. Statuses: ProvisioningState/creating (+ PowerState/starting
  until booted, see `instance_delay_polls` / `instance_delay_seconds`), then CustomScript
  extensions of the model run, then ProvisioningState/succeeded + PowerState/running; a failed
  extension gives ProvisioningState/failed/VMExtensionProvisioningError and its extension status
  `ProvisioningState/failed/<exit code>` with the CSE-style message.
- `.../virtualMachineScaleSets/{name}/networkInterfaces` (api 2018-10-01, what
  `network_interfaces.list_virtual_machine_scale_set_network_interfaces` calls): one NIC per
  instance, `properties.virtualMachine.id` naming the VMSS VM, ipConfigurations[].privateIPAddress.
- `.../Microsoft.Network/virtualNetworks/{vnet}/subnets/{subnet}` GET (known: `subnet_id`, and
  those given to `add_subnet`; else 404 NotFound).
- Managed run commands `/virtualMachines/{id}/runCommands[/{name}]`: PUT (LRO), GET (`$expand=
  instanceView`: executionState Pending/Running/Succeeded/Failed/TimedOut, exitCode, output and
  error = last 4,096 bytes, startTime, endTime), list, DELETE (kills a running script; 204 when
  already gone). At most 25
  per VM (409). A re-PUT with identical location+properties does not re-execute; different ones
  kill and re-run. `protectedParameters` / `runAsPassword` are never returned. With
  asyncExecution the LRO ends once the script started, otherwise when it ended; timeoutInSeconds
  kills it (TimedOut). Only `source.script` runs (scriptUri/commandId fail the execution).
- Action run command POST `/virtualMachines/{id}/runCommand` (RunShellScript; one at a time per VM,
  409 otherwise): 202, the result (ComponentStatus/StdOut|StdErr) at the Location URL.
- `/providers/Microsoft.Compute/locations/{loc}/usages` (current values from the instances that
  exist; limits from `set_quota`) and `/providers/Microsoft.Compute/skus` (api 2021-07-01;
  `$filter=location eq '...'`; catalog = tests/fixtures/azure/ListAvailableResourceSkusForARegion
  .json moved to `location`, plus every non-retired size in manifests/prices.json).

Nodes: instance `i` of scale set `s` is the directory `node_root/s/i/` (its `etc/hostname`
holds the computer name, as Azure's provisioning writes it). A script (run command or
extension) runs as `bash <file>` in its own session with cwd = HOME = TMPDIR = that directory,
FAKE_NODE_DIR and BATCHAI_NODE_ROOT = that directory, named parameters as environment variables
(nameless ones as arguments) and PATH = `<node>/bin` (a fake GPU driver, when given) +
`tests/fakes/arm_node` (stand-ins for systemd-run, systemctl, docker, mount, mountpoint, umount,
mount.cifs, apt-get; each says what it supports) + this PATH. A systemd-run unit is a
supervisor process (a child subreaper, so nothing it starts escapes it, even into a new session:
the unit's "cgroup") recorded in
`<node>/run/fake-systemd/<unit>.pgid`; a docker container is a process group recorded in
`<node>/run/fake-docker/<name>.pgid` (it runs its command on the node itself; the image is not
used); mount command lines go to
`<node>/run/fake-mounts.log`. Deleting or evicting an instance, deleting its scale set, or
stopping the fake kills its scripts', units' and containers' process groups.

Testing aids on `FakeArm`:
- `scale_sets[name]` (`ScaleSet`: `.model` = the stored request, secrets included, as ARM holds it;
  `.view()` = what GET returns; `.instances[id]` -> `Instance` with `.dir`, `.run_commands`),
  `node_dir(vmss, id)`, `give_gpus(scale_set=None, mode=, count=, series=…)` (new instances of GPU
  sizes boot with a fake NVIDIA driver in `<node>/bin`, first on PATH: tests.fakes.gpu),
  `gpu_bin(vmss, id)`, `evict(vmss, id)` (Spot only; as the model's evictionPolicy says: Delete
  -> the instance is gone; Deallocate, Azure's default -> PowerState/deallocated, still counted in
  quota, run commands refused with 409).
- `requests` (`Request(method, path, query, status)`), `mark()` / `since(mark)` /
  `count(mark, method=, match=)`.
- `fail_next(n, status, retry_after=None, match=None, code=None, message=None, method=None)`,
  `delay_next(n, seconds, match=None, method=None)`.
- Knobs (constructor arguments and attributes): `lro_polls` (default 1), `instance_delay_polls`,
  `instance_delay_seconds`, `page_size` (list answers paged through `nextLink`), `lro_retry_after`
  (a Retry-After header on LRO answers; none by default), `node_env` (extra node variables);
  `set_quota(name, limit)` (defaults: cores 100, lowPriorityCores 100, each family 100),
  `restrict_sku(name, reason="NotAvailableForSubscription")` / `unrestrict_sku(name)`,
  `add_resource_group(name)`, `add_subnet(subnet_id)` (its resource group too).
- `async settle()`: wait until no script or provisioning task is running.

Modules: `server` (HTTP, auth, faults, LROs, the handlers), `resources` (scale sets, instances,
run commands, operations, error shape), `node` (scripts on the simulated nodes), `catalog`
(resource SKUs, quota families and defaults), `clock` (ARM timestamps).
"""

from tests.fakes.arm.node import OUTPUT_LIMIT, SHIM_DIR, Script
from tests.fakes.arm.resources import (
    API_VERSIONS,
    COMPUTE_API,
    LOCATION,
    MAX_RUN_COMMANDS,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    TOKEN,
    ArmError,
    Extension,
    Instance,
    Request,
    RunCommand,
    ScaleSet,
)
from tests.fakes.arm.server import FakeArm, FakeCredential

__all__ = [
    "API_VERSIONS",
    "COMPUTE_API",
    "LOCATION",
    "MAX_RUN_COMMANDS",
    "OUTPUT_LIMIT",
    "RESOURCE_GROUP",
    "SHIM_DIR",
    "SUBSCRIPTION",
    "TOKEN",
    "ArmError",
    "Extension",
    "FakeArm",
    "FakeCredential",
    "Instance",
    "Request",
    "RunCommand",
    "ScaleSet",
    "Script",
]
