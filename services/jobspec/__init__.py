"""Batch AI job.json (API 2017-09-01-preview, 2018-03-01, 2018-05-01): models, loading, launch plan.

Pure: no file, network, process or event-loop access. Callers read the text and run the plan.

- `load_job_spec` / `load_cluster_spec` / `load_file_server_spec` / `load_any` parse strict JSON
  (1 MiB, 64 levels) and raise `SpecError` with one line naming line:column or the JSON path.
  Unknown keys are errors (with a did-you-mean); the known legacy keys are read silently:
  `toolType`, `outputDirectories[].type/createNew`, `priority`, `location`, `experimentName`,
  `credentialsInfo` (read as `credentials`) and
  `chainerSettings.masterCommandLineArgs` (read as `commandLineArgs`). The snake_case spelling of
  a key is accepted as well, which is how the early recipes' `cntkSettings.process_count` is read
  as `processCount` (the upstream fix commit confirms it was meant).
- `constraints.maxTaskRetryCount` (2017-09-01-preview, 0-10) is honoured in every version: it is
  the job's number of retries after lost nodes (a Spot eviction), as `job create --max-retries`.
- `spec.api_version` comes from `$schema` (…/schemas/<api>/job.json) or, without one, from the
  features used; a feature newer than the declared version is an error.
- `plan_launch(spec, ctx)` turns a spec into processes: argv, the full `AZ_BATCHAI_*` environment
  and Batch AI's log and output layout.

How commands run. Argument strings (`commandLineArgs`, `masterCommandLineArgs`, …) are split with
`shlex.split` and each token goes through `expand_vars`, our own `$VAR`/`${VAR}` expander over the
job's environment: no command substitution, no globbing, `$$` kept. (Unlike a shell, quoting does
not stop expansion: `'$X'` is expanded after the quotes are removed.) The `commandLine` of
`customToolkitSettings`, `customMpiSettings` and `jobPreparation` is, by Batch AI's definition, a
bash command line that is the job's own program (the recipes pipe, chain with `;` and `source`
scripts), so its argv is `("bash", "-c", <commandLine verbatim>)` with the variables in the
environment; it runs on the job's node or container like `train.py` would. The bot itself never
hands text it received to a shell.

Layout. `jobOutputDirectoryPathSegment` is `<sub>/<rg>/workspaces/<ws>/experiments/<exp>/jobs/
<job>/<uuid>` for 2018-05-01 and `<sub>/<rg>/jobs/<job>/<uuid>` before. Logs go to
`<stdOutErrPathPrefix>/<segment>/stdouterr/`, except for 2017-09-01-preview, which wrote them into
`<stdOutErrPathPrefix>/<segment>/` itself (reference §6.1); without a prefix,
`$AZ_BATCHAI_MOUNT_ROOT` is used. Outputs go to `<pathPrefix>/<segment>/outputs[/<pathSuffix>]`
(legacy `createNew: false`: `<pathPrefix>[/<pathSuffix>]`). Both must stay under the mount roots or
the job temp root, since the service creates and writes them.
"""

from services.jobspec.infra import cluster_parts_not_honoured
from services.jobspec.job import MAX_RETRIES
from services.jobspec.load import (
    MAX_DEPTH,
    MAX_SPEC_BYTES,
    check_any,
    load_any,
    load_cluster_spec,
    load_file_server_spec,
    load_job_spec,
    parse_json,
    spec_kind,
)
from services.jobspec.plan import (
    LaunchContext,
    LaunchPlan,
    NodeInfo,
    OutputDir,
    ProcessPlan,
    job_dir_segment,
    key_vault_refs,
    max_wall_clock,
    plan_launch,
    primary_log,
    toolkit_name,
)
from services.jobspec.schema import (
    API_VERSIONS,
    DEFAULT_MAX_WALL_CLOCK,
    AnySpec,
    ApiVersion,
    ClusterSpec,
    FileServerSpec,
    JobSpec,
    format_duration,
    parse_duration,
)
from services.jobspec.values import dump, expand_vars, placeholders, substitute

__all__ = [
    "API_VERSIONS",
    "DEFAULT_MAX_WALL_CLOCK",
    "MAX_DEPTH",
    "MAX_RETRIES",
    "MAX_SPEC_BYTES",
    "AnySpec",
    "ApiVersion",
    "ClusterSpec",
    "FileServerSpec",
    "JobSpec",
    "LaunchContext",
    "LaunchPlan",
    "NodeInfo",
    "OutputDir",
    "ProcessPlan",
    "check_any",
    "cluster_parts_not_honoured",
    "dump",
    "expand_vars",
    "format_duration",
    "job_dir_segment",
    "load_any",
    "load_cluster_spec",
    "load_file_server_spec",
    "load_job_spec",
    "max_wall_clock",
    "parse_duration",
    "parse_json",
    "placeholders",
    "key_vault_refs",
    "plan_launch",
    "primary_log",
    "spec_kind",
    "substitute",
    "toolkit_name",
]
