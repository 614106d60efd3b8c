"""The progress reporter: real HTTP failures without a cluster, and a real RecTrainJob on the
local control plane (with admin rights, and with a service account that has none)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from rectrain_api.progress import Progress, TrainingMetrics
from rectrain_api.trainer_config import JOB_NAME_ENV, JOB_NAMESPACE_ENV
from rectrain_trainer.config import parse_config
from rectrain_trainer.reporter import GROUP, PLURAL, StatusReporter
from rectrain_trainer.train import train
from support import wait_for
from trainer_helpers import finish, free_port, start_trainer, tiny_config, write_criteo

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "rectrainjobs.rectrain.io.yaml"
VERSION = "v1alpha1"
WARNING = "cannot update status of RecTrainJob"


def test_unreachable_api_training_goes_on_with_one_warning(caplog):
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    cfg.verify_ssl = False
    rep = StatusReporter(client.ApiClient(cfg), "job", "ns", interval=0.5, max_backoff=1.0, request_timeout=2)
    caplog.set_level(logging.INFO, logger="rectrain.reporter")
    t = train(parse_config(tiny_config(training={"epochs": 4, "batchSize": 16}, reporting={"metricsPort": 0, "logEverySteps": 5})), reporter=rep)
    wait_for(lambda: rep.patches_failed >= 3, timeout=30, what="several failed patch attempts")
    rep.close(timeout=1)
    assert t.step == 4 * 250
    warnings = [r for r in caplog.records if WARNING in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "training continues" in warnings[0].getMessage()
    assert rep.patches_ok == 0


# ------------------------------------------------------------------ on the local control plane


@pytest.fixture(scope="module")
def crd(k8s_api):
    from kubernetes import client

    ext = client.ApiextensionsV1Api(k8s_api)
    body = yaml.safe_load(CRD.read_text())
    try:
        ext.create_custom_resource_definition(body)
    except client.ApiException as e:
        if e.status != 409:
            raise

    def established():
        c = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(x.type == "Established" and x.status == "True" for x in (c.status.conditions or []))

    wait_for(established, timeout=30, what="RecTrainJob CRD established")
    return body


def create_job(k8s_api, namespace: str, name: str, trainer: dict) -> None:
    from kubernetes import client

    client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RecTrainJob", "metadata": {"name": name},
         "spec": {"image": "rectrain/trainer:test", "trainer": trainer}},
    )


def get_job(k8s_api, namespace: str, name: str) -> dict:
    from kubernetes import client

    return client.CustomObjectsApi(k8s_api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def reporting_config(tmp_path) -> dict:
    tsv = tmp_path / "day_0"
    write_criteo(tsv, 4000, np.random.default_rng(0), bad_every=2000)  # 2 malformed rows
    return tiny_config(
        model={"embeddingDim": 8, "tableSizes": [32] * 26, "numDenseFeatures": 13, "bottomMlp": [16, 8], "topMlp": [16]},
        data={"source": "criteo-tsv", "paths": [str(tsv)], "evalFraction": 0.2, "malformedRows": "skip"},
        training={"epochs": 2, "batchSize": 32},
        checkpoint={"directory": str(tmp_path / "ck"), "everySteps": 50},
        reporting={"metricsPort": 0, "logEverySteps": 10, "progressIntervalSeconds": 0.5},
    )


@pytest.mark.cluster
def test_reporter_patches_a_real_rectrainjob(k8s_api, kubeconfig, namespace, crd, tmp_path):
    cfg = reporting_config(tmp_path)
    create_job(k8s_api, namespace, "rtj", cfg)
    p = start_trainer(cfg, KUBECONFIG=kubeconfig, **{JOB_NAME_ENV: "rtj", JOB_NAMESPACE_ENV: namespace})
    (rc, out, err), = finish([p])
    assert rc == 0, err[-3000:]
    assert WARNING not in err
    st = get_job(k8s_api, namespace, "rtj")["status"]
    prog, met = st["progress"], st["metrics"]
    assert prog["step"] == prog["totalSteps"] == 2 * 100 and prog["percent"] == 100
    assert prog["epoch"] == 1 and prog["lastCheckpointStep"] == 200
    assert prog["loss"] > 0 and prog["samplesPerSecond"] > 0 and prog["updatedTime"].endswith("Z")
    final = {k: float(v) for k, v in (kv.split("=") for kv in out.split("final:")[1].split())}
    assert met["auc"] == pytest.approx(final["auc"], abs=1e-4) and met["evalStep"] == 200
    assert met["rowsSkipped"] == 2  # malformedRows: skip -> counted in the job's status
    # the trainer wrote status only: the spec it was given is untouched
    assert get_job(k8s_api, namespace, "rtj")["spec"]["trainer"]["training"]["batchSize"] == 32


@pytest.mark.cluster
def test_reporter_patches_at_most_every_interval(k8s_api, namespace, crd):
    create_job(k8s_api, namespace, "rtj", {})
    rep = StatusReporter(k8s_api, "rtj", namespace, interval=0.5)
    t0 = time.monotonic()
    for step in range(1, 301):
        rep.update(Progress(step=step, totalSteps=300), TrainingMetrics(rowsSkipped=step))
        time.sleep(0.005)  # a fast training loop, not a wait for state
    elapsed = time.monotonic() - t0
    rep.close()
    assert rep.patches_failed == 0
    assert 2 <= rep.patches_ok <= elapsed / 0.5 + 2  # throttled, yet the last value arrives
    st = get_job(k8s_api, namespace, "rtj")["status"]
    assert st["progress"]["step"] == 300 and st["metrics"]["rowsSkipped"] == 300


@pytest.mark.cluster
def test_final_update_is_retried_through_an_api_outage(k8s_api, kubeconfig, namespace, crd):
    """Training can end while the API server restarts: close() keeps trying the last values until the
    API answers again (here it is unreachable at first, then a forwarder to the real one appears)."""
    import threading
    from urllib.parse import urlsplit

    from kubernetes import client, config
    from rectrain_local.node.forward import Forwarder

    create_job(k8s_api, namespace, "rtj", {})
    admin = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=admin)
    real = urlsplit(admin.host)
    port = free_port()
    # The same credentials for an address nothing listens on yet (a kubeconfig-loaded configuration
    # keeps its own host, so build a fresh one).
    cfg = client.Configuration(host=f"https://127.0.0.1:{port}", api_key=dict(admin.api_key),
                               api_key_prefix=dict(admin.api_key_prefix))
    cfg.ssl_ca_cert, cfg.cert_file, cfg.key_file = admin.ssl_ca_cert, admin.cert_file, admin.key_file
    rep = StatusReporter(client.ApiClient(cfg), "rtj", namespace, interval=0.5, request_timeout=2)
    rep.update(Progress(step=40, totalSteps=40), TrainingMetrics(auc=0.91, evalStep=40))
    closing = threading.Thread(target=rep.close, kwargs={"timeout": 30})
    closing.start()
    wait_for(lambda: rep.patches_failed >= 2, timeout=20, what="the final update to be retried")
    assert closing.is_alive()
    Forwarder("127.0.0.1", port, real.hostname, real.port).start()  # the API server is back
    closing.join(40)
    assert not closing.is_alive() and rep.patches_ok == 1
    st = get_job(k8s_api, namespace, "rtj")["status"]
    assert st["progress"]["step"] == 40 and st["metrics"]["auc"] == 0.91


def token_kubeconfig(admin_kubeconfig: str, token: str, path: Path) -> str:
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    ctx_name = admin.get("current-context") or admin["contexts"][0]["name"]
    ctx = next(c for c in admin["contexts"] if c["name"] == ctx_name)["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])
    cl = dict(cluster["cluster"])
    ca = cl.get("certificate-authority")
    if ca and not Path(ca).is_absolute():  # relative to the admin kubeconfig
        cl["certificate-authority"] = str(Path(admin_kubeconfig).parent / ca)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": cl}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": ctx.get("namespace", "default")}}],
    }))
    return str(path)


@pytest.mark.cluster
def test_trainer_without_permission_keeps_training_and_warns_once(k8s_api, kubeconfig, namespace, crd, tmp_path):
    from kubernetes import client

    cfg = reporting_config(tmp_path)
    cfg["training"]["epochs"] = 6  # long enough for several attempts at 0.5 s
    create_job(k8s_api, namespace, "rtj", cfg)
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="no-rights")))
    tok = core.create_namespaced_service_account_token(
        "no-rights", namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    ).status.token
    kc = token_kubeconfig(kubeconfig, tok, tmp_path / "sa.kubeconfig")

    p = start_trainer(cfg, KUBECONFIG=kc, **{JOB_NAME_ENV: "rtj", JOB_NAMESPACE_ENV: namespace})
    (rc, out, err), = finish([p])
    assert rc == 0, err[-3000:]
    assert "final:" in out  # it trained to the end
    warn = [line for line in err.splitlines() if WARNING in line]
    assert len(warn) == 1, err[-3000:]
    assert "WARNING" in warn[0] and "HTTP 403" in warn[0] and f"{namespace}/rtj" in warn[0]
    summary = [line for line in err.splitlines() if "patches sent" in line][-1]
    sent, failed = (int(x) for x in summary.split(": ")[-1].replace(" patches sent,", "").replace(" failed", "").split())
    assert sent == 0 and failed >= 2, summary
    assert "status" not in get_job(k8s_api, namespace, "rtj") or "progress" not in get_job(k8s_api, namespace, "rtj")["status"]
