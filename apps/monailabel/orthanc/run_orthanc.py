"""Start and stop a throwaway Orthanc DICOM server (with its DICOMweb plugin) on the loopback interface.

    python apps/monailabel/orthanc/run_orthanc.py start [--port 8042] [--dir FOLDER]   # prints the PID
    python apps/monailabel/orthanc/run_orthanc.py stop PID

``start`` writes a configuration into a new temporary folder (or ``--dir``), starts ``Orthanc`` in the background
with its storage and index in that folder, waits until ``GET /system`` answers, and prints the process id on stdout
(the URLs go to stderr). Orthanc listens on 127.0.0.1 only, without authentication, with its DICOM (DIMSE) port
off; DICOMweb is at ``http://127.0.0.1:PORT/dicom-web``. ``stop`` ends that process by its id and deletes the
temporary folder (a folder given with ``--dir`` is kept). It refuses ids that are not an Orthanc started here.

Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb``. The packaged service does not run in containers
without an init system, hence this script. Standard library only: it runs under any Python 3.9+.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BINARY_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
CONFIG_NAME = "orthanc.json"
THROWAWAY_MARK = ".throwaway"  # in folders this script created itself: `stop` may delete them
INSTALL_HINT = "install the Debian packages: apt-get install -y orthanc orthanc-dicomweb"


class OrthancError(RuntimeError):
    pass


def find_binary() -> str | None:
    """Path of the Orthanc executable, or None (not on PATH for non-root users: it lives in /usr/sbin)."""
    found = shutil.which("Orthanc")
    if found:
        return found
    return next((p for p in BINARY_CANDIDATES if os.access(p, os.X_OK)), None)


def missing() -> str | None:
    """Why Orthanc with DICOMweb cannot be started here (a sentence), or None when it can."""
    if find_binary() is None:
        return f"the Orthanc binary is not installed; {INSTALL_HINT}"
    if not os.path.isfile(DICOMWEB_PLUGIN):
        return f"the Orthanc DICOMweb plugin ({DICOMWEB_PLUGIN}) is not installed; {INSTALL_HINT}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def config(port: int, folder: Path) -> dict:
    storage = str(folder / "storage")
    return {
        "Name": "throwaway",
        "HttpPort": port,
        "RemoteAccessAllowed": False,  # with it, Orthanc answers on 127.0.0.1 only
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,  # DICOMweb over HTTP only; no DIMSE port to collide or expose
        "DicomPort": 0,
        "StorageDirectory": storage,
        "IndexDirectory": storage,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "SaveJobs": False,
    }


class Orthanc:
    """A running Orthanc: ``pid``, ``url`` (REST API), ``dicomweb`` (DICOMweb root) and ``folder``."""

    def __init__(self, pid: int, port: int, folder: Path):
        self.pid, self.port, self.folder = pid, port, Path(folder)
        self.url = f"http://127.0.0.1:{port}"
        self.dicomweb = f"{self.url}/dicom-web"

    def stop(self, timeout: float = 20.0) -> None:
        stop(self.pid, timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/system", timeout=2) as r:
            return r.status == 200 and "Version" in json.loads(r.read().decode())
    except (OSError, ValueError, urllib.error.URLError):
        return False


def _log_tail(folder: Path) -> str:
    try:
        return (folder / "orthanc.log").read_text(errors="replace")[-2000:]
    except OSError:
        return ""


def start(port: int | None = None, folder: str | os.PathLike | None = None, timeout: float = 60.0) -> Orthanc:
    """Start Orthanc in the background and return once ``GET /system`` answers; OrthancError otherwise."""
    reason = missing()
    if reason:
        raise OrthancError(reason)
    if port is None:
        port = free_port()
    elif _port_taken(port):
        raise OrthancError(f"port {port} on 127.0.0.1 is already in use; choose another with --port")
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="orthanc-"))
        (folder / THROWAWAY_MARK).touch()
    folder = Path(folder).resolve()
    (folder / "storage").mkdir(parents=True, exist_ok=True)
    cfg = folder / CONFIG_NAME
    cfg.write_text(json.dumps(config(port, folder), indent=2))
    with open(folder / "orthanc.log", "ab") as log:
        # a session of its own: the server outlives `start`, and a Ctrl-C in the calling shell does not reach it
        proc = subprocess.Popen(
            [find_binary(), str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            start_new_session=True,
        )
    server = Orthanc(proc.pid, port, folder)
    deadline = time.time() + timeout
    while not _answers(server.url):
        if proc.poll() is not None:
            raise OrthancError(f"Orthanc exited with status {proc.returncode}:\n{_log_tail(folder)}")
        if time.time() > deadline:
            stop(proc.pid)
            raise OrthancError(f"Orthanc did not answer on {server.url} within {timeout:g} s:\n{_log_tail(folder)}")
        time.sleep(0.2)
    return server


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _gone(pid: int) -> bool:
    try:  # our own child: reap it, or it stays a zombie that still looks alive
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def stop(pid: int, timeout: float = 20.0) -> None:
    """Stop the Orthanc with process id ``pid`` that :func:`start` launched, and delete its throwaway folder.

    Refuses (OrthancError) a process that is not Orthanc running a configuration written by this script, so a
    mistyped id never ends an unrelated process.
    """
    pid = int(pid)
    cmd = _cmdline(pid)
    if not cmd or not cmd[0]:
        raise OrthancError(f"no process {pid}")
    cfg = Path(cmd[1]) if len(cmd) > 1 and cmd[1] else None
    if os.path.basename(cmd[0]) != "Orthanc" or cfg is None or cfg.name != CONFIG_NAME:
        raise OrthancError(f"process {pid} is not an Orthanc started by this script: {' '.join(cmd)!r}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while not _gone(pid):
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.time() + 5
        time.sleep(0.1)
    folder = cfg.parent
    if (folder / THROWAWAY_MARK).is_file():
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("start", help="start Orthanc; prints its process id")
    up.add_argument("--port", type=int, default=None, help="HTTP port on 127.0.0.1 (default: a free one)")
    up.add_argument("--dir", default=None, help="storage folder to keep (default: a temporary folder)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for GET /system")
    down = sub.add_parser("stop", help="stop the Orthanc with this process id")
    down.add_argument("pid", type=int)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            server = start(args.port, args.dir, args.timeout)
            print(f"Orthanc {server.pid}: REST {server.url}, DICOMweb {server.dicomweb}", file=sys.stderr)
            print(f"storage {server.folder}; stop it with: {Path(__file__).name} stop {server.pid}", file=sys.stderr)
            print(server.pid)
        else:
            stop(args.pid)
    except OrthancError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
