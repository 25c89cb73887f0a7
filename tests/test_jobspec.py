"""Loading Batch AI job/cluster/file-server JSON: models, versions, limits and one-line errors."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.core.errors import SpecError, UserError
from services.jobspec import (
    ClusterSpec,
    FileServerSpec,
    JobSpec,
    dump,
    load_any,
    load_cluster_spec,
    load_file_server_spec,
    load_job_spec,
    max_wall_clock,
    parse_duration,
    placeholders,
    substitute,
    toolkit_name,
)

FIXTURES = Path(__file__).parent / "fixtures" / "jobs"
TRAILING_COMMA = {
    "TensorFlow-GPU@2018-05-15-1ace2a6/job.json": (7, 9),
    "TensorFlow-GPU-Distributed@2018-08-23-7cef9df/job.json": (25, 9),
}
ALL_FIXTURES = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*.json"))
LOADABLE = [name for name in ALL_FIXTURES if name not in TRAILING_COMMA]


def read(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def job(props: dict[str, Any] | None = None, **top: Any) -> str:
    """A minimal valid job.json with `props` merged into "properties"."""
    base: dict[str, Any] = {
        "nodeCount": 1,
        "customToolkitSettings": {"commandLine": "true"},
        "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/logs",
    }
    base.update(props or {})
    return json.dumps({**top, "properties": {k: v for k, v in base.items() if v is not None}})


def error_of(text: str | bytes, loader: Any = load_job_spec) -> str:
    with pytest.raises(SpecError) as info:
        loader(text, source="job.json")
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


# ----------------------------------------------------------------------------- fixtures


def test_fixture_set_covers_every_toolkit_era_and_document_kind() -> None:
    assert set(TRAILING_COMMA) <= set(ALL_FIXTURES)
    assert sum(name.startswith("azure-cli-tests/") for name in ALL_FIXTURES) == 9
    jobs = [s for s in (load_any(read(n)) for n in LOADABLE) if isinstance(s, JobSpec)]
    # The corpus has no Caffe recipe at all; Caffe is covered by inline specs.
    assert {s.toolkit for s in jobs} == {
        "cntk", "pytorch", "tensorflow", "caffe2", "chainer", "custom", "custommpi", "horovod"
    }  # fmt: skip
    assert {s.api_version for s in jobs} == {"2017-09-01-preview", "2018-03-01", "2018-05-01"}
    assert any(s.schema_url is None for s in jobs)


@pytest.mark.parametrize("name", LOADABLE)
def test_every_fixture_loads(name: str) -> None:
    spec = load_any(read(name), source=name)
    if "cluster" in name:
        assert isinstance(spec, ClusterSpec)
    elif name.endswith("file_server.json"):
        assert isinstance(spec, FileServerSpec)
    else:
        assert isinstance(spec, JobSpec)
        assert spec.properties.node_count in (1, 2)


@pytest.mark.parametrize("name", sorted(TRAILING_COMMA))
def test_trailing_comma_fixtures_fail_with_line_and_column(name: str) -> None:
    line, column = TRAILING_COMMA[name]
    message = error_of(read(name), load_any)
    assert message.startswith(f"job.json: invalid JSON at line {line}, column {column}: ")


@pytest.mark.parametrize(
    ("name", "toolkit", "api"),
    [
        ("CNTK-GPU-BrainScript/job.json", "cntk", "2017-09-01-preview"),
        ("CNTK-GPU-Python-Distributed@2017-10-09-876c4d0/job.json", "cntk", "2017-09-01-preview"),
        ("Chainer-GPU-Distributed@2017-10-09-876c4d0/job.json", "chainer", "2017-09-01-preview"),
        ("TensorFlow-GPU@2017-10-07-beb24e2/job.json", "tensorflow", "2017-09-01-preview"),
        ("Keras-DSVM/job.json", "custom", "2017-09-01-preview"),
        ("PyTorch-GPU-Distributed-Gloo@2018-06-07-5af5699/job.json", "pytorch", "2018-03-01"),
        ("PyTorch-GPU-Distributed-Gloo/job.json", "pytorch", "2018-05-01"),
        ("Caffe2-GPU-Distributed/job.json", "caffe2", "2018-05-01"),
        ("Chainer-GPU-Distributed-Infiniband/job.json", "chainer", "2018-05-01"),
        ("Horovod-Tensorflow/job.json", "horovod", "2018-05-01"),
        ("Distributed-Batch-Scoring-in-Tensorflow-with-GPU/job.json", "custommpi", "2018-05-01"),
        ("TensorFlow-GPU-Distributed/job.json", "tensorflow", "2018-05-01"),
        # No $schema: job-level mounts, or their root, mean 2018-03-01 at least.
        ("azure-cli-tests/job_with_file_systems.json", "custom", "2018-03-01"),
        ("azure-cli-tests/nop_job.json", "custom", "2018-03-01"),
        ("azure-cli-tests/custom_toolkit_job.json", "custom", "2017-09-01-preview"),
    ],
)
def test_fixture_toolkit_and_api_version(name: str, toolkit: str, api: str) -> None:
    spec = load_job_spec(read(name), source=name)
    assert toolkit_name(spec) == toolkit == spec.toolkit
    assert spec.api_version == api


def test_cluster_and_file_server_fixtures_are_read_into_their_models() -> None:
    auto = load_cluster_spec(read("azure-cli-tests/auto_scale_cluster_with_azure_files.json"))
    assert auto.location == "eastus"
    scale = auto.properties.scale_settings
    assert scale is not None and scale.auto_scale is not None
    assert (scale.auto_scale.minimum_node_count, scale.auto_scale.maximum_node_count) == (0, 1)
    setup = auto.properties.node_setup
    assert setup is not None and setup.mount_volumes is not None
    share = setup.mount_volumes.azure_file_shares[0]
    # The 2017 key `credentialsInfo` is read as `credentials`.
    assert share.credentials is not None
    assert share.credentials.account_key == "<AZURE_BATCHAI_STORAGE_KEY>"
    assert share.relative_mount_path == "azfiles"

    simple = load_cluster_spec(read("azure-cli-tests/simple_cluster.json"))
    assert simple.properties.vm_size == "STANDARD_D1"
    assert simple.properties.scale_settings is not None
    manual = simple.properties.scale_settings.manual
    assert manual is not None and manual.target_node_count == 1

    nfs = load_file_server_spec(read("azure-cli-tests/file_server.json"))
    assert nfs.properties.data_disks.disk_size_in_gb == 10
    assert nfs.properties.data_disks.disk_count == 2


def test_load_any_picks_by_schema_file_name_before_shape() -> None:
    text = json.dumps(
        {
            "$schema": "https://raw.githubusercontent.com/Azure/BatchAI/master/schemas/2018-05-01/cluster.json",
            "properties": {"vmSize": "STANDARD_NC6", "nodeSetup": {}},
        }
    )
    assert isinstance(load_any(text), ClusterSpec)
    cluster_schema = json.loads(text)["$schema"]
    with pytest.raises(SpecError, match=r"^<inline>: \$schema: names a cluster or file-server"):
        load_job_spec(job(**{"$schema": cluster_schema}))


# ----------------------------------------------------------------------------- unknown keys


def test_typo_in_a_key_is_reported_with_its_path_and_a_suggestion() -> None:
    text = job({"nodeCount": None, "nodecount": 2})
    assert error_of(text) == (
        "job.json: properties.nodecount: unknown key (did you mean 'nodeCount'?) (and 1 more)"
    )


def test_unknown_keys_deep_inside_lists_name_the_index() -> None:
    text = job({"inputDirectories": [{"id": "A", "path": "/x"}, {"id": "B", "pth": "/y"}]})
    message = error_of(text)
    assert message.startswith("job.json: properties.inputDirectories[1].pth: unknown key")
    assert "did you mean 'path'?" in message


def test_unknown_key_without_a_near_miss_gets_no_suggestion() -> None:
    text = job({"customToolkitSettings": {"commandLine": "true", "zzz": 1}})
    assert error_of(text) == "job.json: properties.customToolkitSettings.zzz: unknown key"


def test_unknown_top_level_key_is_an_error() -> None:
    assert "job.json: propertees: unknown key (did you mean 'properties'?)" in error_of(
        json.dumps({"propertees": {}})
    )


def test_known_legacy_keys_are_read_silently() -> None:
    spec = load_job_spec(
        job(
            {
                "toolType": "custom",
                "priority": 100,
                "location": "eastus",
                "experimentName": "exp",
                "constraints": {"maxWallClockTime": "1:00:00", "maxTaskRetryCount": 3},
                "outputDirectories": [
                    {"id": "M", "pathPrefix": "/p", "type": "model", "createNew": False}
                ],
            }
        )
    )
    assert spec.properties.priority == 100
    assert spec.properties.output_directories[0].create_new is False


def test_early_recipe_spellings_are_read_as_the_current_keys() -> None:
    cntk = load_job_spec(read("CNTK-GPU-Python-Distributed@2017-10-09-876c4d0/job.json"))
    assert cntk.properties.cntk_settings is not None
    assert cntk.properties.cntk_settings.process_count == 2
    chainer = load_job_spec(read("Chainer-GPU-Distributed@2017-10-09-876c4d0/job.json"))
    assert chainer.properties.chainer_settings is not None
    assert chainer.properties.chainer_settings.command_line_args == "-g -o $AZ_BATCHAI_OUTPUT_MODEL"
    both = {
        "customToolkitSettings": None,
        "chainerSettings": {
            "pythonScriptFilePath": "a.py",
            "commandLineArgs": "-g",
            "masterCommandLineArgs": "-o",
        },
    }
    assert "not both" in error_of(job(both))


# ----------------------------------------------------------------------------- toolkits


def test_a_job_without_a_toolkit_is_refused() -> None:
    message = error_of(job({"customToolkitSettings": None}))
    assert message.startswith("job.json: properties: exactly one toolkit settings block")
    assert "found none" in message


def test_a_job_with_two_toolkits_names_both() -> None:
    message = error_of(job({"horovodSettings": {"pythonScriptFilePath": "t.py"}}))
    assert "found 2: customToolkitSettings, horovodSettings" in message


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"cntkSettings": {}}, "give configFilePath (BrainScript) or pythonScriptFilePath"),
        ({"cntkSettings": {"configFilePath": "a", "pythonScriptFilePath": "b"}}, "not both"),
        ({"cntkSettings": {"languageType": "BrainScript", "pythonScriptFilePath": "b"}}, "needs"),
        ({"caffeSettings": {"commandLineArgs": "-x"}}, "exactly one of configFilePath"),
        (
            {"caffeSettings": {"configFilePath": "s.prototxt", "pythonInterpreterPath": "py"}},
            "pythonInterpreterPath applies only",
        ),
        ({"pyTorchSettings": {"pythonScriptFilePath": "t.py", "communicationBackend": "x"}}, "TCP"),
        ({"tensorFlowSettings": {}}, "pythonScriptFilePath: Field required"),
        ({"customMpiSettings": {"commandLine": "x", "processCount": 0}}, "greater than or equal"),
        ({"horovodSettings": {"pythonScriptFilePath": "t.py", "processCount": "2"}}, "integer"),
        (
            {"tensorFlowSettings": {"pythonScriptFilePath": "t.py", "parameterServerCount": 2}},
            "must not exceed nodeCount",
        ),
        (
            {
                "tensorFlowSettings": {
                    "pythonScriptFilePath": "t.py",
                    "workerCount": 1024,
                    "parameterServerCount": 1,
                }
            },
            "at most 1024 processes",
        ),
    ],
)
def test_toolkit_blocks_are_checked(settings: dict[str, Any], needle: str) -> None:
    message = error_of(job({"customToolkitSettings": None, **settings}))
    assert needle in message


def test_cntk_language_is_read_in_any_case() -> None:
    spec = load_job_spec(
        job(
            {
                "customToolkitSettings": None,
                "cntkSettings": {"languageType": "python", "pythonScriptFilePath": "a.py"},
            }
        )
    )
    assert spec.properties.cntk_settings is not None
    assert spec.properties.cntk_settings.language == "Python"


def test_argument_strings_that_cannot_be_split_are_refused_at_load() -> None:
    text = job(
        {
            "customToolkitSettings": None,
            "horovodSettings": {"pythonScriptFilePath": "t.py", "commandLineArgs": "--x 'open"},
        }
    )
    assert error_of(text) == (
        "job.json: properties.horovodSettings.commandLineArgs: "
        "cannot be split into arguments: No closing quotation"
    )


# ----------------------------------------------------------------------------- versions

S = "https://raw.githubusercontent.com/Azure/BatchAI/master/schemas/{}/job.json"
_VOLUMES = {"azureFileShares": [{"azureFileUrl": "https://a/b", "relativeMountPath": "afs"}]}


@pytest.mark.parametrize(
    ("props", "api"),
    [
        ({}, "2017-09-01-preview"),
        ({"secrets": [{"name": "TOKEN", "value": "x"}]}, "2018-03-01"),
        ({"mountVolumes": _VOLUMES}, "2018-03-01"),
        (
            {"customToolkitSettings": None, "pyTorchSettings": {"pythonScriptFilePath": "t.py"}},
            "2018-03-01",
        ),
        (
            {"customToolkitSettings": None, "horovodSettings": {"pythonScriptFilePath": "t.py"}},
            "2018-05-01",
        ),
        ({"customToolkitSettings": None, "customMpiSettings": {"commandLine": "x"}}, "2018-05-01"),
        ({"schedulingPriority": "high"}, "2018-05-01"),
        (
            {"containerSettings": {"imageSourceRegistry": {"image": "u"}, "shmSize": "8gb"}},
            "2018-05-01",
        ),
        ({"secrets": [{"name": "A", "value": "x"}], "schedulingPriority": "low"}, "2018-05-01"),
    ],
)
def test_api_version_is_inferred_from_the_features_used(props: dict[str, Any], api: str) -> None:
    assert load_job_spec(job(props)).api_version == api


@pytest.mark.parametrize("api", ["2017-09-01-preview", "2018-03-01", "2018-05-01"])
def test_api_version_comes_from_schema_when_present(api: str) -> None:
    assert load_job_spec(job(**{"$schema": S.format(api)})).api_version == api


@pytest.mark.parametrize(
    ("api", "props", "path"),
    [
        (
            "2017-09-01-preview",
            {"customToolkitSettings": None, "horovodSettings": {"pythonScriptFilePath": "t.py"}},
            "properties.horovodSettings",
        ),
        (
            "2018-03-01",
            {"customToolkitSettings": None, "customMpiSettings": {"commandLine": "x"}},
            "properties.customMpiSettings",
        ),
        (
            "2017-09-01-preview",
            {"customToolkitSettings": None, "pyTorchSettings": {"pythonScriptFilePath": "t.py"}},
            "properties.pyTorchSettings",
        ),
        ("2017-09-01-preview", {"mountVolumes": _VOLUMES}, "properties.mountVolumes"),
        (
            "2018-03-01",
            {"containerSettings": {"imageSourceRegistry": {"image": "u"}, "shmSize": "1g"}},
            "properties.containerSettings.shmSize",
        ),
    ],
)
def test_a_feature_newer_than_the_declared_version_is_an_error(
    api: str, props: dict[str, Any], path: str
) -> None:
    message = error_of(job(props, **{"$schema": S.format(api)}))
    assert message.startswith(f"job.json: {path}: not available in API version {api}")


def test_unsupported_or_unreadable_schema_urls_are_refused() -> None:
    assert "API version '2019-01-01' is not supported" in error_of(
        job(**{"$schema": S.format("2019-01-01")})
    )
    assert "cannot tell the API version" in error_of(job(**{"$schema": "https://x/job.json"}))


# ----------------------------------------------------------------------------- durations

DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7.00:00:00", 7 * DAY),
        ("1:00:00", timedelta(hours=1)),
        ("00:30:00", timedelta(minutes=30)),
        ("0:00:30.5", timedelta(seconds=30.5)),
        ("7 days, 0:00:00", 7 * DAY),
        ("1 day, 2:03:04", DAY + timedelta(hours=2, minutes=3, seconds=4)),
        ("PT1H", timedelta(hours=1)),
        ("PT90M", timedelta(minutes=90)),
        ("P1DT2H30M", DAY + timedelta(hours=2, minutes=30)),
        ("P1W", 7 * DAY),
        ("pt45s", timedelta(seconds=45)),
    ],
)
def test_durations_in_every_form_the_users_wrote(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    spec = load_job_spec(job({"constraints": {"maxWallClockTime": text}}))
    assert max_wall_clock(spec) == expected


@pytest.mark.parametrize("text", ["", "1h", "P", "PT", "P1DT", "1:60:00", "1.24:00:00", "soon"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
    assert "properties.constraints.maxWallClockTime" in error_of(
        job({"constraints": {"maxWallClockTime": text}})
    )


def test_wall_clock_defaults_to_seven_days() -> None:
    assert max_wall_clock(load_job_spec(job())) == 7 * DAY
    assert max_wall_clock(load_job_spec(job({"constraints": {}}))) == 7 * DAY


@pytest.mark.parametrize("text", ["7.00:00:01", "8 days, 0:00:00", "P8D", "169:00:00"])
def test_more_than_seven_days_is_refused(text: str) -> None:
    assert error_of(job({"constraints": {"maxWallClockTime": text}})) == (
        "job.json: properties.constraints.maxWallClockTime: "
        "must be at most 7 days (the Batch AI job lifetime limit)"
    )


def test_zero_wall_clock_is_refused() -> None:
    assert "longer than zero" in error_of(job({"constraints": {"maxWallClockTime": "PT0S"}}))


def test_a_timedelta_may_be_given_when_building_a_spec_in_python() -> None:
    data = json.loads(job())
    data["properties"]["constraints"] = {"maxWallClockTime": timedelta(hours=8)}
    spec = JobSpec.model_validate(data)
    assert spec.properties.constraints is not None
    assert spec.properties.constraints.max_wall_clock_time == "0.08:00:00"
    assert max_wall_clock(spec) == timedelta(hours=8)


# ----------------------------------------------------------------------------- JSON and limits


def test_validation_errors_are_one_line_with_source_and_path() -> None:
    assert error_of(job({"nodeCount": 0})) == (
        "job.json: properties.nodeCount: Input should be greater than or equal to 1"
    )
    assert error_of(job({"nodeCount": 101})) == (
        "job.json: properties.nodeCount: Input should be less than or equal to 100"
    )


def test_several_errors_show_the_first_and_a_count() -> None:
    message = error_of(job({"nodeCount": "2", "stdOutErrPathPrefix": 5, "priority": 5000}))
    assert message.startswith("job.json: properties.")
    assert message.endswith("(and 2 more)")


def test_default_source_and_user_error_type() -> None:
    with pytest.raises(UserError, match=r"^<inline>: properties.nodeCount: Field required$"):
        load_job_spec(job({"nodeCount": None}))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"properties": {"nodeCount": 1,}}', "invalid JSON at line 1, column 32: Expecting"),
        ('{\r\n  "properties":\r\n  [1,,2]\r\n}', "invalid JSON at line 3, column 6"),
        ('{"properties": {"nodeCount": NaN}}', "NaN is not valid JSON"),
        ('{"properties": {}, "properties": {}}', "duplicate key 'properties'"),
        ("[1, 2]", "expected a JSON object at the top level, found an array"),
        ('"job"', "found a string"),
        ("", "invalid JSON at line 1, column 1: Expecting value"),
    ],
)
def test_json_problems_are_reported_in_one_line(text: str, needle: str) -> None:
    assert needle in error_of(text)


def test_non_utf8_bytes_are_refused() -> None:
    assert "not UTF-8 text" in error_of(b'{"properties": {"x": "\xff"}}')


def test_bom_crlf_and_missing_final_newline_are_fine() -> None:
    original = read("TensorFlow-GPU/job.json")
    assert not original.endswith(b"\n")
    variant = b"\xef\xbb\xbf" + original.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert load_job_spec(variant) == load_job_spec(original)
    assert load_job_spec("\ufeff" + original.decode()) == load_job_spec(original)


def test_oversized_input_is_refused_before_parsing() -> None:
    big = job({"customToolkitSettings": {"commandLine": "x" * (1 << 20)}})
    assert error_of(big) == "job.json: too large (the limit is 1 MiB)"
    assert error_of(big.encode()).startswith("job.json: too large (")
    # Multi-byte characters count as bytes.
    wide = job({"customToolkitSettings": {"commandLine": "é" * 600_000}})
    assert "too large" in error_of(wide)


def test_deeply_nested_input_is_refused_without_recursion_error() -> None:
    assert error_of("[" * 200_000) == "job.json: JSON nested deeper than 64 levels"
    nested = '{"properties": ' + '{"a": ' * 70 + "1" + "}" * 70 + "}"
    assert error_of(nested) == "job.json: JSON nested deeper than 64 levels"


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    spec = load_job_spec(job({"customToolkitSettings": {"commandLine": "echo " + "[{" * 100}}))
    assert spec.properties.custom_toolkit_settings is not None


def test_sixty_four_levels_are_allowed() -> None:
    inner = "[" * 62 + "]" * 62  # plus the object and "properties" levels = 64
    with pytest.raises(SpecError, match="should be"):
        load_job_spec('{"properties": {"nodeCount": 1, "inputDirectories": ' + inner + "}}")


def test_messages_stay_on_one_line_even_with_hostile_keys() -> None:
    message = error_of(job({"bad\nkey\r": 1}))
    assert 'properties["bad\\nkey\\r"]: unknown key' in message


# ----------------------------------------------------------------------------- field checks


@pytest.mark.parametrize(
    ("props", "path", "needle"),
    [
        (
            {
                "mountVolumes": {
                    "azureFileShares": [{"azureFileUrl": "u", "relativeMountPath": "../x"}]
                }
            },
            "properties.mountVolumes.azureFileShares[0].relativeMountPath",
            "must not contain '..'",
        ),
        (
            {
                "mountVolumes": {
                    "unmanagedFileSystems": [{"mountCommand": "m", "relativeMountPath": "/abs"}]
                }
            },
            "properties.mountVolumes.unmanagedFileSystems[0].relativeMountPath",
            "relative path",
        ),
        (
            {
                "mountVolumes": {
                    "azureFileShares": [
                        {"azureFileUrl": "u", "relativeMountPath": "d"},
                        {"azureFileUrl": "v", "relativeMountPath": "d/"},
                    ]
                }
            },
            "properties.mountVolumes",
            "two volumes are mounted at 'd'",
        ),
        (
            {"outputDirectories": [{"id": "M", "pathPrefix": "/p", "pathSuffix": "a/../../x"}]},
            "properties.outputDirectories[0].pathSuffix",
            "'..'",
        ),
        (
            {"outputDirectories": [{"id": "MODEL-1", "pathPrefix": "/p"}]},
            "properties.outputDirectories[0].id",
            "letters, digits and _",
        ),
        (
            {"outputDirectories": [{"id": "stdouterr", "pathPrefix": "/p"}]},
            "properties.outputDirectories[0].id",
            "log directory",
        ),
        (
            {"inputDirectories": [{"id": "A", "path": "/a"}, {"id": "A", "path": "/b"}]},
            "properties",
            "inputDirectories: id 'A' is used twice",
        ),
        (
            {"environmentVariables": [{"name": "AZ_BATCHAI_TASK_INDEX", "value": "7"}]},
            "properties.environmentVariables[0].name",
            "set by the service",
        ),
        (
            {"environmentVariables": [{"name": "1X", "value": "7"}]},
            "properties.environmentVariables[0].name",
            "environment variable name",
        ),
        (
            {
                "environmentVariables": [{"name": "X", "value": "1"}],
                "secrets": [{"name": "X", "value": "2"}],
            },
            "properties",
            "name 'X' is used twice",
        ),
        (
            {"secrets": [{"name": "X"}]},
            "properties.secrets[0]",
            "exactly one of value or valueSecretReference",
        ),
        (
            {"priority": 1, "schedulingPriority": "low"},
            "properties",
            "not both",
        ),
        (
            {"schedulingPriority": "urgent"},
            "properties.schedulingPriority",
            "Input should be 'low', 'normal' or 'high'",
        ),
        (
            {
                "containerSettings": {
                    "imageSourceRegistry": {"image": "x", "credentials": {"username": "u"}}
                }
            },
            "properties.containerSettings.imageSourceRegistry.credentials",
            "exactly one of password or passwordSecretReference",
        ),
        (
            {"containerSettings": {"imageSourceRegistry": {"image": ""}}},
            "properties.containerSettings.imageSourceRegistry.image",
            "at least 1 character",
        ),
        (
            {"containerSettings": {"imageSourceRegistry": {"image": "x"}, "shmSize": "lots"}},
            "properties.containerSettings.shmSize",
            "--shm-size",
        ),
        (
            {"inputDirectories": {"id": "A"}},
            "properties.inputDirectories",
            "should be a JSON array",
        ),
        (
            {"jobPreparation": "apt update"},
            "properties.jobPreparation",
            "should be a JSON object",
        ),
    ],
)
def test_field_rules(props: dict[str, Any], path: str, needle: str) -> None:
    message = error_of(job(props))
    assert message.startswith(f"job.json: {path}: "), message
    assert needle in message


@pytest.mark.parametrize(
    ("scale", "needle"),
    [
        ({}, "exactly one of manual or autoScale"),
        (
            {
                "manual": {"targetNodeCount": 1},
                "autoScale": {"minimumNodeCount": 0, "maximumNodeCount": 1},
            },
            "exactly one",
        ),
        ({"autoScale": {"minimumNodeCount": 3, "maximumNodeCount": 2}}, "must not exceed"),
        ({"manual": {"targetNodeCount": 101}}, "less than or equal to 100"),
    ],
)
def test_cluster_scale_settings_are_checked(scale: dict[str, Any], needle: str) -> None:
    text = json.dumps({"properties": {"vmSize": "STANDARD_NC6", "scaleSettings": scale}})
    message = error_of(text, load_cluster_spec)
    assert message.startswith("job.json: properties.scaleSettings")
    assert needle in message


def test_file_server_requires_its_disks() -> None:
    text = json.dumps(
        {
            "properties": {
                "vmSize": "STANDARD_D1",
                "sshConfiguration": {"userAccountSettings": {"adminUserName": "u"}},
            }
        }
    )
    assert error_of(text, load_any) == "job.json: properties.dataDisks: Field required"


# ----------------------------------------------------------------------------- placeholders


def test_placeholders_are_found_in_every_string_value() -> None:
    spec = load_job_spec(read("TensorFlow-GPU-Distributed/job.json"))
    assert placeholders(spec) == {"<AZURE_BATCHAI_STORAGE_ACCOUNT>"}
    cluster = load_any(read("azure-cli-tests/cluster_with_azure_files.json"))
    assert placeholders(cluster) == {
        "<AZURE_BATCHAI_STORAGE_ACCOUNT>",
        "<AZURE_BATCHAI_STORAGE_KEY>",
    }
    assert placeholders(load_job_spec(read("Keras-DSVM/job.json"))) == set()


def test_substitute_replaces_placeholders_and_nothing_else() -> None:
    spec = load_job_spec(read("CNTK-GPU-Python/job.json"))
    done = substitute(spec, {"AZURE_BATCHAI_STORAGE_ACCOUNT": "acct$$1"})
    assert placeholders(done) == set()
    volumes = done.properties.mount_volumes
    assert volumes is not None
    assert (
        volumes.azure_file_shares[0].azure_file_url == "https://acct$$1.file.core.windows.net/logs"
    )
    assert volumes.azure_blob_file_systems[0].account_name == "acct$$1"
    # Shell variables are for the node, not for us.
    settings = done.properties.cntk_settings
    assert settings is not None
    assert (
        settings.python_script_file_path
        == "$AZ_BATCHAI_JOB_MOUNT_ROOT/scripts/cntk/ConvNet_MNIST.py"
    )
    # The original is untouched and the copy keeps its API version.
    assert placeholders(spec) == {"<AZURE_BATCHAI_STORAGE_ACCOUNT>"}
    assert done.api_version == spec.api_version == "2018-05-01"


def test_substitute_accepts_bracketed_keys_and_leaves_unknown_placeholders() -> None:
    cluster = load_cluster_spec(read("azure-cli-tests/auto_scale_cluster_with_azure_files.json"))
    done = substitute(cluster, {"<AZURE_BATCHAI_STORAGE_KEY>": "k3y=="})
    assert placeholders(done) == {"<AZURE_BATCHAI_STORAGE_ACCOUNT>"}
    setup = done.properties.node_setup
    assert setup is not None and setup.mount_volumes is not None
    creds = setup.mount_volumes.azure_file_shares[0].credentials
    assert creds is not None and creds.account_key == "k3y=="


def test_substitute_revalidates_the_result() -> None:
    spec = load_job_spec(
        job(
            {
                "mountVolumes": {
                    "azureFileShares": [{"azureFileUrl": "u", "relativeMountPath": "<DIR>"}]
                }
            }
        )
    )
    with pytest.raises(SpecError, match=r"^<substituted>: .*relativeMountPath: must not contain"):
        substitute(spec, {"DIR": "../../etc"})


def test_double_dollar_is_kept_everywhere() -> None:
    cluster = load_cluster_spec(read("azure-cli-tests/cluster_with_azure_files.json"))
    assert cluster.properties.user_account_settings is not None
    assert cluster.properties.user_account_settings.admin_user_password == "DemoPa$$w0rd"
    done = substitute(cluster, {"AZURE_BATCHAI_STORAGE_ACCOUNT": "a"})
    assert done.properties.user_account_settings is not None
    assert done.properties.user_account_settings.admin_user_password == "DemoPa$$w0rd"
    nfs = load_file_server_spec(read("azure-cli-tests/file_server.json"))
    raw = dump(nfs, mask_secrets=False)
    assert raw["properties"]["sshConfiguration"]["userAccountSettings"]["adminUserPassword"] == (
        "DemoPa$$w0rd"
    )


# ----------------------------------------------------------------------------- dump


def test_dump_masks_every_secret_value() -> None:
    ref = {"sourceVault": {"id": "/v"}, "secretUrl": "https://v.vault.azure.net/secrets/s"}
    spec = load_job_spec(
        job(
            {
                "secrets": [
                    {"name": "TOKEN", "value": "hunter2"},
                    {"name": "KV", "valueSecretReference": ref},
                ],
                "environmentVariables": [{"name": "PLAIN", "value": "visible"}],
                "containerSettings": {
                    "imageSourceRegistry": {
                        "image": "r.io/i",
                        "serverUrl": "r.io",
                        "credentials": {"username": "me", "password": "regpass"},
                    }
                },
                "mountVolumes": {
                    "azureFileShares": [
                        {
                            "azureFileUrl": "u",
                            "relativeMountPath": "a",
                            "credentials": {"accountKey": "storagekey"},
                        }
                    ]
                },
            }
        )
    )
    masked = dump(spec)
    text = json.dumps(masked)
    for secret in ("hunter2", "regpass", "storagekey"):
        assert secret not in text
        assert secret not in repr(spec)
    props = masked["properties"]
    assert props["secrets"][0] == {"name": "TOKEN", "value": "****"}
    assert props["secrets"][1]["valueSecretReference"] == ref
    assert props["environmentVariables"] == [{"name": "PLAIN", "value": "visible"}]
    assert props["containerSettings"]["imageSourceRegistry"]["credentials"] == {
        "username": "me",
        "password": "****",
    }
    assert dump(spec, mask_secrets=False)["properties"]["secrets"][0]["value"] == "hunter2"


def test_dump_masks_cluster_passwords_and_is_camel_case() -> None:
    cluster = load_cluster_spec(read("azure-cli-tests/cluster_with_azure_files.json"))
    data = dump(cluster)
    assert data["location"] == "southcentralus"
    assert data["properties"]["userAccountSettings"]["adminUserPassword"] == "****"
    share = data["properties"]["nodeSetup"]["mountVolumes"]["azureFileShares"][0]
    assert share["credentials"]["accountKey"] == "****"
    assert share["relativeMountPath"] == "azfiles"


@pytest.mark.parametrize("name", LOADABLE)
def test_dump_round_trips(name: str) -> None:
    spec = load_any(read(name))
    again = load_any(json.dumps(dump(spec, mask_secrets=False)))
    assert again == spec
    if isinstance(spec, JobSpec):
        assert isinstance(again, JobSpec) and again.api_version == spec.api_version


@pytest.mark.parametrize("name", ["../etc", "Data", "a", "a--b", "x/y", "-data"])
def test_a_blob_container_name_azure_would_refuse_is_refused_at_load(name: str) -> None:
    blob = {"accountName": "acct", "containerName": name, "relativeMountPath": "bfs"}
    spec = {
        "properties": {
            "nodeCount": 1,
            "customToolkitSettings": {"commandLine": "true"},
            "mountVolumes": {"azureBlobFileSystems": [blob]},
        }
    }
    with pytest.raises(SpecError, match="is not a blob container name"):
        load_job_spec(json.dumps(spec))
