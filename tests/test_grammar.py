"""Tests of the /batchai grammar: seed commands, eras, errors, secrets, inline JSON, help."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from handlers.commandspec import COMMANDS, COMMON_FLAGS, NOT_STORED
from handlers.grammar import (
    MAX_INPUT_BYTES,
    ApprovalsApprove,
    ApprovalsDeny,
    ApprovalsList,
    Audit,
    BudgetSet,
    BudgetShow,
    ClusterAutoScale,
    ClusterCreate,
    ClusterDelete,
    ClusterList,
    ClusterNodeList,
    ClusterResize,
    ClusterShow,
    Command,
    ConfigRef,
    Help,
    JobCreate,
    JobDelete,
    JobList,
    JobListFiles,
    JobNodeList,
    JobShow,
    JobStreamFile,
    JobTerminate,
    JobWait,
    Spend,
    help_text,
    parse,
    reference_markdown,
    usage,
)
from services.core.errors import UserError

PASSWORD = "PP@@ddee5"
PASSWORD_WARNING = (
    "A password typed in a channel is visible to everyone in it: change it, and use "
    "--ssh-key with your public key instead."
)

SEED_CLUSTER_CREATE = (
    "cluster create --name mycluster --vm-size STANDARD_NC6 --image UbuntuLTS --min 1 --max 1 "
    "--afs-name batchaiquickstart --afs-mount-path azurefileshare --user-name mytestbatchai "
    f"--password {PASSWORD} --resource-group myBatchAIGroup"
)


def _error(text: str, source: str = "slack") -> UserError:
    with pytest.raises(UserError) as caught:
        parse(text, source=source)  # type: ignore[arg-type]
    return caught.value


# --------------------------------------------------------------------------- the seed flow


def test_seed_cluster_create() -> None:
    assert parse(SEED_CLUSTER_CREATE) == ClusterCreate(
        name="mycluster",
        vm_size="STANDARD_NC6",
        image="UbuntuLTS",
        min_nodes=1,
        max_nodes=1,
        afs_name="batchaiquickstart",
        afs_mount_path="azurefileshare",
        user_name="mytestbatchai",
        password=SecretStr(PASSWORD),
        resource_group="myBatchAIGroup",
        warnings=(PASSWORD_WARNING,),
    )


def test_seed_cluster_list_table() -> None:
    assert parse("cluster list -o table") == ClusterList(output="table")


def test_seed_job_create_with_manifest_path() -> None:
    text = (
        "job create --name myjob --cluster-name mycluster --resource-group myBatchAIGroup "
        "--config manifests/jobs/mnist.json"
    )
    assert parse(text) == JobCreate(
        name="myjob",
        cluster="mycluster",
        resource_group="myBatchAIGroup",
        config=ConfigRef("manifest", "mnist"),
    )


def test_seed_job_stream_file() -> None:
    text = (
        "job stream-file --job-name myjob --output-directory-id stdouterr --name stderr.txt "
        "--resource-group myBatchAIGroup"
    )
    assert parse(text) == JobStreamFile(
        job="myjob",
        output_directory_id="stdouterr",
        file_name="stderr.txt",
        resource_group="myBatchAIGroup",
    )


def test_seed_job_list_files() -> None:
    assert parse("job list-files --resource-group myBatchAIGroup -n myjob -d model") == (
        JobListFiles(job="myjob", output_directory_id="model", resource_group="myBatchAIGroup")
    )


# --------------------------------------------------------------------------- DESIGN.md forms


def test_design_cluster_create() -> None:
    text = (
        "/batchai cluster create -n mycluster -s Standard_NC4as_T4_v3 --min 0 --max 4 "
        "--afs-name data --afs-mount-path afs"
    )
    assert parse(text) == ClusterCreate(
        name="mycluster",
        vm_size="Standard_NC4as_T4_v3",
        min_nodes=0,
        max_nodes=4,
        afs_name="data",
        afs_mount_path="afs",
    )


def test_design_job_create_legacy_dash_c_is_config() -> None:
    assert parse("/batchai job create -n mnist -r mycluster -c mnist") == JobCreate(
        name="mnist", cluster="mycluster", config=ConfigRef("manifest", "mnist")
    )


def test_design_stream_file_short_flags() -> None:
    assert parse("/batchai job stream-file -j mnist -d stdouterr -n stderr.txt") == JobStreamFile(
        job="mnist", output_directory_id="stdouterr", file_name="stderr.txt"
    )


def test_design_list_files_short_flags() -> None:
    assert parse("/batchai job list-files -n mnist -d model") == JobListFiles(
        job="mnist", output_directory_id="model"
    )


# --------------------------------------------------------------------------- job create -c


def test_final_era_dash_c_is_cluster_when_dash_f_gives_config() -> None:
    assert parse("job create -n x -c mycluster -f job.json", source="console") == JobCreate(
        name="x", cluster="mycluster", config=ConfigRef("path", "job.json")
    )


def test_final_era_from_slack_with_manifest() -> None:
    assert parse("job create -n x -c mycluster -f mnist") == JobCreate(
        name="x", cluster="mycluster", config=ConfigRef("manifest", "mnist")
    )


def test_dash_c_alone_is_config_as_in_2017() -> None:
    assert parse("job create -n x -c job.json", source="console") == JobCreate(
        name="x", config=ConfigRef("path", "job.json")
    )
    assert parse("job create -n x -c mnist") == JobCreate(
        name="x", config=ConfigRef("manifest", "mnist")
    )


def test_dash_c_with_long_config_is_cluster() -> None:
    assert parse("job create -n x --config mnist -c gpu") == JobCreate(
        name="x", cluster="gpu", config=ConfigRef("manifest", "mnist")
    )


def test_dash_c_cluster_and_dash_r_conflict() -> None:
    err = _error("job create -n x -f mnist -c a -r b")
    assert "give the cluster once" in str(err)


def test_job_create_without_config_opens_the_form() -> None:
    assert parse("job create -n x -r gpu") == JobCreate(name="x", cluster="gpu", config=None)


def test_job_create_without_a_name_is_for_the_form_in_slack_only() -> None:
    assert parse("job create") == JobCreate()
    assert parse("job create -r gpu -c mnist") == JobCreate(
        cluster="gpu", config=ConfigRef("manifest", "mnist")
    )
    for text in ("job create", "job submit -r gpu"):
        assert "missing required flag -n/--name" in str(_error(text, source="console"))
    assert "needs its name" in str(_error('job create -c mnist --at "2026-12-01 02:00"'))
    assert "-n, --name NAME" in help_text("job", "create")
    assert "(required)" in help_text("job", "create").split("-n, --name NAME")[1].split("\n")[0]


def test_help_documents_the_dash_c_rule() -> None:
    text = help_text("job", "create")
    assert "-c is the config" in text
    assert "then -c is the cluster" in text


# --------------------------------------------------------------------------- eras and aliases


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "job file stream -j J -f F -d D -p sub/dir",
            JobStreamFile(job="J", file_name="F", output_directory_id="D", path="sub/dir"),
        ),
        ("job file stream -j J -f F", JobStreamFile(job="J", file_name="F")),
        ("job file stream -n J -f F", JobStreamFile(job="J", file_name="F")),
        (
            "job file list -j J -d D -p P --expiry 120",
            JobListFiles(job="J", output_directory_id="D", path="P", expiry_minutes=120),
        ),
        ("job file list -n J", JobListFiles(job="J")),
        ("job node list -j J", JobNodeList(job="J")),
        ("job list-nodes -n J", JobNodeList(job="J")),
        ("cluster node list -c C", ClusterNodeList(cluster="C")),
        ("cluster list-nodes -n C -o table", ClusterNodeList(cluster="C", output="table")),
        (
            "job submit -n j -r c -c mnist",
            JobCreate(name="j", cluster="c", config=ConfigRef("manifest", "mnist")),
        ),
        ("cluster show -n c", ClusterShow(name="c")),
        ("cluster resize -n c -t 0", ClusterResize(name="c", target_nodes=0)),
        (
            "cluster auto-scale -n c --min 0 --max 4",
            ClusterAutoScale(name="c", min_nodes=0, max_nodes=4),
        ),
        ("cluster delete -n c -y --no-wait", ClusterDelete(name="c", yes=True)),
        ("cluster delete -n c", ClusterDelete(name="c", yes=False)),
        ("job list -c gpu -e exp1", JobList(cluster="gpu", experiment="exp1")),
        (
            "job show -n j -g rg -w ws -e ex",
            JobShow(name="j", resource_group="rg", workspace="ws", experiment="ex"),
        ),
        ("job terminate -n j --yes", JobTerminate(name="j", yes=True)),
        ("job delete -n j -y --no-wait", JobDelete(name="j", yes=True)),
        ("job wait -n j", JobWait(name="j", interval_seconds=15)),
        ("job wait -n j --interval 30", JobWait(name="j", interval_seconds=30)),
        (
            "cluster create -n c -s Standard_NC6 -t 2 --vm-priority lowpriority "
            "--container-name data --container-mount-path blob -l eastus --idle-timeout 30",
            ClusterCreate(
                name="c",
                vm_size="Standard_NC6",
                target_nodes=2,
                vm_priority="lowpriority",
                bfs_name="data",
                bfs_mount_path="blob",
                location="eastus",
                idle_timeout_minutes=30,
            ),
        ),
        (
            "cluster create -n c -s Standard_NC6 -k 'ssh-ed25519 AAAAC3Nza me@host' "
            "--setup-task 'apt-get install -y jq' --setup-task-output $AZ_BATCHAI_MOUNT_ROOT/afs",
            ClusterCreate(
                name="c",
                vm_size="Standard_NC6",
                ssh_key="ssh-ed25519 AAAAC3Nza me@host",
                setup_task="apt-get install -y jq",
                setup_task_output="$AZ_BATCHAI_MOUNT_ROOT/afs",
            ),
        ),
    ],
)
def test_commands_across_eras(text: str, expected: Command) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize("prefix", ["", "/batchai ", "batchai ", "az batchai ", "AZ BatchAI "])
def test_optional_prefixes(prefix: str) -> None:
    assert parse(prefix + "cluster list -o table") == ClusterList(output="table")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cluster list -o table", "table"),
        ("cluster list --output table", "table"),
        ("cluster list --output=table", "table"),
        ("cluster list -o=json", "json"),
        ("cluster list -o jsonc", "json"),
        ("cluster list", "text"),
    ],
)
def test_output_formats(text: str, expected: str) -> None:
    assert parse(text).output == expected


def test_flag_equals_value_everywhere() -> None:
    assert parse("job stream-file --job-name=myjob --name=stderr.txt -d=stdouterr") == (
        JobStreamFile(job="myjob", file_name="stderr.txt")
    )
    assert parse("cluster resize --name=c --target=3") == ClusterResize(name="c", target_nodes=3)


def test_command_words_are_case_insensitive_and_em_dash_is_a_double_dash() -> None:
    assert parse("Cluster Show —name c") == ClusterShow(name="c")


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    ("text", "topic"),
    [
        ("", ()),
        ("   ", ()),
        ("/batchai", ()),
        ("help", ()),
        ("/batchai help", ()),
        ("--help", ()),
        ("-h", ()),
        ("help help", ()),
        ("cluster", ("cluster",)),
        ("cluster -h", ("cluster",)),
        ("job file", ("job", "file")),
        ("help job", ("job",)),
        ("help job create", ("job", "create")),
        ("help job submit", ("job", "submit")),
        ("job create -h", ("job", "create")),
        ("job create -n x --bogus --help", ("job", "create")),
        ("job stream-file --help", ("job", "stream-file")),
        ("cluster node list -h", ("cluster", "node", "list")),
    ],
)
def test_help_requests(text: str, topic: tuple[str, ...]) -> None:
    assert parse(text) == Help(topic=topic)


def test_help_text_for_every_topic_a_parse_can_return() -> None:
    for spec in COMMANDS:
        for path in (spec.path, *spec.aliases):
            text = help_text(*path)
            assert text.startswith(f"/batchai {' '.join(path)}: {spec.summary}")
            for flag in spec.flags:
                for name in flag.names:
                    assert name in text, (path, name)
    assert "cluster create" in help_text("cluster")
    assert "job file stream" in help_text("job", "file")


def test_overview_lists_every_command_with_its_summary() -> None:
    overview = help_text()
    for spec in COMMANDS:
        assert " ".join(spec.path) in overview
        if spec.legacy_of is None:
            assert spec.summary in overview


def test_usage_marks_required_flags_and_shows_defaults() -> None:
    text = usage("job", "stream-file")
    assert text.startswith("usage: /batchai job stream-file -j NAME -n FILE [flags]")
    assert "(required)" in text
    assert "(default: stdouterr)" in text
    assert "(default: .)" in text
    assert "[5-600]" in usage("job", "file", "list")
    assert "(default: 60)" in usage("job", "file", "list")
    assert "(default: afs)" in usage("cluster", "create")


def test_help_examples_use_the_seed_commands() -> None:
    assert f"/batchai {SEED_CLUSTER_CREATE}" in help_text("cluster", "create")
    assert "/batchai cluster list -o table" in help_text("cluster", "list")


def test_every_example_in_the_table_parses() -> None:
    for spec in COMMANDS:
        for example in spec.examples:
            command = parse(example)
            assert type(command) is spec.cls, example


def test_reference_markdown_is_the_help_text() -> None:
    markdown = reference_markdown()
    assert help_text() in markdown
    for spec in COMMANDS:
        assert help_text(*spec.path) in markdown
    assert markdown.count("```") % 2 == 0


def test_help_lines_fit_a_monospace_block() -> None:
    for spec in COMMANDS:
        for line in usage(*spec.path).splitlines():
            assert len(line) <= 100, line


def test_usage_of_unknown_path_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        usage("job", "fly")


# --------------------------------------------------------------------------- the table


def test_every_flag_fills_a_field_and_every_field_has_a_flag() -> None:
    base = {f.name for f in dataclasses.fields(Command)} - {"warnings"}
    for spec in COMMANDS:
        fields = {f.name for f in dataclasses.fields(spec.cls)}
        dests = {flag.dest for flag in spec.flags} - {None}
        assert dests <= fields | NOT_STORED, spec.path
        assert fields - {"warnings"} <= dests | base, spec.path
        names = [name for flag in spec.flags for name in flag.names]
        assert len(names) == len(set(names)), spec.path
        # az's workspace group names its workspace -n/--workspace: there -w is no flag
        common = {f for f in COMMON_FLAGS if spec.path[0] != "workspace" or f.dest != "workspace"}
        assert common <= set(spec.flags)


# --------------------------------------------------------------------------- bad inputs

BAD_INPUTS = [
    ("foo list", 'unknown command group "foo"'),
    ("clustr list", 'did you mean "cluster"?'),
    ("job fly", 'unknown command "job fly"'),
    ("job creat -n x", 'did you mean "job create"?'),
    ("job file strem -j x -f y", 'did you mean "job file stream"?'),
    ("job create --foo 1", 'unknown flag --foo for "job create"'),
    ("job create -n x --nmae y", "did you mean --name?"),
    ("cluster show --name", "--name needs a value"),
    ("cluster show --name --output table", "--name needs a value"),
    ("cluster show --name=", "--name needs a value"),
    ("cluster resize -n c -t many", "-t must be a whole number from 0 to 100"),
    ("cluster resize -n c -t 101", "-t must be a whole number from 0 to 100"),
    ("cluster resize -n c -t " + "9" * 5000, "must be a whole number"),
    ("cluster create -n c -s Standard_NC6 --min 3 --max 1", "--min (3) must not be greater"),
    ("cluster create -n c -s Standard_NC6 --min 1", "--min and --max go together"),
    ("cluster create -n c -s Standard_NC6 --min 1 --max 2 -t 5", "must lie between"),
    ("cluster auto-scale -n c --min 2", "missing required flag --max"),
    ("cluster create -n my/cluster -s Standard_NC6", '"my/cluster" is not valid'),
    ("cluster show -n " + "a" * 65, "is not valid: use 1-64"),
    ("job show -n x -g 'bad group'", "-g"),
    ("job stream-file -j x -n ../../etc/passwd", "without .. parts"),
    ("job file stream -j x -f /etc/passwd", "not starting with /"),
    ("job file list -j x -p a/../../b", "without .. parts"),
    ("job show -n 'unbalanced", "unbalanced quote"),
    ('job show -n "unbalanced', "unbalanced quote"),
    ("job show -n x -n y", "-n given twice"),
    ("job show -n x --name y", "--name given twice (first as -n)"),
    ("x" * (MAX_INPUT_BYTES + 1), "command too long"),
    ("job create -n x -c /etc/passwd", "--config from Slack takes a manifest name or inline JSON"),
    ("job create -n x --config ../job.json", "not a path on the bot's machine"),
    ("cluster list -o xml", "must be json, jsonc, table, tsv, yaml or none"),
    ('cluster list --query "[]."', "not a valid JMESPath expression: Expecting"),
    ('job list --query "a[" -o tsv', "not a valid JMESPath expression"),
    ("cluster create -n c", "missing required flag -s/--vm-size"),
    ("cluster create", "missing required flags -n/--name, -s/--vm-size"),
    ("job stream-file -j x", "missing required flag -n/--name"),
    ("job show myjob", 'unexpected argument "myjob"'),
    ("cluster delete -n c --yes=no", "--yes takes no value"),
    ("job file list -j x --expiry 1", "from 5 to 600"),
    ("cluster create -n c -s Standard_NC6 --vm-priority spot", "dedicated or lowpriority"),
    ("cluster create -n c -s Standard_NC6 -u admin", "reserved"),
    ("cluster create -n c -s Standard_NC6 -k ~/.ssh/id_rsa.pub", "public key text"),
    ("cluster create -n c -s Standard_NC6 --setup-task 'echo hi'", "needs --setup-task-output"),
    ('job create -n x -r c --config {"a": 1', "inline JSON is not closed"),
    ('job create -n x -r c --config {"a": 1}x', "followed by a space"),
    ("experiment create -n e1", "missing required flag -w/--workspace"),
    ("workspace show", "missing required flag -n/--workspace"),
    ("workspace create -w ws", 'unknown flag -w for "workspace create"'),
    ("cluster node exec -c c", 'missing required flag --exec for "cluster node exec"'),
    ("cluster node exec -c c --exec ls -L 8080:x:80", "-L/--address forwards ports over SSH"),
    ("job node exec -j j --exec ls -p hunter2", "leave -p/--password and -k/--ssh-private-key"),
    ("cluster -n x", '"cluster" needs a command'),
    ("help job fly", 'unknown help topic "job fly"'),
    ("job create -n x -r a --cluster b", "--cluster given twice (first as -r)"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_INPUTS)
def test_bad_input_gives_one_line_error_with_usage(text: str, expected: str) -> None:
    err = _error(text)
    message = str(err)
    assert expected in message
    assert "\n" not in message and len(message.splitlines()) == 1
    assert err.usage and err.usage.startswith("usage: /batchai")


def test_there_are_at_least_25_distinct_bad_inputs() -> None:
    assert len({text for text, _ in BAD_INPUTS}) >= 25


def test_error_usage_is_the_usage_of_the_command() -> None:
    assert _error("job create --foo 1").usage == usage("job", "create")
    assert _error("job submit --foo 1").usage == usage("job", "submit")
    assert _error("job fly").usage == usage("job")
    assert _error("foo").usage == usage()


def test_unknown_flag_message_is_exact() -> None:
    assert str(_error("job create --zzzzzz 1")) == 'unknown flag --zzzzzz for "job create"'
    assert str(_error("job fly")) == 'unknown command "job fly"'


def test_oversize_limit_is_exactly_16_kib() -> None:
    filler = "a" * (MAX_INPUT_BYTES - len("job show -n "))
    with pytest.raises(UserError, match="is not valid"):  # tokenized: the size was accepted
        parse("job show -n " + filler)
    assert "too long" in str(_error("job show -n " + filler + "a"))


def test_console_takes_config_paths_slack_does_not() -> None:
    assert parse("job create -n x --config '/tmp/my job.json'", source="console") == JobCreate(
        name="x", config=ConfigRef("path", "/tmp/my job.json")
    )
    assert "Slack" in str(_error("job create -n x --config '/tmp/my job.json'"))
    assert parse("cluster create -n c -s S1 -f cluster.json", source="console") == ClusterCreate(
        name="c", vm_size="S1", config=ConfigRef("path", "cluster.json")
    )
    assert parse("cluster create -n c -s S1 -c big", source="slack") == ClusterCreate(
        name="c", vm_size="S1", config=ConfigRef("manifest", "big")
    )


# --------------------------------------------------------------------------- GPU spend

APPROVAL = "3f9c2a7e"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("budget show", BudgetShow()),
        ("budget show --channel C0123ABCD -o json", BudgetShow(channel="C0123ABCD", output="json")),
        ("budget show --channel G01ABC", BudgetShow(channel="G01ABC")),
        ("budget show --channel #ml-team", BudgetShow(channel="#ml-team")),
        ("budget show --channel <#C0123ABCD|ml-team>", BudgetShow(channel="C0123ABCD")),
        ("budget show --channel <#C0123ABCD>", BudgetShow(channel="C0123ABCD")),
        ("budget show --channel=&lt;#C0123ABCD|ml-team&gt;", BudgetShow(channel="C0123ABCD")),
        ("budget set --amount 2500", BudgetSet(amount=Decimal("2500.00"))),
        (
            "budget set --amount $2,500.00 --channel #ml-team",
            BudgetSet(amount=Decimal("2500.00"), channel="#ml-team"),
        ),
        ("budget set --amount=0.5", BudgetSet(amount=Decimal("0.50"))),
        ("budget set --amount 0.01", BudgetSet(amount=Decimal("0.01"))),
        ("budget set --amount 1234567.89", BudgetSet(amount=Decimal("1234567.89"))),
        ("budget set --amount 10,000,000", BudgetSet(amount=Decimal("10000000.00"))),
        ("budget set --amount $10000000.00", BudgetSet(amount=Decimal("10000000.00"))),
        ("approvals list", ApprovalsList()),
        ("approvals list --all -o table", ApprovalsList(all=True, output="table")),
        (f"approvals approve --id {APPROVAL}", ApprovalsApprove(id=APPROVAL)),
        ("approvals approve --id " + "0a" * 16, ApprovalsApprove(id="0a" * 16)),
        (
            f'approvals deny --id {APPROVAL} --reason "use 1 node for a smoke test"',
            ApprovalsDeny(id=APPROVAL, reason="use 1 node for a smoke test"),
        ),
        (
            f"approvals deny --reason “over budget, try Friday” --id {APPROVAL}",
            ApprovalsDeny(id=APPROVAL, reason="over budget, try Friday"),
        ),
        (f"approvals deny --id {APPROVAL} --reason no", ApprovalsDeny(id=APPROVAL, reason="no")),
        ("spend", Spend()),
        ("spend -o table", Spend(output="table")),
        ("spend --by channel --month 2026-05", Spend(by="channel", month="2026-05")),
        (
            "spend --by Cluster --month=1999-12 -o json",
            Spend(by="cluster", month="1999-12", output="json"),
        ),
        ("audit", Audit()),
        ("audit --job mnist --limit 500 -o json", Audit(job="mnist", limit=500, output="json")),
        ("/batchai audit --limit 1", Audit(limit=1)),
        ("az batchai spend --by user", Spend(by="user")),
    ],
)
def test_spend_commands_parse(text: str, expected: Command) -> None:
    assert parse(text) == expected


def test_budget_amount_is_decimal_cents() -> None:
    command = parse("budget set --amount $2,500")
    assert isinstance(command, BudgetSet)
    assert isinstance(command.amount, Decimal)
    assert str(command.amount) == "2500.00"
    assert hash(command) == hash(parse("budget set --amount 2500.00"))


def test_spend_defaults_come_from_the_dataclasses() -> None:
    assert parse("spend") == Spend(by="user", month=None)
    assert parse("audit") == Audit(job=None, limit=50)
    assert parse("approvals list") == ApprovalsList(all=False)
    assert "(default: user)" in usage("spend")
    assert "(default: 50)" in usage("audit")
    assert "[1-500]" in usage("audit")


@pytest.mark.parametrize(
    "text",
    [
        "approvals list",
        "spend",
        "audit",
        "budget show",
        "approvals list --all",
        "spend --by channel",
    ],
)
@pytest.mark.parametrize(("flag", "expected"), [("-o table", "table"), ("--output=json", "json")])
def test_output_format_on_spend_commands(text: str, flag: str, expected: str) -> None:
    assert parse(f"{text} {flag}").output == expected


@pytest.mark.parametrize(
    ("text", "topic"),
    [
        ("help budget", ("budget",)),
        ("help approvals", ("approvals",)),
        ("help spend", ("spend",)),
        ("help audit", ("audit",)),
        ("help budget set", ("budget", "set")),
        ("budget", ("budget",)),
        ("approvals -h", ("approvals",)),
        ("spend -h", ("spend",)),
        ("audit --help", ("audit",)),
        ("approvals deny --id x --help", ("approvals", "deny")),
    ],
)
def test_spend_help_requests(text: str, topic: tuple[str, ...]) -> None:
    assert parse(text) == Help(topic=topic)


def test_spend_help_texts() -> None:
    overview = help_text()
    assert "spend commands:" in overview
    section = overview.split("spend commands:", 1)[1]
    for words in ("budget show", "budget set", "approvals list", "approvals approve"):
        assert f"  {words}  " in section
    assert "\n  approvals deny  " in section
    assert "\n  spend  " in section and "\n  audit  " in section
    assert "budget show" in help_text("budget") and "budget set" in help_text("budget")
    assert "approvals deny" in help_text("approvals")
    assert help_text("spend").startswith("/batchai spend: Show a month's GPU spend")
    assert help_text("audit").startswith("/batchai audit: Show the audit log")
    assert usage("approvals", "deny").startswith(
        "usage: /batchai approvals deny --id ID --reason TEXT [flags]"
    )
    assert usage("budget", "set").startswith("usage: /batchai budget set --amount USD [flags]")
    assert "  spend: budget show, budget set, approvals list" in usage()
    markdown = reference_markdown()
    for title in (
        "budget show",
        "budget set",
        "approvals list",
        "approvals deny",
        "spend",
        "audit",
    ):
        assert f"## `/batchai {title}`" in markdown


SPEND_BAD_INPUTS = [
    ("budget set --amount -5", "--amount must be more than $0", ("budget", "set")),
    ("budget set --amount -$5", "--amount must be more than $0", ("budget", "set")),
    ("budget set --amount 0", "--amount must be more than $0", ("budget", "set")),
    ("budget set --amount $0.00", "--amount must be more than $0", ("budget", "set")),
    ("budget set --amount 10,000,000.01", "at most $10,000,000", ("budget", "set")),
    ("budget set --amount 99999999999", "at most $10,000,000", ("budget", "set")),
    ("budget set --amount 5.123", '"5.123" is not an amount in USD', ("budget", "set")),
    ("budget set --amount abc", '"abc" is not an amount in USD', ("budget", "set")),
    ("budget set --amount 2,50", "is not an amount in USD", ("budget", "set")),
    ("budget set --amount 1,0000", "is not an amount in USD", ("budget", "set")),
    ("budget set --amount 2500$", "is not an amount in USD", ("budget", "set")),
    ("budget set --amount 1e3", "is not an amount in USD", ("budget", "set")),
    ("budget set", 'missing required flag --amount for "budget set"', ("budget", "set")),
    ("budget set --amount", "--amount needs a value", ("budget", "set")),
    ("budget show --channel general", '"general" is not a channel', ("budget", "show")),
    ("budget show --channel #General", '"#General" is not a channel', ("budget", "show")),
    ("budget show --channel c0123abcd", "is not a channel", ("budget", "show")),
    ("budget show --channel <@U0123ABCD>", "is not a channel", ("budget", "show")),
    ("budget show --channel <#c0123|x>", "is not a channel", ("budget", "show")),
    ("budget set --amount 5 --channel D0123ABCD", "is not a channel", ("budget", "set")),
    (
        "approvals deny --id 3f9c2a7e",
        'missing required flag --reason for "approvals deny"',
        ("approvals", "deny"),
    ),
    ("approvals deny --reason 'too big'", "missing required flag --id", ("approvals", "deny")),
    (
        "approvals deny --id 3f9c2a7e --reason too big",
        "quote a value that contains spaces",
        ("approvals", "deny"),
    ),
    (
        "approvals deny --id 3f9c2a7e --reason '   '",
        "--reason needs some text",
        ("approvals", "deny"),
    ),
    (
        "approvals deny --id 3f9c2a7e --reason " + "x" * 501,
        "longer than 500 characters",
        ("approvals", "deny"),
    ),
    ("approvals deny --id 3f9c2a7e --reason 'a\x00b'", "control character", ("approvals", "deny")),
    ("approvals approve --id 3F9C2A7E", '--id "3F9C2A7E" is not valid', ("approvals", "approve")),
    ("approvals approve --id abc1234", "8-32 lowercase hex", ("approvals", "approve")),
    ("approvals approve --id " + "a" * 33, "8-32 lowercase hex", ("approvals", "approve")),
    ("approvals approve --id 3f9c2a7g", "8-32 lowercase hex", ("approvals", "approve")),
    ("approvals approve", "missing required flag --id", ("approvals", "approve")),
    ("approvals list --all=yes", "--all takes no value", ("approvals", "list")),
    ("approvals list --al", "did you mean --all?", ("approvals", "list")),
    ("approvals list pending", 'unexpected argument "pending"', ("approvals", "list")),
    ("approvals aprove --id 3f9c2a7e", 'did you mean "approvals approve"?', ("approvals",)),
    ("spend --month 2026-13", '--month "2026-13" is not valid: use a month as YYYY-MM', ("spend",)),
    ("spend --month 2026-00", "YYYY-MM", ("spend",)),
    ("spend --month 2026-5", "YYYY-MM", ("spend",)),
    ("spend --month 26-05", "YYYY-MM", ("spend",)),
    ("spend --by team", '--by must be user or channel or cluster, not "team"', ("spend",)),
    ("spend --by", "--by needs a value", ("spend",)),
    ("spend --channel C0123ABCD", 'unknown flag --channel for "spend"', ("spend",)),
    ("spend by user", 'unexpected argument "by" for "spend"', ("spend",)),
    ("audit --limit 0", "--limit must be a whole number from 1 to 500", ("audit",)),
    ("audit --limit 501", "from 1 to 500", ("audit",)),
    ("audit --limit many", "from 1 to 500", ("audit",)),
    ("audit --limit 5 --limit 6", "--limit given twice", ("audit",)),
    ("audit --job ../x", '--job "../x" is not valid', ("audit",)),
    ("budget --amount 5", '"budget" needs a command: show, set', ("budget",)),
    ("budget delete", 'unknown command "budget delete"', ("budget",)),
    ("spnd", 'did you mean "spend"?', ()),
    ("approval list", 'did you mean "approvals"?', ()),
    ("help budget sett", 'unknown help topic "budget sett"', ()),
]


@pytest.mark.parametrize(("text", "expected", "path"), SPEND_BAD_INPUTS)
def test_bad_spend_input_gives_one_line_error_with_its_usage(
    text: str, expected: str, path: tuple[str, ...]
) -> None:
    err = _error(text)
    message = str(err)
    assert expected in message
    assert "\n" not in message and len(message.splitlines()) == 1
    assert err.usage == usage(*path)


def test_there_are_at_least_12_distinct_bad_spend_inputs() -> None:
    assert len({text for text, _, _ in SPEND_BAD_INPUTS}) >= 12


def test_unknown_group_names_the_new_commands() -> None:
    message = str(_error("foo"))
    assert message.startswith(
        'unknown command group "foo": use cluster, workspace, experiment, job, budget, approvals'
    )
    assert "spend, audit, schedule, list-usages, file-server or help" in message


# --------------------------------------------------------------------------- secrets


def test_password_never_in_repr_or_str() -> None:
    command = parse(SEED_CLUSTER_CREATE)
    assert isinstance(command, ClusterCreate)
    assert command.password is not None
    assert command.password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(command)
    assert PASSWORD not in str(command)
    assert command.warnings == (PASSWORD_WARNING,)
    assert PASSWORD not in " ".join(command.warnings)


@pytest.mark.parametrize(
    "text",
    [
        f"cluster create -n bad! -s Standard_NC6 --password {PASSWORD}",
        f"cluster create --password {PASSWORD} -n c -s Standard_NC6 --min 5 --max 1",
        f"cluster create -n c -s Standard_NC6 -p {PASSWORD} --bogus",
        f"cluster create -n c -s Standard_NC6 --passwd={PASSWORD}",
        f"cluster create -n c -s Standard_NC6 -p{PASSWORD}",
        f"cluster create -n c -s Standard_NC6 --password {PASSWORD} {PASSWORD}",
        f"cluster create -n c -s Standard_NC6 --password {PASSWORD} --password {PASSWORD}",
        f"cluster create -n c -s Standard_NC6 --password '{PASSWORD}",
        f"cluster create -n c --password {PASSWORD}",
        f"cluster create -n c -s Standard_NC6 --password {PASSWORD} -k ~/.ssh/id_rsa.pub",
        f"job create -n x --password {PASSWORD}",
        f"cluster create -n c -s Standard_NC6 --storage-account-key {PASSWORD} -o xml",
        f"cluster create -n c -s Standard_NC6 --storage-account-key {PASSWORD} extra",
    ],
)
def test_secret_never_in_an_error_about_another_flag(text: str) -> None:
    err = _error(text)
    assert PASSWORD not in str(err)
    assert PASSWORD not in (err.usage or "")
    assert PASSWORD not in repr(err)


def test_storage_account_key_is_secret_and_warned_about() -> None:
    command = parse(
        f"job create -n x -r c --storage-account-name acct1 --storage-account-key {PASSWORD}"
    )
    assert isinstance(command, JobCreate)
    assert command.storage_account_key == SecretStr(PASSWORD)
    assert PASSWORD not in repr(command)
    assert len(command.warnings) == 1 and "storage account key" in command.warnings[0]


def test_commands_stay_hashable_with_secrets() -> None:
    assert hash(parse(SEED_CLUSTER_CREATE)) == hash(parse(SEED_CLUSTER_CREATE))


# --------------------------------------------------------------------------- inline JSON

INLINE = '{"properties": {"nodeCount": 1, "customToolkitSettings": {"commandLine": "echo \\"a  b\\" it\'s {x}"}}}'  # noqa: E501


def test_inline_json_with_spaces_and_quotes_survives_exactly() -> None:
    command = parse(f"job create -n hello -r gpu --config {INLINE} -o json")
    assert command == JobCreate(
        name="hello", cluster="gpu", config=ConfigRef("inline", INLINE), output="json"
    )


@pytest.mark.parametrize(
    "text",
    [
        f"job create -n hello -r gpu -c {INLINE}",
        f"job create -n hello -r gpu --config={INLINE}",
        f"job create -n hello -r gpu -f {INLINE}",
        f"job create --config {INLINE} -n hello -r gpu",
        f"/batchai job create -n hello --cluster gpu --config-file   {INLINE}",
    ],
)
def test_inline_json_after_any_config_spelling(text: str) -> None:
    command = parse(text)
    assert isinstance(command, JobCreate)
    assert command.config == ConfigRef("inline", INLINE)
    assert command.cluster == "gpu"


def test_inline_json_from_slack_escapes_and_smart_quotes() -> None:
    slack_text = "job create -n x -r c --config {“cmd”: “a &gt; b &amp;&amp; c &lt; d”}"
    command = parse(slack_text)
    assert isinstance(command, JobCreate)
    assert command.config == ConfigRef("inline", '{"cmd": "a > b && c < d"}')


def test_quoted_inline_json_is_inline() -> None:
    command = parse("""job create -n x -r c --config '{"a": "b c"}'""")
    assert isinstance(command, JobCreate)
    assert command.config == ConfigRef("inline", '{"a": "b c"}')


def test_inline_json_on_multiple_lines() -> None:
    body = '{\n  "properties": {\n    "nodeCount": 2\n  }\n}'
    command = parse(f"job create -n x -r c --config {body}\n-o table")
    assert isinstance(command, JobCreate)
    assert command.config == ConfigRef("inline", body)
    assert command.output == "table"


def test_braces_elsewhere_are_not_json() -> None:
    command = parse("cluster create -n c -s S1 --setup-task echo{a,b} --setup-task-output logs")
    assert isinstance(command, ClusterCreate)
    assert command.setup_task == "echo{a,b}"


def test_slack_escapes_and_smart_quotes_in_values() -> None:
    command = parse(
        "cluster create -n c -s S1 --setup-task “echo a &gt; b # not a comment” "
        "--setup-task-output logs"
    )
    assert isinstance(command, ClusterCreate)
    assert command.setup_task == "echo a > b # not a comment"


# --------------------------------------------------------------------------- properties

_VOCABULARY = [
    *{word for spec in COMMANDS for word in spec.path},
    *{name for spec in COMMANDS for flag in spec.flags for name in flag.names},
    "az",
    "batchai",
    "/batchai",
    "help",
    "x",
    "mycluster",
    "5",
    "-1",
    "101",
    "table",
    "tsv",
    "..",
    "/etc",
    "{",
    "}",
    '{"a": "b c"}',
    "'",
    '"',
    "“",
    "=",
    "—name",
    "&lt;",
    "job.json",
    "manifests/jobs/mnist.json",
    "$2,500.00",
    "-5",
    "0",
    "2026-13",
    "2026-05",
    "3f9c2a7e",
    "#ml-team",
    "<#C0123ABCD|ml-team>",
    "channel",
    "'too big'",
]


def _check_outcome(text: str, source: str) -> None:
    try:
        result = parse(text, source=source)  # type: ignore[arg-type]
    except UserError as err:
        assert "\n" not in str(err) and len(str(err).splitlines()) <= 1
        assert err.usage
    else:
        assert isinstance(result, Command)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=200), source=st.sampled_from(["slack", "console"]))
def test_any_text_parses_or_gives_a_one_line_user_error(text: str, source: str) -> None:
    _check_outcome(text, source)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(st.sampled_from(_VOCABULARY), max_size=12),
    source=st.sampled_from(["slack", "console"]),
)
def test_any_word_soup_parses_or_gives_a_one_line_user_error(words: list[str], source: str) -> None:
    _check_outcome(" ".join(words), source)


SECRET = "Zq9!s3cret"
# No quote characters around the secret: quoting it into another value is not "a password flag".
_UNQUOTED = [word for word in _VOCABULARY if not set(word) & set("'\"“")]


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(st.sampled_from(_UNQUOTED), max_size=6),
    after=st.lists(st.sampled_from(_UNQUOTED), max_size=6),
    spelling=st.sampled_from(["--password ", "-p ", "--password=", "-p=", "—password "]),
    prefix=st.sampled_from(["cluster create ", "/batchai cluster create -n c -s S1 ", ""]),
)
def test_a_password_flag_value_never_shows(
    before: list[str], after: list[str], spelling: str, prefix: str
) -> None:
    text = prefix + " ".join([*before, spelling + SECRET, *after])
    try:
        command = parse(text)
    except UserError as err:
        assert SECRET not in str(err)
    else:
        assert SECRET not in repr(command)
