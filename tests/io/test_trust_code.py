"""A checkpoint's metadata builds only geopath's and torchvision's architectures; other code runs only
when the user names it (--arch) or allows it (--trust-code). Users' own architectures: a class or a
function, from a module in the current directory or a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from geopath.errors import CheckpointError, UsageError
from geopath.io.archs import build_model, trusted
from geopath.io.checkpoint import load_checkpoint, save_checkpoint

from .._helpers import DATA_ROOT, ROOT, one_error_line

MARKER_MODULE = '''
import pathlib
from torch import nn
pathlib.Path("{marker}").write_text("imported")

class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.fc = nn.Linear(784, width)
        self.out = nn.Linear(width, 10)

    def forward(self, x):
        return self.out(self.fc(x.flatten(1)).relu())

def make_seq():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10))
'''


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A module ``usermods`` in the current directory that writes a marker file when imported."""
    marker = tmp_path / "imported.txt"
    (tmp_path / "usermods.py").write_text(MARKER_MODULE.format(marker=marker))
    monkeypatch.chdir(tmp_path)
    yield tmp_path, marker
    for name in [m for m in sys.modules if m == "usermods" or m.startswith("geopath_user_usermods")]:
        del sys.modules[name]


def _ck(path: Path, arch: str, model: nn.Module, kwargs=None) -> Path:
    save_checkpoint(path, model, arch, kwargs or {}, extra={"data": "mnist"})
    return path


class _NetLike(nn.Module):  # the same tensors as usermods.Net, built without importing it
    def __init__(self, width=4):
        super().__init__()
        self.fc = nn.Linear(784, width)
        self.out = nn.Linear(width, 10)


def _net(width=4):
    torch.manual_seed(0)
    return _NetLike(width)


def test_metadata_naming_user_code_is_refused_without_running_it(user_code):
    tmp, marker = user_code
    ck = _ck(tmp / "net.safetensors", "usermods:Net", _net(), {"width": 4})
    with pytest.raises(UsageError, match="pass --arch usermods:Net") as e:
        load_checkpoint(ck)
    assert "--trust-code" in str(e.value)
    assert not marker.exists()  # nothing was imported
    # a standard-library module is code outside geopath too
    this = _ck(tmp / "this.safetensors", "this:Net", _net())
    with pytest.raises(UsageError, match="outside geopath and torchvision"):
        load_checkpoint(this)


def test_metadata_naming_an_unknown_architecture_asks_for_one_that_builds(tmp_path):
    """A name that is neither built in nor code (``module:NAME``) was answered "pass --arch nosucharch", which then
    failed as an unknown architecture."""
    ck = _ck(tmp_path / "net.safetensors", "nosucharch", _net())
    with pytest.raises(UsageError) as e:
        load_checkpoint(ck)
    assert "names architecture 'nosucharch', which geopath does not know; pass --arch (" in str(e.value)
    assert "--arch nosucharch" not in str(e.value)


def test_named_or_allowed_user_code_builds(user_code):
    tmp, marker = user_code
    ck = _ck(tmp / "net.safetensors", "usermods:Net", _net(), {"width": 4})
    a = load_checkpoint(ck, arch="usermods:Net", arch_kwargs={"width": 4})
    assert marker.read_text() == "imported"
    b = load_checkpoint(ck, trust_code=True)
    assert b.arch == "usermods:Net" and b.arch_kwargs == {"width": 4}
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(a.model(x), b.model(x))


def test_geopath_and_torchvision_architectures_build_from_metadata(tmp_path):
    assert trusted("mlp") and trusted("vgg11") and trusted("torchvision:resnet18")
    assert not trusted("usermods:Net") and not trusted("nets.py:make") and not trusted("os:system")
    ck = _ck(tmp_path / "mlp.safetensors", "mlp", build_model("mlp", {"hidden": [8]}), {"hidden": [8]})
    assert load_checkpoint(ck).arch_kwargs == {"hidden": [8]}


def test_a_file_and_a_factory_function_are_architectures(user_code):
    tmp, marker = user_code
    seq = build_model(f"{tmp / 'usermods.py'}:make_seq")
    assert isinstance(seq, nn.Sequential)
    again = build_model(f"{tmp / 'usermods.py'}:make_seq")
    assert [k for k in again.state_dict()] == ["1.weight", "1.bias", "3.weight", "3.bias"]
    with pytest.raises(UsageError, match="no class or function 'missing'"):
        build_model("usermods.py:missing")
    with pytest.raises(UsageError, match="no such file"):
        build_model("nowhere/nets.py:Net")
    with pytest.raises(UsageError, match="cannot import module 'no_such_module_xyz'.*file"):
        build_model("no_such_module_xyz:Net")
    (tmp / "notnet.py").write_text("def make():\n    return 3\n")
    with pytest.raises(UsageError, match="returned int, not an nn.Module"):
        build_model("notnet.py:make")


def test_a_plain_sequential_state_dict_gets_a_hint_and_loads_with_its_factory(user_code):
    tmp, _ = user_code
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10))
    torch.save(seq.state_dict(), tmp / "plain.pt")
    with pytest.raises(CheckpointError, match="nn.Sequential's: pass the code that builds it"):
        load_checkpoint(tmp / "plain.pt", arch="mlp")
    with pytest.raises(UsageError, match="nn.Sequential's"):
        load_checkpoint(tmp / "plain.pt")
    ck = load_checkpoint(tmp / "plain.pt", arch="usermods.py:make_seq")
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(ck.model(x), seq(x))


def _console(*args, cwd):
    """The installed console script (unlike ``python -m``, it has no current directory on sys.path)."""
    script = Path(sys.executable).parent / "geopath"
    if not script.exists():
        pytest.skip("no geopath console script next to this interpreter")
    env = {**os.environ, "GEOPATH_DATA_ROOT": str(DATA_ROOT), "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_the_console_script_refuses_metadata_code_and_imports_from_the_current_directory(user_code):
    tmp, marker = user_code
    ck = _ck(tmp / "net.safetensors", "usermods:Net", _net(), {"width": 4})
    proc = _console("eval", ck, "--data", "mnist", "--size", "100", cwd=tmp)
    assert proc.returncode == 2
    assert "pass --arch usermods:Net" in one_error_line(proc)
    assert not marker.exists()
    if not (DATA_ROOT / "MNIST").exists():
        pytest.skip("MNIST not present")
    ok = _console("eval", ck, "--arch", "usermods:Net", "--arch-kwargs", '{"width": 4}', "--data", "mnist",
                  "--size", "100", "--json", cwd=tmp)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["samples"] == 100 and marker.exists()


def test_the_help_texts_list_every_built_in_architecture(tmp_path):
    """``ARCH_SPECS`` (torch-free, for the help texts and the no-architecture error) names ``BUILTIN``'s
    architectures, no more and no fewer; the error a file without its architecture gets lists them."""
    from safetensors.torch import save_file

    from geopath.core.choices import ARCH_SPECS, BUILTIN_ARCHS
    from geopath.io.archs import BUILTIN

    assert BUILTIN_ARCHS == tuple(BUILTIN)
    path = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(UsageError) as info:
        load_checkpoint(path)
    assert f"pass --arch ({ARCH_SPECS})" in str(info.value) and "resnet20, vit, torchvision:NAME" in str(info.value)
