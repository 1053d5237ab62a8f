"""A throwaway PostgreSQL cluster in a temporary folder on 127.0.0.1, for tests and the central
sync benchmark: Debian's `postgresql` server binaries, run as the `postgres` user when we are root
(the server refuses to run as root), password authentication over TCP.

    python -m agetool.benchmarks.pg_throwaway   # starts one, prints its URL, stops it on Ctrl-C
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from agetool.benchmarks.procfs import free_port

USER = "agetool"
PASSWORD = "throwaway-pw-7f3c"  # a local throwaway cluster; tests check it never reaches a log


def server_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl, or $AGETOOL_PG_BIN."""
    if os.environ.get("AGETOOL_PG_BIN"):
        return Path(os.environ["AGETOOL_PG_BIN"])
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return candidates[-1].parent if candidates else None


class ThrowawayCluster:
    """initdb + pg_ctl start in a temporary folder; stop() removes it."""

    def __init__(self, fsync: bool = False, settings: dict[str, str] | None = None) -> None:
        # fsync off (tests): a killed server keeps what it committed (the OS has it), a crashed
        # machine would not. synchronous_commit stays on: the till trusts a COMMIT it was answered.
        bin_dir = server_bin_dir()
        if bin_dir is None:
            raise FileNotFoundError("no PostgreSQL server binaries (apt-get install postgresql)")
        self.bin_dir = bin_dir
        self.port = free_port()
        self.fsync = fsync
        self.settings = dict(settings or {})  # server settings (-c name=value) beyond those below
        self.root = Path(tempfile.mkdtemp(prefix="agetool-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o700)

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    def init(self) -> "ThrowawayCluster":
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8")
        pwfile.unlink()
        return self

    def start(self) -> "ThrowawayCluster":
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=50"
                   + ("" if self.fsync else " -c fsync=off -c full_page_writes=off")
                   + "".join(f" -c {name}={value}" for name, value in self.settings.items()))
        result = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60",
                           "start", check=False)
        if result.returncode != 0:
            log_text = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {result.stderr.strip()} {log_text[-2000:]}")
        return self

    def postmaster_pid(self) -> int:
        """The running server's process id (first line of postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def main() -> None:
    cluster = ThrowawayCluster().init().start()
    print(cluster.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
