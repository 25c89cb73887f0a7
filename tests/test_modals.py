"""The job-create modal: a view Slack accepts, and every way a submission can be wrong or right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.models.views import View

from handlers.commands import job_request
from handlers.commandspec import ConfigRef, JobCreate
from handlers.modals import (
    BLOCK_CLUSTER,
    BLOCK_COMMAND,
    BLOCK_HOURS,
    BLOCK_IMAGE,
    BLOCK_INPUT_DIR,
    BLOCK_JSON,
    BLOCK_MANIFEST,
    BLOCK_NAME,
    BLOCK_NODES,
    BLOCK_OUTPUT_DIR,
    BLOCK_SWEEP,
    BLOCK_SWEEP_METRIC,
    CALLBACK_JOB_CREATE,
    STALE_FORM,
    JobForm,
    JobPrefill,
    error_block,
    job_create_modal,
    mount_paths_of,
    parse_job_create,
    prefill_of,
)
from services.core.errors import Conflict, UserError
from services.jobspec import LaunchContext, NodeInfo, load_job_spec, plan_launch
from services.models import ClusterView, NodeCounts, ShareMount
from tests.conftest import make_cluster

MNIST = (Path(__file__).resolve().parent.parent / "manifests" / "jobs" / "mnist.json").read_text()


def view_of(name: str = "gpu", *, mount: str | None = "afs", **changes: Any) -> ClusterView:
    mounts = (ShareMount("data", mount),) if mount else ()
    cluster = make_cluster(name, vm_size="Standard_NC24ads_A100_v4", mounts=mounts, **changes)
    return ClusterView(cluster, NodeCounts(idle=2, running=1), queued_jobs=0)


CLUSTERS = [view_of("gpu"), view_of("bare", mount=None)]


def modal(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(clusters=CLUSTERS, manifests=["mnist", "cifar"], channel_id="C42")
    args.update(kw)
    return job_create_modal(**args)


def input_blocks(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["block_id"]: b for b in view["blocks"] if b["type"] == "input"}


def submit(view: dict[str, Any] | None = None, **answers: str | None) -> dict[str, Any]:
    """The view as Slack sends it back in view_submission: state.values from the modal's own
    block and action ids, filled with `answers` (by block id) or the element's initial value
    (or option)."""
    view = view or modal()
    values: dict[str, Any] = {}
    for block_id, block in input_blocks(view).items():
        element = block["element"]
        initial = element.get("initial_value") or (element.get("initial_option") or {}).get("value")
        answer = answers.get(block_id, initial)
        if element["type"] == "static_select":
            chosen = next((o for o in element["options"] if o["value"] == answer), None)
            state: dict[str, Any] = {"type": "static_select", "selected_option": chosen}
        else:
            state = {"type": element["type"], "value": answer}
        values[block_id] = {element["action_id"]: state}
    unknown = set(answers) - set(values)
    assert not unknown, f"no such input blocks: {unknown}"
    return {**view, "id": "V1", "state": {"values": values}}


GOOD = {BLOCK_CLUSTER: "gpu", BLOCK_NAME: "mnist-1", BLOCK_COMMAND: "python train.py"}
MOUNTS = mount_paths_of(CLUSTERS)


def parse(**answers: str | None) -> JobForm | dict[str, str]:
    return parse_job_create(submit(**{**GOOD, **answers}), mount_paths=MOUNTS)


def errors_of(**answers: str | None) -> dict[str, str]:
    result = parse(**answers)
    assert isinstance(result, dict), result
    assert set(result) <= set(input_blocks(modal())), "errors must name input blocks"
    assert all(message and "\n" not in message for message in result.values())
    return result


def form_of(**answers: str | None) -> JobForm:
    result = parse(**answers)
    assert isinstance(result, JobForm), result
    return result


# ----------------------------------------------------------------------------- the view


def test_modal_passes_the_sdk_validators_unchanged() -> None:
    view = modal(prices={"STANDARD_NC24ADS_A100_V4": "$3.673/h"})
    assert View(**view).to_dict() == view  # validators ran, and nothing was dropped
    assert view["type"] == "modal"
    assert view["callback_id"] == CALLBACK_JOB_CREATE
    assert view["title"]["text"] == "Submit a job"
    assert view["submit"]["text"] and view["close"]["text"]
    assert json.loads(view["private_metadata"]) == {"channel_id": "C42"}
    assert len(view["blocks"]) <= 100


def test_modal_has_every_field_with_the_right_element() -> None:
    inputs = input_blocks(modal())
    kinds = {block_id: block["element"]["type"] for block_id, block in inputs.items()}
    assert kinds == {
        BLOCK_CLUSTER: "static_select",
        BLOCK_NAME: "plain_text_input",
        BLOCK_COMMAND: "plain_text_input",
        BLOCK_IMAGE: "plain_text_input",
        BLOCK_NODES: "number_input",
        BLOCK_HOURS: "number_input",
        BLOCK_INPUT_DIR: "plain_text_input",
        BLOCK_OUTPUT_DIR: "plain_text_input",
        BLOCK_MANIFEST: "static_select",
        BLOCK_JSON: "plain_text_input",
        BLOCK_SWEEP: "plain_text_input",
        BLOCK_SWEEP_METRIC: "plain_text_input",
    }
    optional = {block_id for block_id, block in inputs.items() if block["optional"]}
    assert optional == {
        BLOCK_COMMAND,
        BLOCK_IMAGE,
        BLOCK_INPUT_DIR,
        BLOCK_OUTPUT_DIR,
        BLOCK_MANIFEST,
        BLOCK_JSON,
        BLOCK_SWEEP,
        BLOCK_SWEEP_METRIC,
    }
    nodes, hours = inputs[BLOCK_NODES]["element"], inputs[BLOCK_HOURS]["element"]
    assert (nodes["is_decimal_allowed"], nodes["min_value"], nodes["initial_value"]) == (
        False,
        "1",
        "1",
    )
    assert (hours["is_decimal_allowed"], hours["initial_value"]) == (True, "1")
    assert inputs[BLOCK_COMMAND]["element"]["multiline"] is True
    assert inputs[BLOCK_JSON]["element"]["multiline"] is True
    texts = json.dumps(view_texts(modal()))
    assert "Fill the form, or pick a manifest, or paste a job.json" in texts


def view_texts(view: dict[str, Any]) -> list[str]:
    out = []
    for block in view["blocks"]:
        if block["type"] == "context":
            out += [e["text"] for e in block["elements"]]
        elif block["type"] == "section":
            out.append(block["text"]["text"])
    return out


def test_cluster_options_show_name_size_nodes_and_price() -> None:
    view = modal(prices={"standard_nc24ads_a100_v4": "$3.673/h"})
    options = input_blocks(view)[BLOCK_CLUSTER]["element"]["options"]
    assert [o["value"] for o in options] == ["gpu", "bare"]
    assert options[0]["text"]["text"] == "gpu · Standard_NC24ads_A100_v4 · 2/3 idle · $3.673/h"
    assert "$" not in modal()["blocks"][1]["element"]["options"][0]["text"]["text"]


def test_many_clusters_are_capped_and_long_names_fit() -> None:
    views = [view_of(f"cluster-{i:03d}-" + "x" * 50) for i in range(150)]
    view = modal(clusters=views)
    View(**view).to_dict()
    options = input_blocks(view)[BLOCK_CLUSTER]["element"]["options"]
    assert len(options) == 100
    assert all(len(o["text"]["text"]) <= 75 for o in options)
    assert options[0]["value"] == views[0].cluster.name  # the value is never shortened
    assert "first 100 of 150" in input_blocks(view)[BLOCK_CLUSTER]["hint"]["text"]


def test_one_cluster_is_preselected() -> None:
    select = input_blocks(modal(clusters=[view_of()]))[BLOCK_CLUSTER]["element"]
    assert select["initial_option"] == select["options"][0]
    assert "initial_option" not in input_blocks(modal())[BLOCK_CLUSTER]["element"]


def test_without_manifests_there_is_no_manifest_picker() -> None:
    view = modal(manifests=[])
    View(**view).to_dict()
    assert BLOCK_MANIFEST not in input_blocks(view)
    assert isinstance(parse_job_create(submit(view, **GOOD), mount_paths=MOUNTS), JobForm)


def test_without_clusters_the_modal_explains_and_has_no_submit() -> None:
    view = modal(clusters=[])
    View(**view).to_dict()
    assert "submit" not in view
    assert not input_blocks(view)
    assert "/batchai cluster create" in view_texts(view)[0]
    assert "--afs-name" in view_texts(view)[0]


# ----------------------------------------------------------------------------- errors


def test_no_cluster() -> None:
    assert errors_of(**{BLOCK_CLUSTER: None}) == {BLOCK_CLUSTER: "Choose a cluster."}


@pytest.mark.parametrize("name", ["", "has space", "a/b", "jöb", "x" * 65, "semi;colon"])
def test_bad_name(name: str) -> None:
    assert set(errors_of(**{BLOCK_NAME: name})) == {BLOCK_NAME}


@pytest.mark.parametrize("nodes", ["0", "101", "-3", "2.5", "", "many"])
def test_bad_node_count(nodes: str) -> None:
    errors = errors_of(**{BLOCK_NODES: nodes})
    assert set(errors) == {BLOCK_NODES}


@pytest.mark.parametrize("hours", ["200", "0", "-1", "168.01", "0.0001", "NaN", "Infinity", "x"])
def test_bad_max_hours(hours: str) -> None:
    errors = errors_of(**{BLOCK_HOURS: hours})
    assert set(errors) == {BLOCK_HOURS}
    assert "168" in errors[BLOCK_HOURS] or "hours" in errors[BLOCK_HOURS]


def test_no_source_at_all() -> None:
    errors = errors_of(**{BLOCK_COMMAND: None})
    assert set(errors) == {BLOCK_COMMAND}
    assert "manifest" in errors[BLOCK_COMMAND] and "job.json" in errors[BLOCK_COMMAND]


def test_blank_command_counts_as_none() -> None:
    assert set(errors_of(**{BLOCK_COMMAND: "   \n "})) == {BLOCK_COMMAND}


C, M, J = BLOCK_COMMAND, BLOCK_MANIFEST, BLOCK_JSON


@pytest.mark.parametrize(
    "extra,flagged",
    [
        ({M: "mnist"}, {C, M}),
        ({J: MNIST}, {C, J}),
        ({M: "mnist", J: MNIST}, {C, M, J}),
        ({C: None, M: "mnist", J: MNIST}, {M, J}),
    ],
)
def test_several_sources(extra: dict[str, str | None], flagged: set[str]) -> None:
    errors = errors_of(**extra)
    assert set(errors) == flagged
    assert all("only one of" in message for message in errors.values())


@pytest.mark.parametrize(
    "text,where",
    [
        ('{"properties": {"nodeCount": 1,}}', "line 1, column 32"),
        ('{\n  "properties": {\n    "nodeCount" 1\n  }\n}', "line 3, column 17"),
        ("{", "line 1, column 2"),
    ],
)
def test_bad_pasted_json_names_line_and_column(text: str, where: str) -> None:
    errors = errors_of(**{BLOCK_COMMAND: None, BLOCK_JSON: text})
    assert set(errors) == {BLOCK_JSON}
    assert errors[BLOCK_JSON].startswith(f"Invalid JSON at {where}: ")


def test_pasted_json_must_be_an_object() -> None:
    errors = errors_of(**{BLOCK_COMMAND: None, BLOCK_JSON: "[1, 2]"})
    assert "JSON object" in errors[BLOCK_JSON]


def test_cluster_without_a_share_cannot_take_a_form_job() -> None:
    errors = errors_of(**{BLOCK_CLUSTER: "bare"})
    assert set(errors) == {BLOCK_CLUSTER}
    assert "--afs-name" in errors[BLOCK_CLUSTER]
    assert "bare" in errors[BLOCK_CLUSTER]


def test_cluster_without_a_share_can_take_a_job_json() -> None:
    form = form_of(**{BLOCK_CLUSTER: "bare", BLOCK_COMMAND: None, BLOCK_MANIFEST: "mnist"})
    assert (form.cluster, form.manifest, form.config_json) == ("bare", "mnist", None)


def test_form_only_fields_with_a_manifest_are_flagged_not_ignored() -> None:
    errors = errors_of(**{C: None, M: "mnist", BLOCK_IMAGE: "ubuntu", BLOCK_INPUT_DIR: "d"})
    assert set(errors) == {BLOCK_IMAGE, BLOCK_INPUT_DIR}


@pytest.mark.parametrize(
    "block,value",
    [
        (BLOCK_IMAGE, "not an image"),
        (BLOCK_INPUT_DIR, "../etc"),
        (BLOCK_OUTPUT_DIR, "a/../../b"),
        (BLOCK_OUTPUT_DIR, "/tmp/out"),
        (BLOCK_OUTPUT_DIR, "$HOME/out"),
    ],
)
def test_bad_form_fields(block: str, value: str) -> None:
    assert set(errors_of(**{block: value})) == {block}


def test_several_errors_at_once() -> None:
    errors = errors_of(**{BLOCK_NAME: "bad name", BLOCK_NODES: "0", BLOCK_CLUSTER: None})
    assert set(errors) == {BLOCK_NAME, BLOCK_NODES, BLOCK_CLUSTER}


# ----------------------------------------------------------------------------- good submissions


def test_form_builds_a_job_json_the_loader_accepts() -> None:
    form = form_of(
        **{
            BLOCK_NODES: "4",
            BLOCK_HOURS: "1.5",
            BLOCK_IMAGE: "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime",
            BLOCK_COMMAND: "python $AZ_BATCHAI_INPUT_INPUT/train.py --out $AZ_BATCHAI_OUTPUT_MODEL",
            BLOCK_INPUT_DIR: "data/mnist",
            BLOCK_OUTPUT_DIR: "models",
        }
    )
    assert (form.name, form.cluster, form.channel_id, form.manifest) == (
        "mnist-1",
        "gpu",
        "C42",
        None,
    )
    assert form.config_json is not None
    spec = load_job_spec(form.config_json)
    assert spec.api_version == "2018-05-01"
    assert spec.toolkit == "custom"
    props = spec.properties
    assert props.node_count == 4
    assert props.container_settings is not None
    assert props.container_settings.image_source_registry.image == (
        "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime"
    )
    assert props.constraints is not None
    assert props.constraints.max_wall_clock_time == "1:30:00"
    assert props.std_out_err_path_prefix == "$AZ_BATCHAI_MOUNT_ROOT/afs"
    assert [(d.id, d.path) for d in props.input_directories] == [
        ("INPUT", "$AZ_BATCHAI_MOUNT_ROOT/afs/data/mnist")
    ]
    assert [(d.id, d.path_prefix, d.path_suffix) for d in props.output_directories] == [
        ("MODEL", "$AZ_BATCHAI_MOUNT_ROOT/afs/models", "model")
    ]


def test_minimal_form_has_no_image_and_no_directories() -> None:
    data = json.loads(form_of().config_json or "")
    props = data["properties"]
    assert data["$schema"].endswith("/2018-05-01/job.json")
    assert props["nodeCount"] == 1
    assert props["constraints"] == {"maxWallClockTime": "1:00:00"}
    assert props["customToolkitSettings"] == {"commandLine": "python train.py"}
    assert not {"containerSettings", "inputDirectories", "outputDirectories"} & set(props)


def test_form_job_logs_and_outputs_land_on_the_share_when_launched() -> None:
    form = form_of(**{BLOCK_NODES: "2", BLOCK_OUTPUT_DIR: "models"})
    spec = load_job_spec(form.config_json or "")
    ctx = LaunchContext(
        subscription="local",
        resource_group="rg",
        workspace="ws",
        experiment="exp",
        cluster_name="gpu",
        job_name=form.name,
        job_uuid="abc123",
        mount_root="/mnt/node",
        job_mount_root="/mnt/jobs",
        job_temp_root="/mnt/tmp",
        nodes=(NodeInfo(0, "127.0.0.1"), NodeInfo(1, "127.0.0.1")),
    )
    plan = plan_launch(spec, ctx)
    assert plan.stdouterr_dir.startswith("/mnt/node/afs/")
    assert plan.stdouterr_dir.endswith("/stdouterr")
    assert plan.output_dirs[0].path.startswith("/mnt/node/afs/models/")
    assert plan.output_dirs[0].path.endswith("/outputs/model")
    # Batch AI's custom toolkit runs the command on the first node and lists all of them.
    assert plan.node_count == 2
    assert plan.processes[0].argv == ("bash", "-c", "python train.py")


@pytest.mark.parametrize(
    "hours,wall_clock", [("168", "168:00:00"), ("0.01", "0:00:36"), ("2", "2:00:00")]
)
def test_max_hours_become_wall_clock_time(hours: str, wall_clock: str) -> None:
    spec = load_job_spec(form_of(**{BLOCK_HOURS: hours}).config_json or "")
    assert spec.properties.constraints is not None
    assert spec.properties.constraints.max_wall_clock_time == wall_clock


@pytest.mark.parametrize(
    "given,path",
    [
        ("$AZ_BATCHAI_JOB_MOUNT_ROOT/extra", "$AZ_BATCHAI_JOB_MOUNT_ROOT/extra"),
        ("/datasets/imagenet", "/datasets/imagenet"),
        (".", "$AZ_BATCHAI_MOUNT_ROOT/afs"),
        ("/data/", "/data/"),
    ],
)
def test_input_dir_forms(given: str, path: str) -> None:
    spec = load_job_spec(form_of(**{BLOCK_INPUT_DIR: given}).config_json or "")
    assert spec.properties.input_directories[0].path == path


def test_manifest_submission() -> None:
    form = form_of(**{BLOCK_COMMAND: None, BLOCK_MANIFEST: "cifar"})
    assert form == JobForm("mnist-1", "gpu", None, "cifar", "C42")


def test_pasted_json_is_passed_on_verbatim() -> None:
    form = form_of(**{BLOCK_COMMAND: None, BLOCK_JSON: MNIST})
    assert form.manifest is None
    assert form.config_json == MNIST.strip()
    assert load_job_spec(form.config_json).properties.node_count == 1


@pytest.mark.parametrize(
    "metadata",
    [
        "",
        "m",
        "{",
        "[1]",
        '{"channel_id": 7}',
        '{"channel_id": ""}',
        '{"channel_id": "<!channel>"}',
        '{"other": "C42"}',
        "[" * 5000,
    ],
)
def test_a_view_whose_metadata_is_not_ours_gets_one_clear_error(metadata: str) -> None:
    view = submit(**GOOD)
    view["private_metadata"] = metadata
    assert parse_job_create(view, mount_paths=MOUNTS) == {BLOCK_NAME: STALE_FORM}


def test_the_form_starts_from_what_job_create_was_given() -> None:
    given = prefill_of(
        JobCreate(name="mnist-2", cluster="gpu", config=ConfigRef("manifest", "cifar"))
    )
    view = modal(prefill=given)
    assert View(**view).to_dict() == view
    blocks = input_blocks(view)
    assert blocks[BLOCK_NAME]["element"]["initial_value"] == "mnist-2"
    assert blocks[BLOCK_CLUSTER]["element"]["initial_option"]["value"] == "gpu"
    assert blocks[BLOCK_MANIFEST]["element"]["initial_option"]["value"] == "cifar"
    assert "initial_value" not in blocks[BLOCK_JSON]["element"]
    form = parse_job_create(submit(view), mount_paths=MOUNTS)  # submitted as it opened
    assert form == JobForm("mnist-2", "gpu", None, "cifar", "C42")


def test_prefill_takes_inline_json_and_a_manifest_path_and_skips_what_is_not_offered() -> None:
    inline = prefill_of(JobCreate(config=ConfigRef("inline", MNIST)))
    blocks = input_blocks(modal(prefill=inline))
    assert blocks[BLOCK_JSON]["element"]["initial_value"] == MNIST
    assert "initial_value" not in blocks[BLOCK_NAME]["element"]
    path = prefill_of(JobCreate(config=ConfigRef("manifest", "manifests/jobs/mnist.json")))
    assert input_blocks(modal(prefill=path))[BLOCK_MANIFEST]["element"]["initial_option"] == {
        "text": {"type": "plain_text", "text": "mnist"},
        "value": "mnist",
    }
    elsewhere = JobPrefill(cluster="nope", manifest="nope", pasted="x" * 3001)
    blocks = input_blocks(modal(prefill=elsewhere))
    assert "initial_option" not in blocks[BLOCK_CLUSTER]["element"]
    assert "initial_option" not in blocks[BLOCK_MANIFEST]["element"]
    assert "initial_value" not in blocks[BLOCK_JSON]["element"]


def test_mount_paths_of_takes_the_first_share() -> None:
    two = make_cluster("two", mounts=(ShareMount("a", "first"), ShareMount("b", "second")))
    views = [ClusterView(two, NodeCounts(), 0), view_of("bare", mount=None)]
    assert mount_paths_of(views) == {"two": "first"}


def test_a_refusal_marks_the_input_its_typed_field_names() -> None:
    """The service's refusal names its field (`UserError.field`), whatever its words: a node
    count the cluster cannot hold marks the node count, one naming no field the cluster."""
    form = form_of(**{BLOCK_NODES: "4"})
    view = submit(**{**GOOD, BLOCK_NODES: "4"})
    too_big = UserError("the cluster holds at most 2 of those", field="node_count")
    assert error_block(too_big, form, view) == BLOCK_NODES
    assert error_block(UserError("a node went away"), form, view) == BLOCK_CLUSTER
    assert error_block(UserError("which one?", field="cluster"), form, view) == BLOCK_CLUSTER
    assert error_block(Conflict("job mnist-1 already exists"), form, view) == BLOCK_NAME


def test_the_form_submits_the_job_create_the_command_would_parse() -> None:
    form = form_of()
    assert form.command == JobCreate(
        name=form.name, cluster=form.cluster, config=ConfigRef("inline", form.config_json or "")
    )
    assert job_request(form.command) == job_request(
        JobCreate(name=form.name, cluster=form.cluster, config=form.command.config)
    )
