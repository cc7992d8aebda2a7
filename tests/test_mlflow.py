"""``logger=mlflow``, checked through MLflow itself: a short training, then ``mlflow server``
on 127.0.0.1 over the store it wrote, asked through its REST API for the run, its params, its
per-epoch metrics and its files. And a tracking URI that does not answer: one line of error
before anything is trained."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from seqmodels.callbacks.tensorboard_views.hparams_tab import flatten
from tests.conftest import ROOT

pytest.importorskip("mlflow", reason="the `mlflow` extra is not installed")

TINY = ["data.batch_size=8", "model.embedding_dim=8", "model.encoder.hidden_size=8",
        "callbacks.rich_progress_bar=null", "callbacks.model_summary=null",
        "trainer.max_epochs=3", "debug=limit"]


def train(cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqmodels.cli.train", *args], cwd=cwd,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                          capture_output=True, text=True, timeout=600)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``mlflow server`` over a store, on 127.0.0.1, until the test ends."""

    def __init__(self, store: str, cwd: Path):
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        mlflow = Path(sys.executable).parent / "mlflow"
        self.process = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", store, "--host", "127.0.0.1",
             "--port", port, "--workers", "1"], cwd=cwd, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{self.url}/health", timeout=5).status == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"mlflow server did not start: "
                                     f"{self.process.stderr.read().decode()[-3000:]}")
            time.sleep(0.5)

    def get(self, endpoint: str, **query) -> dict:
        url = f"{self.url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())

    def post(self, endpoint: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{endpoint}",
                                         data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def artifact(self, run_id: str, path: str) -> bytes:
        query = urllib.parse.urlencode({"run_uuid": run_id, "path": path})
        with urllib.request.urlopen(f"{self.url}/get-artifact?{query}", timeout=30) as response:
            return response.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def test_a_run_in_mlflow_with_its_params_metrics_and_files(user):
    cwd, env = user
    result = train(cwd, env, "experiment=sst2_bilstm", "logger=mlflow", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (cwd / "logs" / "train" / "runs").iterdir()
    assert (cwd / "logs" / "mlflow.db").is_file()  # the local store, beside the runs

    server = Server("sqlite:///logs/mlflow.db", cwd)
    try:
        (experiment,) = [e for e in server.get("experiments/search", max_results=10)[
            "experiments"] if e["name"] == "seqmodels-train"]
        (run,) = server.post("runs/search", {"experiment_ids": [experiment["experiment_id"]]})[
            "runs"]
        info, data = run["info"], run["data"]
        assert info["status"] == "FINISHED"
        assert info["run_name"] == f"runs/{run_dir.name}"
        tags = {tag["key"]: tag["value"] for tag in data["tags"]}
        assert tags["experiment"] == "sst2_bilstm" and tags["data"] == "sst2"
        assert tags["seqmodels.run_dir"] == str(run_dir)

        # params: the resolved settings, under the keys of TensorBoard's HParams tab
        resolved = OmegaConf.load(run_dir / "config_resolved.yaml")
        expected = flatten({"model": OmegaConf.to_container(resolved.model),
                            "data": OmegaConf.to_container(resolved.data),
                            "trainer": OmegaConf.to_container(resolved.trainer),
                            "seed": resolved.seed})
        params = {param["key"]: param["value"] for param in data["params"]}
        assert params == {key: str(value) for key, value in expected.items()}
        assert params["model/encoder/cell"] == "lstm" and params["trainer/max_epochs"] == "3"

        # metrics: val/acc once per epoch, at increasing steps; the final ones as metrics.json
        history = server.get("metrics/get-history", run_id=info["run_id"],
                             metric_key="val/acc")["metrics"]
        assert len(history) == 3
        assert [m["step"] for m in history] == sorted({m["step"] for m in history})
        recorded = json.loads((run_dir / "metrics.json").read_text())
        assert history[-1]["value"] == pytest.approx(recorded["val/acc"])
        latest = {metric["key"]: metric["value"] for metric in data["metrics"]}
        assert latest["test/acc"] == pytest.approx(recorded["test/acc"])

        # files: the resolved config, metrics.json and the best checkpoint
        listed = server.get("artifacts/list", run_id=info["run_id"])["files"]
        assert {f["path"] for f in listed} == {"config_resolved.yaml", "metrics.json",
                                               "checkpoints"}
        (best,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
        checkpoints = server.get("artifacts/list", run_id=info["run_id"], path="checkpoints")
        assert [f["path"] for f in checkpoints["files"]] == [f"checkpoints/{best.name}"]
        assert json.loads(server.artifact(info["run_id"], "metrics.json")) == recorded
        assert server.artifact(info["run_id"], f"checkpoints/{best.name}") == best.read_bytes()
    finally:
        server.stop()


def test_a_tracking_uri_that_does_not_answer_is_one_line_before_training(user):
    cwd, env = user
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    result = train(cwd, env, "experiment=sst2_bilstm", "logger=mlflow",
                   f"logger.mlflow.tracking_uri={uri}", *TINY)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: logger.mlflow.tracking_uri={uri}: no MLflow tracking "
                                "store answers there"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "vocabulary" not in result.stdout + result.stderr  # no data was read
    assert not (cwd / "logs" / "train" / "runs").exists() or not any(
        (cwd / "logs" / "train" / "runs").iterdir())
    assert time.monotonic() - started < 120
    assert ROOT not in cwd.parents
