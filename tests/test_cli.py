"""The ``hvcore`` command: ``main([...])`` in-process, and ``python -m hvcore`` once as a subprocess."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import TextIO

import pytest

import hvcore
from hvcore import cli
from hvcore.demo import EXPECTED_CONSOLE, EXPECTED_VALUE, HELLO, DemoResult, run_demo
from tests.conftest import open_or_skip
from tests.guests import real_mode

SUBPROCESS_TIMEOUT = 60


def _stderr_line(err: str) -> str:
    """The single line on stderr (asserting there is exactly one, and no traceback)."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_demo_on_each_usable_backend(backend_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    open_or_skip(backend_name).close()  # skips with the backend's own reason where unusable

    status = cli.main(["demo", "--backend", backend_name])

    out, err = capsys.readouterr()
    assert status == 0, err
    assert err == ""
    assert out.startswith(f"backend   {backend_name} (requested with --backend)\n")
    assert f"console   {EXPECTED_CONSOLE}" in out
    assert "computed  42 (sent to port 0x3f9)\n" in out
    assert "exits     24 (IO 23, HLT 1)\n" in out
    assert "\ntime      " in out


def test_run_demo_result(backend_name: str) -> None:
    with open_or_skip(backend_name) as hv:
        console = io.StringIO()
        result = run_demo(hv, console)
    assert console.getvalue() == result.console == EXPECTED_CONSOLE
    assert result.value == EXPECTED_VALUE == 42
    assert result.backend == backend_name
    assert dict(result.exits) == {"IO": 23, "HLT": 1}
    assert result.total_exits == 24
    assert result.elapsed > 0


@pytest.mark.parametrize(
    ("guest", "max_exits", "timeout", "message"),
    [
        (real_mode.PRINTS_5, 1000, 10.0, "halted on backend {name!r} without sending a value to port 0x3f9"),
        (real_mode.REP_INSB, 1000, 10.0, "unexpected exit on backend {name!r}: IN from port 0x20 (size 1)"),
        (real_mode.IO_SIZES, 1000, 10.0, "unexpected exit on backend {name!r}: OUT to port 0x10 (data 11)"),
        (real_mode.SPIN, 1000, 0.2, "did not halt within 0.2 s on backend {name!r}"),
        (HELLO, 5, 10.0, "did not halt within 5 exits on backend {name!r}"),
    ],
    ids=["no-value", "in", "other-port", "timeout", "max-exits"],
)
def test_run_demo_failures_name_the_problem(
    hv: hvcore.Hypervisor, guest: bytes, max_exits: int, timeout: float, message: str
) -> None:
    with pytest.raises(hvcore.HypervisorFault, match=r"^the demo guest ") as caught:
        run_demo(hv, io.StringIO(), guest=guest, max_exits=max_exits, timeout=timeout)
    assert message.format(name=hv.name) in caught.value.message
    # Everything was closed: the same hypervisor runs the real demo afterwards.
    assert run_demo(hv, io.StringIO()).value == 42


def test_demo_failure_in_cli_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    if all(reason is not None for reason in hvcore.available_backends().values()):
        pytest.skip("no backend usable here")

    def failing(hypervisor: hvcore.Hypervisor, out: TextIO) -> DemoResult:
        out.write("partial")
        raise hvcore.HypervisorFault("the demo guest made an unexpected exit: ShutdownExit()")

    monkeypatch.setattr(cli, "run_demo", failing)

    assert cli.main(["demo"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[1:] == ["console   partial"]
    assert _stderr_line(err) == "hvcore: error: the demo guest made an unexpected exit: ShutdownExit()"


def test_demo_auto_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    reasons = hvcore.available_backends()
    if all(reason is not None for reason in reasons.values()):
        pytest.skip(f"no backend usable here: {reasons}")

    assert cli.main(["demo"]) == 0

    first = capsys.readouterr().out.splitlines()[0]
    if reasons.get("kvm") is None:
        assert first == "backend   kvm (/dev/kvm usable)"
    else:
        assert first.startswith(f"backend   sim (kvm unusable: {reasons['kvm']}")


def test_demo_on_unusable_backend_is_one_line_error(backend_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    reason = hvcore.available_backends()[backend_name]
    if reason is None:
        pytest.skip(f"backend {backend_name!r} is usable here")

    status = cli.main(["demo", "--backend", backend_name])

    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    line = _stderr_line(err)
    assert line.startswith(f"hvcore: error: backend {backend_name!r} is not usable here: ")
    assert reason in line


def test_bad_backend_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["demo", "--backend", "nonsense"])

    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    line = _stderr_line(err)
    assert line.startswith("hvcore demo: error: argument --backend: invalid choice: 'nonsense'")
    assert line.endswith("(see 'hvcore demo --help')")


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        ([], "hvcore"),
        (["frobnicate"], "hvcore"),
        (["demo", "--backend"], "hvcore demo"),
        (["info", "--extra"], "hvcore"),
    ],
)
def test_usage_errors(argv: list[str], prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    """As argparse says them: after the name of the (sub)command whose arguments were wrong."""
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert _stderr_line(err).startswith(f"{prog}: error: ")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"hvcore {hvcore.__version__}\n"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out
    assert "info" in out


def test_info_lists_every_backend(capsys: pytest.CaptureFixture[str]) -> None:
    reasons = hvcore.available_backends()
    assert {"kvm", "sim"} <= set(reasons)

    status = cli.main(["info"])

    out, err = capsys.readouterr()
    assert status == 0, err
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"hvcore {hvcore.__version__}"
    for name, reason in reasons.items():
        row = next(line for line in lines if line.split()[0] == name)
        assert row.split(maxsplit=1)[1] == ("usable" if reason is None else f"unusable: {reason}")
    if reasons["kvm"] is None:
        assert "API version   12" in out
        assert "vCPUs" in out
        assert "MSRs" in out
        assert "CPUID" in out
    assert lines[-1].startswith("auto  ")


def test_runtime_error_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def unusable(name: str = "auto") -> hvcore.Hypervisor:
        raise hvcore.BackendUnavailable("no backend is usable here:\n  kvm: no /dev/kvm\n  sim: not built")

    monkeypatch.setattr(hvcore, "open_hypervisor", unusable)

    assert cli.main(["demo"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert _stderr_line(err) == "hvcore: error: no backend is usable here: kvm: no /dev/kvm; sim: not built"


def test_python_dash_m_demo() -> None:
    if all(reason is not None for reason in hvcore.available_backends().values()):
        pytest.skip("no backend usable here")

    proc = subprocess.run(
        [sys.executable, "-m", "hvcore", "demo", "--backend", "auto"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "Hello from the guest!" in proc.stdout
    assert "computed  42" in proc.stdout
