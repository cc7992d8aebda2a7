"""What mixed precision needs from the machine: the bf16 probe says what a real bf16 run does
(here, and with oneDNN held to AVX2, as on an AVX2-only CPU), leaves seeded runs alone, and a
``trainer.precision`` this CPU cannot run is refused in one line before anything is built."""

import functools
import json
import os
import platform
import subprocess
import sys

import pytest
import torch

import seqmodels.training.precision
from seqmodels.cli.train import train
from seqmodels.errors import ConfigError
from seqmodels.models.encoder import RNNEncoder
from seqmodels.training.distributed import check_accelerator
from seqmodels.training.precision import Probe, clippable_optimizer, cpu_bf16_rnns
from tests.conftest import ROOT, compose_config, run_cli

# oneDNN's own switch: its kernels as on a CPU with AVX2 and nothing newer.
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
X86 = platform.machine().lower() in ("x86_64", "amd64")


def real_bf16_run() -> tuple[bool, str]:
    """What the probe stands for: a bidirectional two-layer encoder of each cell, as the
    models build it, trained one step under bf16 autocast (padded and packed)."""
    lengths = torch.tensor([5, 3])
    for cell in ("lstm", "gru", "rnn"):
        for variable_length in ("padded", "packed"):
            encoder = RNNEncoder(8, 6, cell=cell, num_layers=2, bidirectional=True,
                                 variable_length=variable_length)
            try:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = encoder(torch.randn(2, 5, 8), lengths)
                out.outputs.float().sum().backward()
            except RuntimeError as error:
                return False, f"{cell} {variable_length}: {error}"
    return True, ""


SCRIPT = """
import json
from seqmodels.training.precision import cpu_bf16_rnns
from tests.test_precision import real_bf16_run
probe = cpu_bf16_rnns()
works, error = real_bf16_run()
print(json.dumps({"probe": probe.works, "reason": probe.reason, "real": works, "error": error}))
"""


def test_the_probe_says_what_a_real_bf16_run_does_here(one_thread):
    works, error = real_bf16_run()
    probe = cpu_bf16_rnns()
    assert probe.works == works, (probe, error)
    assert (probe.reason == "") == probe.works


def test_the_probe_says_no_where_onednn_has_no_bf16_lstm():
    """ONEDNN_MAX_CPU_ISA=AVX2 gives oneDNN the kernels of an AVX2-only CPU, whose missing
    bf16 LSTM broke `make test` there."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **AVX2_ONLY})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["probe"] == result["real"], result
    if X86:  # the switch means something to x86 builds of oneDNN only
        assert not result["probe"]
        assert "LSTM" in result["reason"] and "primitive descriptor" in result["reason"]
        assert "\n" not in result["reason"] and "ONEDNN_VERBOSE" not in result["reason"]


def test_the_probe_leaves_the_random_numbers_of_a_seeded_run_alone():
    torch.manual_seed(0)
    expected = torch.rand(4)
    cpu_bf16_rnns.cache_clear()
    torch.manual_seed(0)
    cpu_bf16_rnns()
    assert torch.equal(torch.rand(4), expected)
    assert torch.is_grad_enabled()


@pytest.fixture
def no_bf16_kernels(monkeypatch):
    reason = ("torch.nn.LSTM under bfloat16 autocast fails on this CPU (could not create a "
              "primitive descriptor for the LSTM forward propagation primitive)")
    monkeypatch.setattr(seqmodels.training.precision, "cpu_bf16_rnns", lambda: Probe(False, reason))


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16"])
def test_mixed_precision_on_a_cpu_without_bf16_kernels_is_refused_in_one_line(
        precision, no_bf16_kernels):
    with pytest.raises(ConfigError) as refused:
        check_accelerator({"accelerator": "cpu", "precision": precision})
    message = str(refused.value)
    assert message.startswith(f"trainer.precision={precision}")
    assert "\n" not in message and "primitive descriptor" in message
    assert message.endswith("Use trainer.precision=32-true")


@pytest.mark.parametrize("setting", [{"accelerator": "cpu", "precision": "32-true"},
                                     {"accelerator": "cpu", "precision": "bf16-true"}])
def test_what_runs_without_bf16_kernels_is_let_through(setting, no_bf16_kernels):
    check_accelerator(setting)  # bf16-true does not go through oneDNN's autocast LSTM


def test_a_run_asking_for_bf16_on_such_a_cpu_stops_before_anything_is_built(
        tmp_path, no_bf16_kernels, monkeypatch):
    built = []
    monkeypatch.setattr("seqmodels.cli.train.instantiate_group",
                        lambda *args, **kwargs: built.append(args) or [])
    cfg = compose_config(tmp_path, ["trainer.precision=bf16-mixed"])
    with pytest.raises(ConfigError, match=r"^trainer.precision=bf16-mixed: .*32-true$"):
        train(cfg)
    assert built == []


@pytest.mark.skipif(not X86, reason="ONEDNN_MAX_CPU_ISA=AVX2 stands for an x86 CPU only")
def test_the_cli_refuses_bf16_on_an_avx2_only_cpu_with_one_line(tmp_path):
    done = run_cli("seqmodels.cli.train", "trainer.precision=bf16-mixed",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=AVX2_ONLY)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: trainer.precision=bf16-mixed: torch.nn.LSTM"), lines
    assert lines[-1].endswith("Use trainer.precision=32-true")
    assert "Traceback" not in done.stderr


ADAM = functools.partial(torch.optim.Adam, lr=0.01, fused=True)


class Trainer:
    def __init__(self, scaler):
        self.precision_plugin = type("Plugin", (), {"scaler": scaler})()


def test_fused_adam_is_built_unfused_only_where_scaled_gradients_are_clipped():
    scaled, plain = Trainer(torch.amp.GradScaler("cpu")), Trainer(None)
    assert clippable_optimizer(ADAM, clips=True, trainer=scaled).keywords["fused"] is False
    assert clippable_optimizer(ADAM, clips=False, trainer=scaled) is ADAM  # torch unscales
    assert clippable_optimizer(ADAM, clips=True, trainer=plain) is ADAM
    assert clippable_optimizer(ADAM, clips=True, trainer=None) is ADAM  # no trainer yet
    assert clippable_optimizer(None, clips=True, trainer=scaled) is None
