"""Voucher redemptions over HTTP, end to end: 64 concurrent phones against a real server.

What runs: an embedded PostgreSQL in a temporary directory; the service under uvicorn in
its own processes (``--workers``, default 2), exactly as ``circuit serve`` builds it (audit
sealer and background jobs on); and separate load processes (``--load-processes``, default 2,
on uvloop) sharing 64 clients, each a shop's signed-in phone on a keep-alive connection,
posting ``/merchant/redeem`` (scanned token, 1 cent, a fresh Idempotency-Key each time) as
fast as answers come back. Each client is its
own shop with its own voucher, so the figure is throughput, not one row's lock queue (the
reliability tests cover 200 phones on one voucher). Every answer must be a 201 receipt.

The per-device scan limit (120 a minute in production) is raised for the run: it would
otherwise be the thing measured.

Run: .venv/bin/python bench/redeem_http.py [--seconds 10] [--workers 2] [--clients 64] [--load-processes 2]
Last line: {"bench": "redeem_http", "clients": 64, "redeem_per_s": …, "p50_ms": …, "p99_ms": …}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

PORTS = range(8280, 8300)
WARMUP_SECONDS = 2.0


# --- the load process ------------------------------------------------------------------------

async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str,
                headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a kept-alive connection (the server always sends Content-Length)."""
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode() + body)
    # The status line and headers in one read; then the body by its Content-Length.
    header = await reader.readuntil(b"\r\n\r\n")
    status = int(header[9:12])
    at = header.lower().find(b"\r\ncontent-length:")
    length = int(header[at + 17:header.index(b"\r\n", at + 2)]) if at >= 0 else 0
    return status, await reader.readexactly(length)


async def load(port: int, clients: list[dict], seconds: float, start_at: float) -> dict:
    """Run ``clients`` phones from wall-clock ``start_at`` (warm-up, then ``seconds`` measured),
    so that several load processes measure the same window; every latency is returned."""
    host = f"127.0.0.1:{port}"
    latencies: list[float] = []
    failures: list[str] = []
    sent = 0
    measure_from = start_at + WARMUP_SECONDS
    deadline = measure_from + seconds
    cpu_started = time.process_time()

    async def phone(client: dict) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"token": client["token"], "amount_cents": 1}).encode()
        auth = f"Bearer {client['session']}"
        nonlocal sent
        try:
            await asyncio.sleep(max(0.0, start_at - time.time()))
            while (now := time.time()) < deadline:
                sent += 1
                status, answer = await _post(reader, writer, host, "/merchant/redeem",
                                             {"Authorization": auth, "Idempotency-Key": uuid.uuid4().hex}, body)
                done = time.time()
                if status != 201:
                    failures.append(f"{status} {answer[:200]!r}")
                    return
                if now >= measure_from:
                    latencies.append(done - now)
        finally:
            writer.close()

    await asyncio.gather(*(phone(c) for c in clients))
    return {"latencies": latencies, "failures": failures[:5], "sent": sent, "cpu_s": time.process_time() - cpu_started}


def _summary(parts: list[dict], seconds: float) -> dict:
    latencies = sorted(latency for part in parts for latency in part["latencies"])

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1) if latencies else 0.0

    return {"redeemed": len(latencies), "seconds": seconds, "redeem_per_s": round(len(latencies) / seconds),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "failures": [failure for part in parts for failure in part["failures"]][:5],
            # The load processes' own CPU per answer: if it neared the time between answers, the
            # load generator would be what is measured.
            "load_cpu_us_per_redeem": round(1e6 * sum(part["cpu_s"] for part in parts)
                                            / max(1, sum(part["sent"] for part in parts)))}


# --- the parent: database, seed, server, then the load process -----------------------------

def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 8280-8299")


async def seed(url: str, clients: int) -> list[dict]:
    """One programme; per client, an approved shop with an owner signed in and a voucher."""
    import pyotp
    from stdnum import luhn

    from api.auth import create_user, issue_token
    from ledger import merchants
    from ledger.database import create_engine, ensure_database, migrate
    from ledger.programmes import create_programme
    from ledger.scheme import create_issuer
    from ledger.vouchers import VoucherLine, sell_vouchers

    await ensure_database(url)
    engine = create_engine(url)
    await migrate(engine)
    seeded = []
    async with engine.begin() as conn:
        issuer_id = await create_issuer(conn, name="Bench issuer", siren="732829320")
        programme = await create_programme(conn, issuer_id=issuer_id, kind="gift", unit="EUR", actor="bench",
                                           name="Bench gift", face_value_max_cents=1_000_000)
        await merchants.add_category(conn, issuer_id=issuer_id, code="librairie", label_fr="Librairie",
                                     label_en="Bookshop", actor="bench")
        sold = await sell_vouchers(conn, programme=programme, key="bench-vouchers",
                                   lines=[VoucherLine(1_000_000) for _ in range(clients)], actor="bench")
        for index, voucher in enumerate(sold):
            siret_body = f"{index + 1:08d}"
            siren = siret_body + luhn.calc_check_digit(siret_body)
            siret = siren + "0001"
            siret += luhn.calc_check_digit(siret)
            merchant_id = await merchants.apply(conn, merchants.Application(
                issuer_id=issuer_id, legal_name=f"Shop {index}", trade_name=f"Shop {index}", siret=siret,
                iban="FR7630006000011234567890189", category="librairie", naf_code="47.61Z",
                address_line="1 rue du Banc", postcode="16000", commune="Angoulême", email=f"shop{index}@bench.test",
                phone="0545000000", programme_ids=(programme.id,)), actor="bench")
            await merchants.approve(conn, merchant_id, [programme.id], actor="bench")
            user_id = await create_user(conn, email=f"owner{index}@bench.test", password="bench-password-1",
                                        role="merchant_owner", merchant_id=merchant_id, totp_secret=pyotp.random_base32())
            session, _ = await issue_token(conn, user_id=user_id, label=f"bench phone {index}")
            seeded.append({"session": session, "token": voucher.token, "account_id": voucher.account_id})
    await engine.dispose()
    return seeded


def _tree_cpu_s(root_pid: int) -> float:
    """CPU seconds (user + system) of a process, its reaped children and its live descendants."""
    children: dict[int, list[int]] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()  # from field 3 (state) on
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += times.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total / os.sysconf("SC_CLK_TCK")


def _result_file(clients_file: Path) -> Path:
    return clients_file.with_suffix(".result.json")


def _wait_healthy(port: int, process: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(log.read_text()[-4000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the server did not become healthy in 60 s")


def main(seconds: float, workers: int, clients: int, load_processes: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="merchants-bench-"))
    os.environ["CIRCUIT_DATA_DIR"] = str(directory)
    os.environ["CIRCUIT_RECEIPT_KEY_FILE"] = str(directory / "receipt-key.pem")
    server = None
    try:
        from ledger.database import embedded_url

        url = embedded_url()
        seeded = asyncio.run(seed(url, clients))
        port = _free_port()
        log_path = directory / "server.log"
        env = {**os.environ, "DATABASE_URL": url, "CIRCUIT_SCANS_PER_MINUTE": "100000000"}
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--host", "127.0.0.1",
                 "--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )
        _wait_healthy(port, server, log_path)
        # Several load processes (each its share of the phones on its own event loop), started
        # together and measuring the same wall-clock window.
        start_at = time.time() + 2.0
        loaders = []
        for index in range(load_processes):
            share = directory / f"clients-{index}.json"
            share.write_text(json.dumps(seeded[index::load_processes]))
            loaders.append(subprocess.Popen(
                [sys.executable, __file__, "--load", str(port), str(share), "--seconds", str(seconds),
                 "--start-at", repr(start_at)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                env={**os.environ, "STRUCTLOG_LEVEL": "warning"},
            ))
        # CPU spent by the server's processes and by PostgreSQL's over the measured window: what
        # a redemption costs whatever else the machine runs (the throughput depends on that).
        postmaster = int((directory / "pg" / "postmaster.pid").read_text().split()[0])
        time.sleep(max(0.0, start_at + WARMUP_SECONDS - time.time()))
        cpu_before = _tree_cpu_s(server.pid), _tree_cpu_s(postmaster)
        time.sleep(max(0.0, start_at + WARMUP_SECONDS + seconds - time.time()))
        cpu_used = _tree_cpu_s(server.pid) - cpu_before[0], _tree_cpu_s(postmaster) - cpu_before[1]
        parts = []
        for loader in loaders:
            out, err = loader.communicate()
            if loader.returncode != 0:
                raise RuntimeError(err[-4000:])
            parts.append(json.loads(_result_file(directory / f"clients-{len(parts)}.json").read_text()))
        measured = _summary(parts, seconds)
        if measured["failures"]:
            raise RuntimeError(f"refused redemptions during the run: {measured['failures']}")
        return {"bench": "redeem_http", "clients": clients, "redeem_per_s": measured["redeem_per_s"],
                "p50_ms": measured["p50_ms"], "p99_ms": measured["p99_ms"], "workers": workers,
                "load_processes": load_processes, "redeemed": measured["redeemed"], "seconds": measured["seconds"],
                "load_cpu_us_per_redeem": measured["load_cpu_us_per_redeem"],
                "server_cpu_ms_per_redeem": round(1000 * cpu_used[0] / max(1, measured["redeemed"]), 2),
                "postgres_cpu_ms_per_redeem": round(1000 * cpu_used[1] / max(1, measured["redeemed"]), 2)}
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        if (directory / "pg" / "postmaster.pid").exists():
            from ledger.database import start_embedded_server

            # Stopped before its directory goes: at exit, with no directory, it would stay up.
            start_embedded_server(directory / "pg").cleanup()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=2, metavar=("PORT", "CLIENTS_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        port, clients_file = int(args.load[0]), Path(args.load[1])
        import uvloop  # the server's event loop too (uvicorn[standard])

        measured = uvloop.run(load(port, json.loads(clients_file.read_text()), args.seconds, args.start_at))
        # Into a file, not stdout: through the pipe, a result over 64 KiB (every latency of a
        # fast run) came out cut short.
        _result_file(clients_file).write_text(json.dumps(measured))
    else:
        print(json.dumps(main(args.seconds, args.workers, args.clients, args.load_processes)))
