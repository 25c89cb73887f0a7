"""Launch plans: argv, environment, ranks, logs and the Batch AI layout for every toolkit."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.errors import SpecError
from services.jobspec import (
    JobSpec,
    LaunchContext,
    LaunchPlan,
    NodeInfo,
    OutputDir,
    expand_vars,
    load_job_spec,
    plan_launch,
    primary_log,
)

FIXTURES = Path(__file__).parent / "fixtures" / "jobs"
SCHEMA = "https://raw.githubusercontent.com/Azure/BatchAI/master/schemas/{}/job.json"
SEGMENT_2018_05 = "sub/rg/workspaces/ws/experiments/exp/jobs/train/0f1e"
SEGMENT_OLD = "sub/rg/jobs/train/0f1e"


def ctx(
    count: int = 1,
    *,
    hosts: list[str] | None = None,
    gpus: int = 1,
    **overrides: Any,
) -> LaunchContext:
    hosts = hosts or [f"10.0.0.{4 + i}" for i in range(count)]
    values: dict[str, Any] = {
        "subscription": "sub",
        "resource_group": "rg",
        "workspace": "ws",
        "experiment": "exp",
        "cluster_name": "gpu",
        "job_name": "train",
        "job_uuid": "0f1e",
        "mount_root": "/mnt/node",
        "job_mount_root": "/mnt/job",
        "job_temp_root": "/tmp/jobs",
        "nodes": tuple(NodeInfo(i, hosts[i], gpus) for i in range(count)),
    }
    values.update(overrides)
    return LaunchContext(**values)


def spec(props: dict[str, Any], api: str | None = "2018-05-01") -> JobSpec:
    base: dict[str, Any] = {
        "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs",
    }
    base.update(props)
    doc: dict[str, Any] = {"properties": base}
    if api:
        doc["$schema"] = SCHEMA.format(api)
    return load_job_spec(json.dumps(doc))


def plan(props: dict[str, Any], nodes: int | None = None, **kw: Any) -> LaunchPlan:
    s = spec(props, kw.pop("api", "2018-05-01"))
    return plan_launch(s, ctx(nodes or s.properties.node_count, **kw))


def fixture(name: str) -> JobSpec:
    return load_job_spec((FIXTURES / name).read_bytes(), source=name)


def logs(p: LaunchPlan) -> list[tuple[str, str]]:
    return [(proc.stdout_name, proc.stderr_name) for proc in p.processes]


# ----------------------------------------------------------------------------- common env


def test_common_environment_of_every_job() -> None:
    p = plan({"customToolkitSettings": {"commandLine": "true"}, "nodeCount": 2})
    temp = "/tmp/jobs/train-0f1e"
    expected = {
        "AZ_BATCHAI_MOUNT_ROOT": "/mnt/node",
        "AZ_BATCHAI_JOB_MOUNT_ROOT": "/mnt/job",
        "AZ_BATCHAI_JOB_TEMP_DIR": "/tmp/jobs",
        "AZ_BATCHAI_JOB_TEMP": temp,
        "AZ_BATCHAI_SHARED_JOB_TEMP": f"{temp}/shared",
        "AZ_BATCHAI_MPI_HOST_FILE": f"{temp}/hostfile",
        "AZ_BATCHAI_STDOUTERR_DIR": f"/mnt/job/logs/{SEGMENT_2018_05}/stdouterr",
        "AZ_BATCHAI_CLUSTER_NAME": "gpu",
        "AZ_BATCHAI_JOB_NAME": "train",
        "AZ_BATCH_HOST_LIST": "10.0.0.4,10.0.0.5",
    }
    assert {k: p.env[k] for k in expected} == expected
    assert (p.job_temp, p.shared_job_temp) == (temp, f"{temp}/shared")
    proc = p.processes[0]
    assert {k: v for k, v in proc.env.items() if k not in p.env} == {
        "AZ_BATCHAI_TASK_INDEX": "0",
        "AZ_BATCHAI_NUM_GPUS": "1",
    }


def test_gpus_are_per_node() -> None:
    s = spec({"nodeCount": 2, "customMpiSettings": {"commandLine": "x"}})
    nodes = (NodeInfo(0, "a", 4), NodeInfo(1, "b", 2))
    p = plan_launch(s, ctx(2, nodes=nodes))
    assert [proc.env["AZ_BATCHAI_NUM_GPUS"] for proc in p.processes] == ["4", "2"]
    assert "AZ_BATCHAI_NUM_GPUS" not in p.env


def test_plan_values_are_read_only() -> None:
    p = plan({"customToolkitSettings": {"commandLine": "true"}})
    with pytest.raises(TypeError):
        p.env["X"] = "1"  # type: ignore[index]
    with pytest.raises(TypeError):
        p.processes[0].env["X"] = "1"  # type: ignore[index]


def test_extra_env_is_visible_but_cannot_replace_service_variables() -> None:
    extra = {"AZURE_BATCHAI_STORAGE_ACCOUNT": "acct", "AZ_BATCHAI_MOUNT_ROOT": "/evil"}
    p = plan({"customToolkitSettings": {"commandLine": "true"}}, extra_env=extra)
    assert p.env["AZURE_BATCHAI_STORAGE_ACCOUNT"] == "acct"
    assert p.env["AZ_BATCHAI_MOUNT_ROOT"] == "/mnt/node"


def test_user_variables_are_expanded_and_secrets_are_kept_literal() -> None:
    ref = {"sourceVault": {"id": "/v"}, "secretUrl": "https://v.vault.azure.net/secrets/s"}
    p = plan(
        {
            "customToolkitSettings": {"commandLine": "true"},
            "environmentVariables": [
                {"name": "DATA", "value": "$AZ_BATCHAI_JOB_MOUNT_ROOT/data"},
                {"name": "NESTED", "value": "${DATA}/x $UNKNOWN $$"},
            ],
            "secrets": [
                {"name": "TOKEN", "value": "pa$$w0rd-$AZ_BATCHAI_JOB_TEMP"},
                {"name": "FROM_VAULT", "valueSecretReference": ref},
            ],
        }
    )
    assert p.env["DATA"] == "/mnt/job/data"
    assert p.env["NESTED"] == "/mnt/job/data/x $UNKNOWN $$"
    assert p.env["TOKEN"] == "pa$$w0rd-$AZ_BATCHAI_JOB_TEMP"
    assert p.processes[0].env["TOKEN"] == p.env["TOKEN"]
    assert "FROM_VAULT" not in p.env
    assert p.secret_names == frozenset({"TOKEN", "FROM_VAULT"})
    assert any("FROM_VAULT" in w and "Key Vault" in w for w in p.warnings)


def test_key_vault_credentials_are_warned_about() -> None:
    ref = {"sourceVault": {"id": "/v"}, "secretUrl": "https://v/secrets/k"}
    p = plan(
        {
            "customToolkitSettings": {"commandLine": "true"},
            "containerSettings": {
                "imageSourceRegistry": {
                    "image": "r.io/img",
                    "credentials": {"username": "u", "passwordSecretReference": ref},
                }
            },
            "mountVolumes": {
                "azureFileShares": [
                    {
                        "azureFileUrl": "https://a.file.core.windows.net/s",
                        "relativeMountPath": "afs",
                        "credentials": {"accountKeySecretReference": ref},
                    }
                ]
            },
        }
    )
    assert p.container_image == "r.io/img"
    assert sum("Key Vault" in w for w in p.warnings) == 2


def test_a_user_value_the_launcher_overrides_is_warned_about() -> None:
    p = plan(
        {
            "nodeCount": 2,
            "pyTorchSettings": {"pythonScriptFilePath": "t.py"},
            "environmentVariables": [
                {"name": "RANK", "value": "9"},
                {"name": "MASTER_PORT", "value": "1234"},
                {"name": "OTHER", "value": "1"},
            ],
        }
    )
    assert [proc.env["RANK"] for proc in p.processes] == ["0", "1"]
    assert [w.split()[0] for w in p.warnings] == ["RANK", "MASTER_PORT"]


def test_undefined_batchai_variables_are_warned_about() -> None:
    # The HEAD TensorFlow recipe uses $AZ_BATCHAI_INPUT_DATASET without declaring DATASET.
    p = plan_launch(fixture("TensorFlow-GPU-Distributed/job.json"), ctx(2))
    assert p.warnings == ("$AZ_BATCHAI_INPUT_DATASET is used but not defined for this job",)
    assert "--data_dir=$AZ_BATCHAI_INPUT_DATASET" in p.processes[0].argv
    assert (
        plan_launch(
            fixture("TensorFlow-GPU-Distributed@2018-02-02-53f9afa/job.json"), ctx(2)
        ).warnings
        == ()
    )


# ----------------------------------------------------------------------------- layout


def test_layout_2018_05_01() -> None:
    p = plan(
        {
            "customToolkitSettings": {"commandLine": "true"},
            "inputDirectories": [{"id": "DATA", "path": "${AZ_BATCHAI_JOB_MOUNT_ROOT}/data"}],
            "outputDirectories": [
                {
                    "id": "MODEL",
                    "pathPrefix": "$AZ_BATCHAI_JOB_MOUNT_ROOT/logs",
                    "pathSuffix": "Models",
                },
                {"id": "RAW", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs/"},
            ],
        }
    )
    assert p.job_dir_segment == SEGMENT_2018_05
    assert p.stdouterr_dir == f"/mnt/job/logs/{SEGMENT_2018_05}/stdouterr"
    assert p.output_dirs == (
        OutputDir("MODEL", f"/mnt/job/logs/{SEGMENT_2018_05}/outputs/Models"),
        OutputDir("RAW", f"/mnt/node/afs/{SEGMENT_2018_05}/outputs"),
    )
    assert dict(p.input_dirs) == {"DATA": "/mnt/job/data"}
    assert p.env["AZ_BATCHAI_INPUT_DATA"] == "/mnt/job/data"
    assert p.env["AZ_BATCHAI_OUTPUT_MODEL"] == p.output_dirs[0].path
    assert p.env["AZ_BATCHAI_OUTPUT_RAW"] == p.output_dirs[1].path


def test_layout_2018_03_01_has_no_workspace_level() -> None:
    p = plan(
        {
            "customToolkitSettings": {"commandLine": "true"},
            "outputDirectories": [{"id": "M", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/x"}],
        },
        api="2018-03-01",
    )
    assert p.job_dir_segment == SEGMENT_OLD
    assert p.stdouterr_dir == f"/mnt/job/logs/{SEGMENT_OLD}/stdouterr"
    assert p.output_dirs == (OutputDir("M", f"/mnt/node/x/{SEGMENT_OLD}/outputs"),)


def test_layout_2017_writes_logs_into_the_job_directory() -> None:
    p = plan_launch(fixture("CNTK-GPU-BrainScript/job.json"), ctx(1))
    assert p.job_dir_segment == SEGMENT_OLD
    assert p.stdouterr_dir == f"/mnt/node/external/{SEGMENT_OLD}"
    assert p.env["AZ_BATCHAI_STDOUTERR_DIR"] == p.stdouterr_dir
    assert p.output_dirs == (
        OutputDir("MODEL", f"/mnt/node/external/{SEGMENT_OLD}/outputs/Models"),
    )
    assert p.input_dirs["CONFIG"] == "/mnt/node/external/cntk_samples"


def test_legacy_create_new_false_uses_the_path_as_given() -> None:
    p = plan(
        {
            "customToolkitSettings": {"commandLine": "true"},
            "outputDirectories": [
                {
                    "id": "M",
                    "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/m",
                    "pathSuffix": "s",
                    "createNew": False,
                }
            ],
        },
        api="2017-09-01-preview",
    )
    assert p.output_dirs == (OutputDir("M", "/mnt/node/m/s"),)


def test_missing_log_prefix_defaults_to_the_mount_root() -> None:
    s = load_job_spec(
        json.dumps({"properties": {"nodeCount": 1, "customToolkitSettings": {"commandLine": "x"}}})
    )
    assert plan_launch(s, ctx()).stdouterr_dir == f"/mnt/node/{SEGMENT_OLD}"


@pytest.mark.parametrize(
    ("props", "needle"),
    [
        ({"stdOutErrPathPrefix": "/etc"}, "properties.stdOutErrPathPrefix: '/etc' is outside"),
        ({"stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/../../etc"}, "is outside"),
        ({"stdOutErrPathPrefix": "$NOT_SET/logs"}, "is not an absolute path"),
        (
            {"outputDirectories": [{"id": "M", "pathPrefix": "/home/bot/.ssh"}]},
            "properties.outputDirectories[0].pathPrefix: '/home/bot/.ssh' is outside",
        ),
    ],
)
def test_written_paths_must_stay_in_the_job_storage(props: dict[str, Any], needle: str) -> None:
    with pytest.raises(SpecError, match=None) as info:
        plan({"customToolkitSettings": {"commandLine": "true"}, **props})
    assert needle in str(info.value)


def test_temp_root_is_an_allowed_place_for_logs() -> None:
    p = plan(
        {
            "customToolkitSettings": {"commandLine": "true"},
            "stdOutErrPathPrefix": "$AZ_BATCHAI_JOB_TEMP",
        }
    )
    assert p.stdouterr_dir == f"/tmp/jobs/train-0f1e/{SEGMENT_2018_05}/stdouterr"


def test_context_mistakes_are_caller_bugs() -> None:
    s = spec({"nodeCount": 2, "customToolkitSettings": {"commandLine": "x"}})
    with pytest.raises(ValueError, match="nodes 0..1"):
        plan_launch(s, ctx(1))
    with pytest.raises(ValueError, match="job_name"):
        plan_launch(s, ctx(2, job_name="../x"))
    with pytest.raises(ValueError, match="mount_root must be absolute"):
        plan_launch(s, ctx(2, mount_root="relative"))


# ----------------------------------------------------------------------------- toolkits


def test_cntk_brainscript() -> None:
    p = plan_launch(fixture("CNTK-GPU-BrainScript-Distributed/job.json"), ctx(2))
    assert p.toolkit == "cntk"
    assert [proc.node_index for proc in p.processes] == [0, 1]
    assert p.processes[1].argv == (
        "cntk",
        "configFile=/mnt/node/external/cntk_samples/DistributedConvNet_MNIST.cntk",
        "rootDir=.",
        "dataDir=/mnt/node/external/mnist_database",
        f"outputDir=/mnt/node/external/{SEGMENT_OLD}/outputs/Models",
        "parallelTrain=true",
    )
    assert logs(p) == [("stdout-0.txt", "stderr-0.txt"), ("stdout-1.txt", "stderr-1.txt")]


def test_cntk_python_spreads_ranks_round_robin() -> None:
    p = plan_launch(fixture("CNTK-GPU-Python-Distrbuted-Infiniband/job.json"), ctx(2, gpus=4))
    assert len(p.processes) == 8
    assert [proc.rank for proc in p.processes] == list(range(8))
    assert [proc.node_index for proc in p.processes] == [0, 1] * 4
    assert {proc.role for proc in p.processes} == {"rank"}
    assert [proc.env["AZ_BATCHAI_TASK_INDEX"] for proc in p.processes] == [str(i) for i in range(8)]
    assert p.processes[5].argv[:2] == (
        "python3",
        "/mnt/node/external/cntk_samples/TrainResNet_CIFAR10_Distributed.py",
    )
    assert p.processes[5].argv[2:4] == ("--datadir", "/tmp/jobs/train-0f1e")
    assert logs(p)[7] == ("stdout-7.txt", "stderr-7.txt")
    assert p.mpi_host_file_lines == ("10.0.0.4 slots=4", "10.0.0.5 slots=4")


def test_the_early_process_count_spelling_is_honoured() -> None:
    p = plan_launch(fixture("CNTK-GPU-Python-Distributed@2017-10-09-876c4d0/job.json"), ctx(2))
    assert len(p.processes) == 2


def test_single_process_jobs_write_plain_log_names() -> None:
    p = plan_launch(fixture("CNTK-GPU-Python/job.json"), ctx(1))
    assert logs(p) == [("stdout.txt", "stderr.txt")]
    assert p.processes[0].argv == (
        "python3",
        "/mnt/job/scripts/cntk/ConvNet_MNIST.py",
        "/mnt/job/data/mnist_data",
        f"/mnt/job/logs/{SEGMENT_2018_05}/outputs",
    )
    assert primary_log(p) == ("stdout.txt", "stderr.txt")


def test_python_interpreter_path_is_used_and_expanded() -> None:
    p = plan(
        {
            "chainerSettings": {
                "pythonScriptFilePath": "t.py",
                "pythonInterpreterPath": "$AZ_BATCHAI_JOB_MOUNT_ROOT/venv/bin/python",
            }
        }
    )
    assert p.processes[0].argv == ("/mnt/job/venv/bin/python", "t.py")
    default = plan({"chainerSettings": {"pythonScriptFilePath": "t.py"}}, python="/opt/py")
    assert default.processes[0].argv == ("/opt/py", "t.py")


def test_pytorch_environment() -> None:
    s = fixture("PyTorch-GPU-Distributed-Gloo@2018-06-07-5af5699/job.json")
    p = plan_launch(s, ctx(2))
    assert p.toolkit == "pytorch"
    init = "file:///tmp/jobs/train-0f1e/shared/pytorch_init"
    assert p.env["AZ_BATCHAI_PYTORCH_INIT_METHOD"] == init
    assert p.env["AZ_BATCHAI_PYTORCH_BACKEND"] == "gloo"
    assert (p.env["WORLD_SIZE"], p.env["MASTER_ADDR"], p.env["MASTER_PORT"]) == (
        "2",
        "10.0.0.4",
        "29500",
    )
    assert [proc.env["RANK"] for proc in p.processes] == ["0", "1"]
    assert [proc.env["LOCAL_RANK"] for proc in p.processes] == ["0", "0"]
    assert p.processes[1].argv == (
        "python3",
        "/mnt/node/external/PyTorchSamples/mnist_trainer.py",
        "--epochs", "10", "--world-size", "2",
        "--dist-backend", "gloo",
        "--dist-url", init,
        "--rank", "1",
    )  # fmt: skip
    assert logs(p) == [("stdout-0.txt", "stderr-0.txt"), ("stdout-1.txt", "stderr-1.txt")]
    assert primary_log(p) == ("stdout-0.txt", "stderr-0.txt")


def test_pytorch_backend_is_lower_cased_and_local_ranks_count_per_node() -> None:
    p = plan(
        {
            "nodeCount": 2,
            "pyTorchSettings": {
                "pythonScriptFilePath": "t.py",
                "communicationBackend": "NCCL",
                "processCount": 4,
            },
        },
        master_port=30000,
    )
    assert p.env["AZ_BATCHAI_PYTORCH_BACKEND"] == "nccl"
    assert p.env["WORLD_SIZE"] == "4"
    assert p.env["MASTER_PORT"] == "30000"
    assert [(q.node_index, q.env["LOCAL_RANK"]) for q in p.processes] == [
        (0, "0"), (1, "0"), (0, "1"), (1, "1")
    ]  # fmt: skip
    assert (
        "AZ_BATCHAI_PYTORCH_BACKEND"
        not in plan({"pyTorchSettings": {"pythonScriptFilePath": "t.py"}}).env
    )


def test_tensorflow_distributed() -> None:
    p = plan_launch(fixture("TensorFlow-GPU-Distributed@2018-02-02-53f9afa/job.json"), ctx(2))
    assert p.toolkit == "tensorflow"
    assert [(q.rank, q.role, q.node_index) for q in p.processes] == [
        (0, "master", 0),
        (1, "worker", 1),
        (2, "ps", 0),
    ]
    # Parameter servers take the first port on a host; ports never repeat on a host.
    assert p.env["AZ_BATCHAI_PS_HOSTS"] == "10.0.0.4:2222"
    assert p.env["AZ_BATCHAI_WORKER_HOSTS"] == "10.0.0.4:2223,10.0.0.5:2222"
    assert logs(p) == [
        ("stdout-wk-0.txt", "stderr-wk-0.txt"),
        ("stdout-wk-1.txt", "stderr-wk-1.txt"),
        ("stdout-ps-0.txt", "stderr-ps-0.txt"),
    ]
    assert primary_log(p) == ("stdout-wk-0.txt", "stderr-wk-0.txt")
    assert [q.env["AZ_BATCHAI_TASK_INDEX"] for q in p.processes] == ["0", "1", "0"]
    cluster = {"ps": ["10.0.0.4:2222"], "worker": ["10.0.0.4:2223", "10.0.0.5:2222"]}
    configs = [json.loads(q.env["TF_CONFIG"]) for q in p.processes]
    assert configs == [
        {"cluster": cluster, "task": {"type": "master", "index": 0}, "environment": "cloud"},
        {"cluster": cluster, "task": {"type": "worker", "index": 1}, "environment": "cloud"},
        {"cluster": cluster, "task": {"type": "ps", "index": 0}, "environment": "cloud"},
    ]
    master, worker, ps = (q.argv for q in p.processes)
    assert master[:3] == (
        "python3",
        "/mnt/node/external/tensorflow_samples/mnist_replica.py",
        "--job_name=worker",
    )
    assert "--task_index=0" in master and "--task_index=1" in worker and "--task_index=0" in ps
    assert "--job_name=ps" in ps
    assert "--worker_hosts=10.0.0.4:2223,10.0.0.5:2222" in worker


def test_tensorflow_master_args_apply_to_worker_zero_only() -> None:
    p = plan(
        {
            "nodeCount": 2,
            "tensorFlowSettings": {
                "pythonScriptFilePath": "m.py",
                "masterCommandLineArgs": "--master",
                "workerCommandLineArgs": "--worker",
                "parameterServerCommandLineArgs": "--ps",
                "workerCount": 3,
                "parameterServerCount": 2,
            },
        }
    )
    assert [(q.role, q.argv[2:]) for q in p.processes] == [
        ("master", ("--master",)),
        ("worker", ("--worker",)),
        ("worker", ("--worker",)),
        ("ps", ("--ps",)),
        ("ps", ("--ps",)),
    ]
    assert p.env["AZ_BATCHAI_PS_HOSTS"] == "10.0.0.4:2222,10.0.0.5:2222"
    assert p.env["AZ_BATCHAI_WORKER_HOSTS"] == "10.0.0.4:2223,10.0.0.5:2223,10.0.0.4:2224"


def test_tensorflow_without_master_args_uses_worker_args_for_worker_zero() -> None:
    p = plan(
        {
            "nodeCount": 2,
            "tensorFlowSettings": {"pythonScriptFilePath": "m.py", "workerCommandLineArgs": "--w"},
        }
    )
    assert [q.argv[2:] for q in p.processes] == [("--w",), ("--w",), ()]


def test_tensorflow_ports_are_distinct_when_nodes_share_a_host() -> None:
    p = plan(
        {"nodeCount": 2, "tensorFlowSettings": {"pythonScriptFilePath": "m.py"}},
        hosts=["127.0.0.1", "127.0.0.1"],
        port_base=41000,
    )
    addresses = p.env["AZ_BATCHAI_PS_HOSTS"].split(",") + p.env["AZ_BATCHAI_WORKER_HOSTS"].split(
        ","
    )
    assert addresses == ["127.0.0.1:41000", "127.0.0.1:41001", "127.0.0.1:41002"]
    assert p.mpi_host_file_lines == ("127.0.0.1 slots=3",)


def test_tensorflow_single_node_is_one_master_without_parameter_server() -> None:
    p = plan_launch(fixture("TensorFlow-GPU@2017-10-07-beb24e2/job.json"), ctx(1))
    assert [(q.role, q.argv) for q in p.processes] == [
        ("master", ("python3", "/mnt/node/external/tensorflow_samples/convolutional.py", "-p"))
    ]
    assert logs(p) == [("stdout.txt", "stderr.txt")]
    assert p.env["AZ_BATCHAI_PS_HOSTS"] == ""
    assert p.env["AZ_BATCHAI_WORKER_HOSTS"] == "10.0.0.4:2222"
    config = json.loads(p.processes[0].env["TF_CONFIG"])
    assert config["task"] == {"type": "master", "index": 0}
    assert "ps" not in config["cluster"]


def test_tensorflow_two_workers_on_one_node_get_a_parameter_server() -> None:
    p = plan({"tensorFlowSettings": {"pythonScriptFilePath": "m.py", "workerCount": 2}})
    assert [q.role for q in p.processes] == ["master", "worker", "ps"]


def test_caffe_with_a_solver() -> None:
    p = plan(
        {
            "nodeCount": 2,
            "caffeSettings": {
                "configFilePath": "$AZ_BATCHAI_JOB_MOUNT_ROOT/lenet_solver.prototxt",
                "commandLineArgs": "-gpu all",
            },
        }
    )
    assert p.toolkit == "caffe"
    assert p.processes[0].argv == (
        "caffe",
        "train",
        "--solver=/mnt/job/lenet_solver.prototxt",
        "-gpu",
        "all",
    )
    assert len(p.processes) == 2


def test_caffe_with_a_python_script() -> None:
    p = plan({"caffeSettings": {"pythonScriptFilePath": "net.py", "processCount": 3}}, nodes=1)
    assert [q.argv for q in p.processes] == [("python3", "net.py")] * 3
    assert [q.node_index for q in p.processes] == [0, 0, 0]
    assert p.mpi_host_file_lines == ("10.0.0.4 slots=3",)


def test_caffe2_runs_one_shard_per_node() -> None:
    p = plan_launch(fixture("Caffe2-GPU-Distributed/job.json"), ctx(2))
    assert p.toolkit == "caffe2"
    assert [(q.rank, q.node_index) for q in p.processes] == [(0, 0), (1, 1)]
    for q in p.processes:
        argv = q.argv
        assert argv[argv.index("--shard_id") + 1] == str(q.rank)
        assert argv[argv.index("--file_store_path") + 1] == "/tmp/jobs/train-0f1e/shared"
    assert logs(p)[1] == ("stdout-1.txt", "stderr-1.txt")


def test_chainer_and_horovod_run_process_count_ranks() -> None:
    chainer = plan_launch(fixture("Chainer-GPU-Distributed-Infiniband/job.json"), ctx(2, gpus=4))
    assert chainer.toolkit == "chainer" and len(chainer.processes) == 8
    assert chainer.processes[0].argv[-2:] == ("-o", f"/mnt/job/logs/{SEGMENT_2018_05}/outputs")
    horovod = plan_launch(fixture("Horovod-Tensorflow/job.json"), ctx(2))
    assert horovod.toolkit == "horovod"
    assert [q.argv for q in horovod.processes] == [
        ("python3", "/mnt/job/scripts/horovod/tensorflow_mnist.py")
    ] * 2
    old_chainer = plan_launch(
        fixture("Chainer-GPU-Distributed@2017-10-09-876c4d0/job.json"), ctx(2)
    )
    assert old_chainer.processes[0].argv[2:] == (
        "-g",
        "-o",
        f"/mnt/node/external/{SEGMENT_OLD}/outputs/Models",
    )


def test_custom_toolkit_runs_once_on_node_zero_through_bash() -> None:
    p = plan_launch(fixture("Horovod/job.json"), ctx(2, gpus=4))
    assert p.toolkit == "custom"
    (only,) = p.processes
    assert (only.rank, only.node_index, only.role) == (0, 0, "master")
    assert only.argv == (
        "bash",
        "-c",
        "mpirun -mca btl_tcp_if_exclude docker0,lo --allow-run-as-root --hostfile "
        "$AZ_BATCHAI_MPI_HOST_FILE python $AZ_BATCHAI_INPUT_SCRIPTS/tensorflow_mnist.py",
    )
    assert only.env["AZ_BATCHAI_INPUT_SCRIPTS"] == "/mnt/node/external/horovod_samples"
    assert logs(p) == [("stdout.txt", "stderr.txt")]
    # The command fans out with mpirun itself: every node is in the host file.
    assert p.mpi_host_file_lines == ("10.0.0.4 slots=4", "10.0.0.5 slots=4")


def test_custom_mpi_runs_process_count_ranks() -> None:
    p = plan(
        {
            "nodeCount": 2,
            "customMpiSettings": {"commandLine": "echo $AZ_BATCHAI_TASK_INDEX", "processCount": 3},
        }
    )
    assert p.toolkit == "custommpi"
    assert [(q.rank, q.node_index, q.argv) for q in p.processes] == [
        (i, i % 2, ("bash", "-c", "echo $AZ_BATCHAI_TASK_INDEX")) for i in range(3)
    ]
    assert p.mpi_host_file_lines == ("10.0.0.4 slots=2", "10.0.0.5 slots=1")
    batch = plan_launch(
        fixture("Distributed-Batch-Scoring-in-Tensorflow-with-GPU/job.json"), ctx(2)
    )
    assert len(batch.processes) == 2
    assert batch.processes[0].env["AZ_BATCHAI_INPUT_IMAGES"] == "/mnt/job/data/unlabeled_images"


def test_job_preparation_runs_once_per_node() -> None:
    s = fixture("Horovod-Tensorflow/job.json")
    nodes = (NodeInfo(0, "a", 1), NodeInfo(1, "b", 1, node_id="tvm-1_1-20180725t045847z"))
    p = plan_launch(s, ctx(2, nodes=nodes))
    assert [(q.rank, q.node_index, q.role) for q in p.preparation] == [
        (0, 0, "prep"),
        (1, 1, "prep"),
    ]
    command = "apt update; apt install mpi-default-dev mpi-default-bin -y; pip install horovod"
    assert {q.argv for q in p.preparation} == {("bash", "-c", command)}
    assert [(q.stdout_name, q.stderr_name) for q in p.preparation] == [
        ("stdout-job_prep-node-0.txt", "stderr-job_prep-node-0.txt"),
        (
            "stdout-job_prep-tvm-1_1-20180725t045847z.txt",
            "stderr-job_prep-tvm-1_1-20180725t045847z.txt",
        ),
    ]
    assert p.preparation[0].env["AZ_BATCHAI_JOB_TEMP"] == p.env["AZ_BATCHAI_JOB_TEMP"]
    assert plan_launch(fixture("TensorFlow-GPU/job.json"), ctx(1)).preparation == ()


def test_container_and_wall_clock() -> None:
    p = plan_launch(fixture("TensorFlow-GPU/job.json"), ctx(1))
    assert p.container_image == "tensorflow/tensorflow:1.8.0-gpu"
    assert p.max_wall_clock == timedelta(days=7)
    host = plan_launch(fixture("Keras-DSVM/job.json"), ctx(1))
    assert host.container_image is None
    short = plan(
        {"customToolkitSettings": {"commandLine": "x"}, "constraints": {"maxWallClockTime": "PT2H"}}
    )
    assert short.max_wall_clock == timedelta(hours=2)


# ----------------------------------------------------------------------------- safe expansion

HOSTILE = (
    "--a $(rm -rf /) `id` ; rm -rf / 'single $AZ_BATCHAI_JOB_NAME' "
    '"dq ${AZ_BATCHAI_JOB_NAME}" x\ny $$ $NOPE && |'
)


def test_hostile_arguments_stay_literal_argv_elements() -> None:
    p = plan({"horovodSettings": {"pythonScriptFilePath": "t.py", "commandLineArgs": HOSTILE}})
    assert p.processes[0].argv == (
        "python3",
        "t.py",
        "--a",
        "$(rm",
        "-rf",
        "/)",
        "`id`",
        ";",
        "rm",
        "-rf",
        "/",
        "single train",
        "dq train",
        "x",
        "y",
        "$$",
        "$NOPE",
        "&&",
        "|",
    )


def test_expanded_values_are_never_split_or_expanded_again() -> None:
    p = plan(
        {
            "horovodSettings": {"pythonScriptFilePath": "t.py", "commandLineArgs": "--x $SPACY"},
            "environmentVariables": [{"name": "SPACY", "value": "a b $(id) $HOME_LIKE"}],
        }
    )
    assert p.processes[0].argv[2:] == ("--x", "a b $(id) $HOME_LIKE")


def test_custom_command_lines_are_passed_verbatim() -> None:
    command = "echo hi | tee $AZ_BATCHAI_OUTPUT_OUTPUT/result.txt; x='$$'\n"
    p = plan({"customToolkitSettings": {"commandLine": command}})
    assert p.processes[0].argv == ("bash", "-c", command)


def test_expander_rules() -> None:
    env = {"A": "1", "B_2": "two", "LOOP": "$A"}
    assert expand_vars("$A ${B_2} $B_2x ${C} $C $$A $ ${ ${A", env) == (
        "1 two $B_2x ${C} $C $$A $ ${ ${A"
    )
    assert expand_vars("$LOOP", env) == "$A"
    assert expand_vars("DemoPa$$w0rd", env) == "DemoPa$$w0rd"
    assert expand_vars("$A$B_2/x", env) == "1two/x"


@given(st.text())
def test_expanding_with_no_variables_changes_nothing(text: str) -> None:
    assert expand_vars(text, {}) == text


@given(st.text(alphabet=st.characters(blacklist_characters="$")), st.text())
def test_dollar_free_values_are_inserted_verbatim(value: str, suffix: str) -> None:
    assert expand_vars("${V}" + suffix.replace("$", ""), {"V": value}) == value + suffix.replace(
        "$", ""
    )


# ----------------------------------------------------------------------------- every fixture


@pytest.mark.parametrize(
    "name",
    sorted(
        p.relative_to(FIXTURES).as_posix()
        for p in FIXTURES.rglob("*.json")
        if "cluster" not in p.name
        and p.name != "file_server.json"
        and p.parent.name
        not in (
            "TensorFlow-GPU@2018-05-15-1ace2a6",
            "TensorFlow-GPU-Distributed@2018-08-23-7cef9df",
        )
    ),
)
def test_every_fixture_job_plans(name: str) -> None:
    s = fixture(name)
    p = plan_launch(s, ctx(s.properties.node_count, gpus=4))
    assert p.processes and p.processes[0].rank == 0
    assert [q.rank for q in p.processes] == list(range(len(p.processes)))
    names = [n for q in p.processes + p.preparation for n in (q.stdout_name, q.stderr_name)]
    assert len(names) == len(set(names))
    for q in p.processes:
        assert q.argv[0] and all(isinstance(a, str) for a in q.argv)
        assert q.env["AZ_BATCHAI_STDOUTERR_DIR"] == p.stdouterr_dir
        assert set(p.env.items()) <= set(q.env.items())
    assert Counter(q.node_index for q in p.processes).keys() <= set(range(s.properties.node_count))
    assert p.stdouterr_dir.startswith(("/mnt/node/", "/mnt/job/", "/tmp/jobs/"))
