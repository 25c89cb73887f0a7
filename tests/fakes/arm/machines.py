"""The fake ARM server's standalone VMs, their managed disks and NICs (the file servers).

Shaped on the Compute and Network REST models (`VirtualMachine`, `NetworkInterface`): a VM PUT
is a long-running operation that creates its OS disk and `createOption: Empty` data disks as
managed disks named in the model; a VM DELETE removes the disks and NICs whose `deleteOption`
is `Delete`, as ARM does. A NIC PUT gets the next private IP of the subnet it names.
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.arm.resources import ArmError


@dataclass
class Machine:
    name: str
    resource_group: str
    model: dict[str, Any]
    state: str = "Creating"
    disks: list[str] = field(default_factory=list)

    def view(self, sub: str) -> dict[str, Any]:
        body = copy.deepcopy(self.model)
        props = body.setdefault("properties", {})
        os_profile = props.get("osProfile")
        if isinstance(os_profile, dict):
            os_profile.pop("adminPassword", None)  # ARM never returns it
        props["provisioningState"] = self.state
        return {
            "name": self.name,
            "id": f"/subscriptions/{sub}/resourceGroups/{self.resource_group}/providers/"
            f"Microsoft.Compute/virtualMachines/{self.name}",
            "type": "Microsoft.Compute/virtualMachines",
            **body,
        }


@dataclass
class Machines:
    """Standalone VMs, managed disks (name -> size GB, sku) and NICs of one fake ARM server."""

    sub: str
    vms: dict[str, Machine] = field(default_factory=dict)
    disks: dict[str, dict[str, Any]] = field(default_factory=dict)
    nics: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ips: int = 0

    def put_nic(self, rg: str, name: str, body: dict[str, Any], subnets: dict[str, str]) -> Any:
        configs = (body.get("properties") or {}).get("ipConfigurations") or []
        if not configs:
            raise ArmError(400, "InvalidRequestFormat", "A NIC needs an IP configuration.")
        subnet = str(((configs[0].get("properties") or {}).get("subnet") or {}).get("id", ""))
        if subnet.lower() not in subnets:
            raise ArmError(400, "InvalidResourceReference", f"Resource {subnet} not found.")
        nic_id = (
            f"/subscriptions/{self.sub}/resourceGroups/{rg}/providers/"
            f"Microsoft.Network/networkInterfaces/{name}"
        )
        if name not in self.nics:
            ip = ipaddress.IPv4Address("10.0.1.4") + self._ips
            self._ips += 1
            view = copy.deepcopy(body)
            view.update(name=name, id=nic_id, type="Microsoft.Network/networkInterfaces")
            props = view["properties"]
            props["provisioningState"] = "Succeeded"
            for conf in props["ipConfigurations"]:
                conf["id"] = f"{nic_id}/ipConfigurations/{conf.get('name', 'ipconfig')}"
                conf["properties"].update(
                    provisioningState="Succeeded", privateIPAddress=str(ip), primary=True
                )
            self.nics[name] = view
        return self.nics[name]

    def put_vm(
        self, rg: str, name: str, body: dict[str, Any], sku: dict[str, Any] | None
    ) -> Machine:
        props = body.get("properties") or {}
        if sku is None:
            size = (props.get("hardwareProfile") or {}).get("vmSize")
            raise ArmError(400, "InvalidParameter", f"The VM size {size} is not valid.")
        storage = props.get("storageProfile") or {}
        data = storage.get("dataDisks") or []
        most = int(
            next(
                (
                    c["value"]
                    for c in sku.get("capabilities", [])
                    if c["name"] == "MaxDataDiskCount"
                ),
                "64",
            )
        )
        if len(data) > most:
            raise ArmError(
                409,
                "OperationNotAllowed",
                f"The maximum number of data disks allowed to be attached to a VM of this size "
                f"is {most}.",
            )
        for nic in (props.get("networkProfile") or {}).get("networkInterfaces") or []:
            if str(nic.get("id", "")).rsplit("/", 1)[-1] not in self.nics:
                raise ArmError(
                    400, "InvalidResourceReference", f"Resource {nic.get('id')} not found."
                )
        vm = self.vms.get(name) or Machine(name, rg, copy.deepcopy(body))
        os_disk = storage.get("osDisk") or {}
        names = [str(os_disk.get("name") or f"{name}_OsDisk")]
        for disk in data:
            if disk.get("createOption") != "Empty":
                raise ArmError(400, "InvalidParameter", "Only empty data disks are made here.")
            disk_name = str(disk.get("name") or f"{name}_disk{disk['lun']}")
            self.disks[disk_name] = {
                "lun": disk["lun"],
                "diskSizeGB": disk["diskSizeGB"],
                "sku": (disk.get("managedDisk") or {}).get("storageAccountType"),
                "vm": name,
                "deleteOption": disk.get("deleteOption", "Detach"),
            }
            names.append(disk_name)
        self.disks[names[0]] = {
            "lun": None,
            "vm": name,
            "deleteOption": os_disk.get("deleteOption", "Delete"),
        }
        vm.disks = names
        vm.model = copy.deepcopy(body)
        self.vms[name] = vm
        return vm

    def delete_vm(self, name: str) -> None:
        vm = self.vms.pop(name, None)
        if vm is None:
            return
        for disk in vm.disks:
            if self.disks.get(disk, {}).get("deleteOption") == "Delete":
                self.disks.pop(disk, None)
        props = vm.model.get("properties") or {}
        for nic in (props.get("networkProfile") or {}).get("networkInterfaces") or []:
            if (nic.get("properties") or {}).get("deleteOption") == "Delete":
                self.nics.pop(str(nic.get("id", "")).rsplit("/", 1)[-1], None)
