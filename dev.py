#!/usr/bin/env python3
"""Set up Circuit and run it, or run its tests: the two commands of the README.

    python3 dev.py serve   # venv + install + migrate + demo data + serve on 127.0.0.1:8000
    python3 dev.py test    # venv + install (with test tools) + the whole test suite

Needs only Python 3.11+. Creates ``.venv`` beside this file on first use and reinstalls only
when pyproject.toml changes. For the browser tests it installs Debian's ``chromium`` with
apt-get when it is missing and this machine allows it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".install-stamp"
# Debian packages the test suite uses, and the file that shows each is installed.
SYSTEM_PACKAGES = {"chromium": "/usr/bin/chromium"}


def run(*command: str, **kwargs) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)


def ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Circuit needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    run(str(BIN / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    target = f".[{extras}]" if extras else "."
    run(str(BIN / "python"), "-m", "pip", "install", "--quiet", "-e", target, cwd=ROOT)
    STAMP.write_text(wanted)


def ensure_system_packages() -> None:
    missing = [name for name, path in SYSTEM_PACKAGES.items() if not Path(path).exists()]
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        sys.exit(f"The browser tests need Debian packages {missing}: install them (apt-get install -y "
                 f"{' '.join(missing)}) and run again.")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-qq", env=env)
    run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, env=env)


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "serve":
        ensure_venv("")
        os.execv(str(BIN / "circuit"), [str(BIN / "circuit"), "serve", "--demo", *sys.argv[2:]])
    elif command == "test":
        ensure_venv("test")
        ensure_system_packages()
        os.chdir(ROOT)
        os.execv(str(BIN / "python"), [str(BIN / "python"), "-m", "pytest", *sys.argv[2:]])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
