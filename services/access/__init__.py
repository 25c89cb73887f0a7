"""Access: who may do and read what, where; one guard and one audit log for every transport."""

from services.access.audit import AuditLog
from services.access.guard import AccessGuard, Caller
from services.access.owners import check_job_owner, check_node_exec, check_owner, may_act_on
from services.access.policy import FOREIGN_TEAM, AccessPolicy, Decision, Origin
from services.access.reads import ChannelMembers, JobReaders

__all__ = [
    "FOREIGN_TEAM",
    "AccessGuard",
    "AccessPolicy",
    "AuditLog",
    "Caller",
    "ChannelMembers",
    "Decision",
    "JobReaders",
    "Origin",
    "check_job_owner",
    "check_node_exec",
    "check_owner",
    "may_act_on",
]
