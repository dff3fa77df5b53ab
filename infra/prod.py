"""medlake's production profile on one machine: real services, started and stopped by process id.

    python infra/prod.py up [--only pg,s3,mlflow,airflow,spark]   # start, print the endpoints
    python infra/prod.py status                                  # what runs, by pid
    python infra/prod.py env                                     # the client settings (no secrets)
    python infra/prod.py down                                    # stop what `up` started

State lives under ``$MEDLAKE_PROD_HOME`` (default ``<repo>/.medlake-prod``, git-ignored; not under
``$MEDLAKE_HOME``, which medlake makes 0700 on every run: PostgreSQL runs as its own user when
the profile runs as root, and must traverse the folders above its data directory): ``tls/`` (a CA and the
server certificate, made at set-up), ``secrets/`` (0600 files; ``MEDLAKE_PROD_<NAME>`` in the
environment wins), ``pids/``, ``logs/`` and each service's data. Ports are ``$MEDLAKE_PROD_PORT_BASE``
(default 18400) plus a fixed offset. Everything binds to 127.0.0.1.

- PostgreSQL 15 (Debian's binaries; TLS only, scram-sha-256) holds the Airflow and MLflow metadata.
- versitygw (built from the Go module proxy by ``make infra-deps``) serves S3 over TLS from
  ``s3/data``: buckets ``lake`` (the medlake lake) and ``mlflow`` (MLflow's artifacts).
- MLflow tracking server on PostgreSQL, artifacts proxied to ``s3://mlflow/artifacts``.
- Airflow 3 api-server, scheduler and dag-processor on PostgreSQL (LocalExecutor).
- Spark standalone master, two workers and a Spark Connect server from the pip-installed pyspark,
  with delta-spark and hadoop-aws (S3A) jars from Maven Central (``make infra-deps``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procs
from tls import Certs, ensure_certs

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PG_BIN = Path(os.environ.get("MEDLAKE_PROD_PG_BIN", "/usr/lib/postgresql/15/bin"))
VERSITYGW = REPO / ".venv" / "infra-bin" / "versitygw"
S3A_JARS = REPO / ".venv" / "jars-s3a"
DELTA_JARS = REPO / ".venv" / "jars"
SERVICES = ("pg", "s3", "mlflow", "airflow", "spark")
BUCKETS = ("lake", "mlflow")
LAKE_URI = "s3://lake/medlake"
#: the process names each service starts, in start order (stopped in reverse)
PROCESSES = {
    "pg": ("postgres",),
    "s3": ("versitygw",),
    "mlflow": ("mlflow",),
    "airflow": ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor"),
    "spark": ("spark-master", "spark-worker-1", "spark-worker-2", "spark-connect"),
}
#: Spark workers (``MEDLAKE_PROD_SPARK_WORKERS``, default 2; the test starts one): their UIs take
#: the ports after the worker UI's, 10 apart
MAX_SPARK_WORKERS = 2


@dataclass(frozen=True)
class Profile:
    """Where the profile keeps its state, and its ports."""

    home: Path
    base: int
    spark_workers: int = 2

    @classmethod
    def from_env(cls) -> Profile:
        home = Path(os.environ.get("MEDLAKE_PROD_HOME", REPO / ".medlake-prod")).resolve()
        workers = int(os.environ.get("MEDLAKE_PROD_SPARK_WORKERS", "2"))
        if not 1 <= workers <= MAX_SPARK_WORKERS:
            raise ValueError(f"MEDLAKE_PROD_SPARK_WORKERS is 1 to {MAX_SPARK_WORKERS}, not {workers}")
        return cls(home=home, base=int(os.environ.get("MEDLAKE_PROD_PORT_BASE", "18400")), spark_workers=workers)

    def processes(self, service: str) -> tuple[str, ...]:
        """The processes ``service`` runs here, in start order."""
        if service == "spark":
            workers = tuple(f"spark-worker-{n}" for n in range(1, self.spark_workers + 1))
            return ("spark-master", *workers, "spark-connect")
        return PROCESSES[service]

    def port(self, service: str) -> int:
        offsets = {
            "pg": 32, "s3": 70, "mlflow": 50, "airflow": 80, "spark_master": 77,
            "spark_master_ui": 81, "spark_worker_ui": 82, "spark_connect": 2, "spark_ui": 40,
            "airflow_logs": 93,
        }
        return self.base + offsets[service]

    pids = property(lambda self: self.home / "pids")
    logs = property(lambda self: self.home / "logs")
    certs = property(lambda self: Certs(self.home / "tls"))

    def endpoints(self) -> dict[str, str]:
        return {
            "postgres": f"postgresql://127.0.0.1:{self.port('pg')} (sslmode=verify-full)",
            "s3": f"https://127.0.0.1:{self.port('s3')}",
            "lake": LAKE_URI,
            "mlflow": f"http://127.0.0.1:{self.port('mlflow')}",
            "airflow": f"http://127.0.0.1:{self.port('airflow')}",
            "spark_master": f"spark://127.0.0.1:{self.port('spark_master')}",
            "spark_master_ui": f"http://127.0.0.1:{self.port('spark_master_ui')}",
            "spark_connect": f"sc://127.0.0.1:{self.port('spark_connect')}",
        }


# --- secrets ----------------------------------------------------------------------------------


def secret(profile: Profile, name: str, *, make: bool = True) -> str:
    """A secret: ``MEDLAKE_PROD_<NAME>`` from the environment, else the 0600 file
    ``secrets/<name>`` (generated on first use)."""
    from_env = os.environ.get(f"MEDLAKE_PROD_{name.upper()}")
    if from_env:
        return from_env
    path = secret_file(profile, name)
    if not path.exists():
        if not make:
            raise FileNotFoundError(f"no secret {name} in {path.parent}: run `make prod-up` first")
        _write_private(path, secrets.token_urlsafe(24 if name != "s3_access_key" else 12) + "\n")
    return path.read_text().strip()


def secret_file(profile: Profile, name: str) -> Path:
    return profile.home / "secrets" / name


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def pgpass(profile: Profile) -> Path:
    """A libpq password file (0600) for the airflow and mlflow roles: no password in any URI."""
    port = profile.port("pg")
    lines = [f"127.0.0.1:{port}:{db}:{db}:{secret(profile, 'pg_' + db)}" for db in ("airflow", "mlflow")]
    path = secret_file(profile, "pgpass")
    _write_private(path, "\n".join(lines) + "\n")
    return path


def db_uri(profile: Profile, db: str, *, driver: str = "psycopg2") -> str:
    """SQLAlchemy URI of a metadata DB: TLS verified against the profile's CA, password from PGPASSFILE."""
    return (
        f"postgresql+{driver}://{db}@127.0.0.1:{profile.port('pg')}/{db}"
        f"?sslmode=verify-full&sslrootcert={profile.certs.ca}"
    )


def base_env(profile: Profile) -> dict[str, str]:
    """The environment every service and client of the profile starts from."""
    env = dict(os.environ)
    env.update(
        {
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
            "PGPASSFILE": str(secret_file(profile, "pgpass")),
            "AWS_ACCESS_KEY_ID": secret(profile, "s3_access_key"),
            "AWS_SECRET_ACCESS_KEY": secret(profile, "s3_secret_key"),
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"https://127.0.0.1:{profile.port('s3')}",
            "AWS_CA_BUNDLE": str(profile.certs.ca),
            "MLFLOW_S3_ENDPOINT_URL": f"https://127.0.0.1:{profile.port('s3')}",
            "PYSPARK_PYTHON": sys.executable,
            "GX_ANALYTICS_ENABLED": "false",
            "NO_PROXY": "*",
        }
    )
    return env


def client_settings(profile: Profile) -> dict[str, str]:
    """medlake's settings for a client of the running profile (paths to secrets, never values).

    The profile's Airflow tasks run with the same settings and ``MEDLAKE_HOME``: an ``s3://`` lake
    maps to one local folder there (its locks, run summaries, audit head) and the keys are one set.
    """
    return {
        "MEDLAKE_HOME": str(profile.home / "medlake"),
        "MEDLAKE__LAKE__ROOT": LAKE_URI,
        "MEDLAKE__S3__ENDPOINT": f"https://127.0.0.1:{profile.port('s3')}",
        "MEDLAKE__S3__CA_FILE": str(profile.certs.ca),
        "MEDLAKE__S3__ACCESS_KEY_FILE": str(secret_file(profile, "s3_access_key")),
        "MEDLAKE__S3__SECRET_KEY_FILE": str(secret_file(profile, "s3_secret_key")),
        "MEDLAKE__MLFLOW__TRACKING_URI": f"http://127.0.0.1:{profile.port('mlflow')}",
        "MEDLAKE__SPARK__REMOTE": f"sc://127.0.0.1:{profile.port('spark_connect')}",
        "MEDLAKE__SPARK__MASTER": f"spark://127.0.0.1:{profile.port('spark_master')}",
        # `medlake run` triggers the DAGs on the profile's scheduler through its API server
        "MEDLAKE__AIRFLOW__API_URL": f"http://127.0.0.1:{profile.port('airflow')}",
        "MEDLAKE__AIRFLOW__API_USER": "admin",
        "MEDLAKE__AIRFLOW__API_PASSWORD_FILE": str(secret_file(profile, "airflow_admin_password")),
        "MLFLOW_S3_ENDPOINT_URL": f"https://127.0.0.1:{profile.port('s3')}",
        "AWS_CA_BUNDLE": str(profile.certs.ca),
    }


# --- PostgreSQL -------------------------------------------------------------------------------


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as Debian's ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _pg_owned(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def pg_up(profile: Profile) -> None:
    root = profile.home / "pg"
    data = root / "data"
    root.mkdir(parents=True, exist_ok=True)
    _reachable(root, profile.home)
    if not (data / "PG_VERSION").exists():
        _pg_init(profile, data)
    log = profile.logs / "postgres.log"
    profile.logs.mkdir(parents=True, exist_ok=True)
    log.touch()
    _pg_owned(log)
    done = subprocess.run(
        _as_postgres([str(PG_BIN / "pg_ctl"), "start", "-D", str(data), "-l", str(log), "-w", "-t", "60"]),
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise procs.ServiceFailed(f"pg_ctl start failed: {done.stderr.strip()}; see {log}")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    procs.record("postgres", pid, ["postgres"], pids=profile.pids)
    _pg_roles(profile)


def _reachable(root: Path, home: Path) -> None:
    """The postgres user enters the profile's folders (traverse only) and owns ``pg/``."""
    if os.geteuid() != 0:
        return
    folder = root
    while True:
        os.chmod(folder, os.stat(folder).st_mode | 0o011)
        if folder == home or folder == folder.parent:
            break
        folder = folder.parent
    _pg_owned(root)


def _pg_init(profile: Profile, data: Path) -> None:
    pwfile = profile.home / "pg" / "pwfile"
    _write_private(pwfile, secret(profile, "pg_admin") + "\n")
    _pg_owned(pwfile)
    try:
        done = subprocess.run(
            _as_postgres([
                str(PG_BIN / "initdb"), "-D", str(data), "-U", "medlake_admin", f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
            ]),
            capture_output=True, text=True, check=False,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise procs.ServiceFailed(f"initdb failed: {done.stderr.strip()}")
    certs = ensure_certs(profile.home / "tls")
    for src, name in ((certs.cert, "server.crt"), (certs.key, "server.key"), (certs.ca, "root.crt")):
        shutil.copy(src, data / name)
        os.chmod(data / name, 0o600)
        _pg_owned(data / name)
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# medlake production profile\n"
            f"listen_addresses = '127.0.0.1'\nport = {profile.port('pg')}\n"
            "unix_socket_directories = ''\n"
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
            "ssl_min_protocol_version = 'TLSv1.2'\npassword_encryption = 'scram-sha-256'\n"
            "max_connections = 200\nshared_buffers = '128MB'\n"
        )
    (data / "pg_hba.conf").write_text(
        "# TLS only, passwords by SCRAM; no trust, no plain TCP\n"
        "hostssl all all 127.0.0.1/32 scram-sha-256\n"
    )


def _pg_roles(profile: Profile) -> None:
    """The airflow and mlflow roles and databases (idempotent), over TLS as the admin role."""
    import psycopg2

    conn = psycopg2.connect(
        host="127.0.0.1", port=profile.port("pg"), dbname="postgres", user="medlake_admin",
        password=secret(profile, "pg_admin"), sslmode="verify-full", sslrootcert=str(profile.certs.ca),
    )
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for db in ("airflow", "mlflow"):
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (db,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(f"{verb} ROLE {db} LOGIN PASSWORD %s", (secret(profile, "pg_" + db),))
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if not cur.fetchone():
                    cur.execute(f"CREATE DATABASE {db} OWNER {db}")
    finally:
        conn.close()
    pgpass(profile)


def pg_down(profile: Profile) -> bool:
    """Fast shutdown (SIGINT) of the recorded postmaster."""
    return procs.stop("postgres", pids=profile.pids, sig=signal.SIGINT, grace=60)


# --- object store -----------------------------------------------------------------------------


def s3_up(profile: Profile) -> None:
    if not VERSITYGW.exists():
        raise procs.ServiceFailed(f"no {VERSITYGW}: run `make infra-deps` (go install versitygw)")
    data = profile.home / "s3" / "data"
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data.parent, 0o700)
    for bucket in BUCKETS:
        (data / bucket).mkdir(exist_ok=True)
    env = base_env(profile)
    env["ROOT_ACCESS_KEY_ID"] = env["AWS_ACCESS_KEY_ID"]
    env["ROOT_SECRET_ACCESS_KEY"] = env["AWS_SECRET_ACCESS_KEY"]
    certs = profile.certs
    procs.start(
        "versitygw",
        [
            str(VERSITYGW), "--port", f"127.0.0.1:{profile.port('s3')}", "--cert", str(certs.cert),
            "--key", str(certs.key), "posix", "--dir-perms", "0700", "--file-perms", "0600", str(data),
        ],
        pids=profile.pids, logs=profile.logs, env=env,
    )
    procs.wait_for("versitygw", lambda: _buckets(profile) >= set(BUCKETS), log=profile.logs / "versitygw.log")


def s3_client(profile: Profile):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        "s3", endpoint_url=f"https://127.0.0.1:{profile.port('s3')}", region_name="us-east-1",
        aws_access_key_id=secret(profile, "s3_access_key"),
        aws_secret_access_key=secret(profile, "s3_secret_key"), verify=str(profile.certs.ca),
    )


def _buckets(profile: Profile) -> set[str]:
    try:
        return {b["Name"] for b in s3_client(profile).list_buckets()["Buckets"]}
    except Exception:  # noqa: BLE001 - not listening yet: connection refused, TLS handshake reset
        return set()


# --- MLflow -----------------------------------------------------------------------------------


def mlflow_up(profile: Profile) -> None:
    port = profile.port("mlflow")
    procs.start(
        "mlflow",
        [
            str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", db_uri(profile, "mlflow"),
            "--artifacts-destination", "s3://mlflow/artifacts", "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
        ],
        pids=profile.pids, logs=profile.logs, env=base_env(profile), cwd=profile.home,
    )
    procs.wait_for(
        "mlflow", lambda: procs.http_ok(f"http://127.0.0.1:{port}/health"), log=profile.logs / "mlflow.log",
        timeout=240,
    )


# --- Airflow ----------------------------------------------------------------------------------


def airflow_env(profile: Profile) -> dict[str, str]:
    home = profile.home / "airflow"
    env = base_env(profile)
    # the tasks are medlake clients of the profile (object store, Spark Connect, MLflow, MEDLAKE_HOME)
    env.update({k: v for k, v in client_settings(profile).items() if not k.startswith("MEDLAKE__AIRFLOW__")})
    env.pop("MEDLAKE__LAKE__ROOT")  # each run names its lake in its params
    # dbt-spark (gold on the Spark engine) opens its session with the builder's getOrCreate(): in a
    # process already on Spark Connect that needs the server's URL from SPARK_REMOTE
    env["SPARK_REMOTE"] = env["MEDLAKE__SPARK__REMOTE"]
    parallelism = os.environ.get("MEDLAKE_PROD_AIRFLOW_PARALLELISM", "1")
    if parallelism == "1":
        # a source run's publish task waits (MEDLAKE__AIRFLOW__DELIVERY_WAIT, 900 s) for the other
        # sources of its delivery to publish, holding the one task slot their publish tasks need:
        # one task at a time, each source announces its own bronze at once (curated in runs of its own)
        env.setdefault("MEDLAKE__AIRFLOW__DELIVERY_WAIT", "1")
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_uri(profile, "airflow"),
            # the async engine on psycopg 3: libpq as well, so the same PGPASSFILE and TLS settings
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": db_uri(profile, "airflow", driver="psycopg"),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # one task at a time: on the Spark engine, two source DAGs ingesting at once race on the
            # shared quarantine table (delta-spark's MERGE fails with ConcurrentAppendException and the
            # engine does not retry it; the embedded engine retries its commit races), and two cores
            # run one Spark task at a time anyway. MEDLAKE_PROD_AIRFLOW_PARALLELISM overrides it.
            "AIRFLOW__CORE__PARALLELISM": parallelism,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{profile.port('airflow')}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(profile.port("airflow")),
            "AIRFLOW__API__WORKERS": "1",
            # secrets by command: read from their 0600 files, never in the environment or a config file
            "AIRFLOW__API_AUTH__JWT_SECRET_CMD": f"cat {secret_file(profile, 'airflow_jwt_secret')}",
            "AIRFLOW__CORE__FERNET_KEY_CMD": f"cat {secret_file(profile, 'airflow_fernet_key')}",
            # the UI/API user's password in a 0600 file we write: a password Airflow generates
            # itself is printed to the api-server's log
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(secret_file(profile, "airflow_users.json")),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(profile.port("airflow_logs")),
        }
    )
    return env


def airflow_up(profile: Profile) -> None:
    home = profile.home / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    secret(profile, "airflow_jwt_secret")
    fernet = secret_file(profile, "airflow_fernet_key")
    if not fernet.exists() and not os.environ.get("MEDLAKE_PROD_AIRFLOW_FERNET_KEY"):
        from cryptography.fernet import Fernet

        _write_private(fernet, Fernet.generate_key().decode() + "\n")
    _write_private(
        secret_file(profile, "airflow_users.json"),
        json.dumps({"admin": secret(profile, "airflow_admin_password")}) + "\n",
    )
    env = airflow_env(profile)
    airflow = str(VENV_BIN / "airflow")
    with (profile.logs / "airflow-migrate.log").open("ab") as log:
        done = subprocess.run([airflow, "db", "migrate"], env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise procs.ServiceFailed(f"airflow db migrate failed; see {profile.logs / 'airflow-migrate.log'}")
    _airflow_pools(profile, env)
    for name, args in (
        ("airflow-api-server", ["api-server"]),
        ("airflow-scheduler", ["scheduler"]),
        ("airflow-dag-processor", ["dag-processor"]),
    ):
        procs.start(name, [airflow, *args], pids=profile.pids, logs=profile.logs, env=env, cwd=home)
    url = f"http://127.0.0.1:{profile.port('airflow')}/api/v2/monitor/health"
    procs.wait_for("airflow api-server", lambda: procs.http_ok(url), log=profile.logs / "airflow-api-server.log")


def _airflow_pools(profile: Profile, env: dict[str, str]) -> None:
    """Each source's pool (``medlake_<kind>``, ``MEDLAKE__AIRFLOW__POOL_SLOTS`` slots): the source
    DAGs' tasks name them, and the scheduler queues no task of a pool that does not exist. A
    deployment's Airflow is made by its operator, not by ``medlake run``, so the profile makes them."""
    from medlake.config import Settings
    from medlake.sources import pools

    spec = profile.home / "airflow" / "pools.json"
    spec.write_text(json.dumps({name: {"slots": slots, "description": "medlake: one source's tasks",
                                       "include_deferred": False} for name, slots in pools(Settings()).items()}))
    with (profile.logs / "airflow-migrate.log").open("ab") as log:
        done = subprocess.run([str(VENV_BIN / "airflow"), "pools", "import", str(spec)], env=env,
                              stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise procs.ServiceFailed(f"airflow pools import failed; see {profile.logs / 'airflow-migrate.log'}")


# --- Spark ------------------------------------------------------------------------------------


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def spark_jars() -> list[Path]:
    """The Connect server's classpath: delta-spark, S3A, and Splink's similarity functions (entity
    resolution on the Spark engine registers them in its session: a Connect client cannot add jars
    to the server, so the server carries them, as medlake's own local sessions do)."""
    jars = sorted(DELTA_JARS.glob("delta-*.jar")) + sorted(S3A_JARS.glob("*.jar"))
    if len(jars) < 5:
        raise procs.ServiceFailed(f"delta or S3A jars missing in {DELTA_JARS} / {S3A_JARS}: run `make infra-deps`")
    from splink.backends.spark import similarity_jar_location

    return [*jars, Path(similarity_jar_location())]


def truststore(profile: Profile) -> Path:
    """A JKS truststore holding the profile's CA, for the JVM's S3A client (JKS: its certificates
    read without the store password, so no password on a command line; it holds no secret)."""
    store = profile.home / "tls" / "truststore.jks"
    if not store.exists():
        subprocess.run(
            ["keytool", "-importcert", "-noprompt", "-alias", "medlake-ca", "-file", str(profile.certs.ca),
             "-keystore", str(store), "-storetype", "JKS", "-storepass:file",
             str(secret_file(profile, "truststore_password"))],
            check=True, capture_output=True,
        )
    return store


def spark_env(profile: Profile) -> dict[str, str]:
    env = base_env(profile)
    home = profile.home / "spark"
    env.update(
        {
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOG_DIR": str(profile.logs),
            "SPARK_WORKER_DIR": str(home / "work"),
            "SPARK_LOCAL_DIRS": str(home / "tmp"),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_NO_DAEMONIZE": "1",
        }
    )
    return env


def spark_up(profile: Profile) -> None:
    env = spark_env(profile)
    for sub in ("work", "tmp"):
        (profile.home / "spark" / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(profile.home / "spark", 0o700)
    spark_class = str(spark_home() / "bin" / "spark-class")
    master = f"spark://127.0.0.1:{profile.port('spark_master')}"
    procs.start(
        "spark-master",
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
         "--port", str(profile.port("spark_master")), "--webui-port", str(profile.port("spark_master_ui"))],
        pids=profile.pids, logs=profile.logs, env=env,
    )
    ui = f"http://127.0.0.1:{profile.port('spark_master_ui')}/json/"
    procs.wait_for("spark master", lambda: procs.http_ok(ui), log=profile.logs / "spark-master.log")
    for n in range(1, profile.spark_workers + 1):
        procs.start(
            f"spark-worker-{n}",
            [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
             "--memory", "1536m", "--webui-port", str(profile.port("spark_worker_ui") + 10 * (n - 1)), master],
            pids=profile.pids, logs=profile.logs, env=env,
        )
    procs.wait_for(
        f"{profile.spark_workers} spark worker(s)", lambda: alive_workers(profile) >= profile.spark_workers,
        log=profile.logs / f"spark-worker-{profile.spark_workers}.log",
    )
    _connect_up(profile, env, master)


def alive_workers(profile: Profile) -> int:
    import urllib.request

    url = f"http://127.0.0.1:{profile.port('spark_master_ui')}/json/"
    with urllib.request.urlopen(url, timeout=5) as response:
        state = json.load(response)
    return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")


def _connect_up(profile: Profile, env: dict[str, str], master: str) -> None:
    classpath = ":".join(str(j) for j in spark_jars())
    store = truststore(profile)
    java_opts = f"-Djavax.net.ssl.trustStore={store} -Djavax.net.ssl.trustStoreType=JKS"
    s3 = f"https://127.0.0.1:{profile.port('s3')}"
    conf = {
        "spark.driver.extraClassPath": classpath,
        "spark.executor.extraClassPath": classpath,
        "spark.driver.extraJavaOptions": java_opts,
        "spark.executor.extraJavaOptions": java_opts,
        "spark.executor.memory": "1g",
        "spark.driver.memory": "1g",
        "spark.cores.max": str(profile.spark_workers),
        # one partition per executor core: Spark's 200 shuffle partitions and Delta's 50 log-replay
        # partitions are for clusters (with 50, every Delta snapshot of a small table is 50 tasks)
        "spark.sql.shuffle.partitions": str(profile.spark_workers),
        "spark.databricks.delta.snapshotPartitions": str(profile.spark_workers),
        "spark.ui.port": str(profile.port("spark_ui")),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(profile.port("spark_connect")),
        # s3:// and s3a:// both reach the profile's object store through S3A; credentials from
        # the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), never on the command line
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.endpoint": s3,
        "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "true",
        "spark.hadoop.fs.s3a.aws.credentials.provider":
            "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider",
        "spark.executorEnv.PYSPARK_PYTHON": sys.executable,
        "spark.pyspark.python": sys.executable,
    }
    argv = [str(spark_home() / "bin" / "spark-submit"), "--master", master,
            "--class", "org.apache.spark.sql.connect.service.SparkConnectServer", "--name", "medlake-connect"]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    procs.start("spark-connect", argv, pids=profile.pids, logs=profile.logs, env=env, cwd=profile.home / "spark")
    procs.wait_for(
        "spark connect", lambda: not procs.free_port(profile.port("spark_connect")),
        log=profile.logs / "spark-connect.log", timeout=240,
    )


# --- the commands -----------------------------------------------------------------------------

STARTERS = {"pg": pg_up, "s3": s3_up, "mlflow": mlflow_up, "airflow": airflow_up, "spark": spark_up}
NEEDS = {"mlflow": ("pg", "s3"), "airflow": ("pg",), "spark": ("s3",)}


def up(profile: Profile, only: list[str]) -> dict[str, float]:
    """Start the services (and what they need) that are not running; returns seconds per service."""
    wanted = [s for s in SERVICES if s in only or any(s in NEEDS.get(o, ()) for o in only)]
    for folder in (profile.home, profile.logs):  # others (PostgreSQL's user) may traverse, not list
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o711)
    ensure_certs(profile.home / "tls")
    secret(profile, "truststore_password")
    timings: dict[str, float] = {}
    for service in wanted:
        if all(procs.running(p, pids=profile.pids) for p in profile.processes(service)):
            continue
        start = time.monotonic()
        try:
            STARTERS[service](profile)
        except Exception:
            stop_services(profile, [*timings, service])  # what this call started, nothing older
            raise
        timings[service] = round(time.monotonic() - start, 1)
    (profile.home / "endpoints.json").write_text(json.dumps(profile.endpoints(), indent=2) + "\n")
    return timings


def down(profile: Profile) -> list[str]:
    """Stop every process ``up`` recorded, in reverse start order; returns their names."""
    return stop_services(profile, list(SERVICES))


def stop_services(profile: Profile, services: list[str]) -> list[str]:
    """Stop the recorded processes of ``services``, in reverse start order; returns their names."""
    stopped: list[str] = []
    for service in [s for s in reversed(SERVICES) if s in services]:
        for name in reversed(PROCESSES[service]):
            if name == "postgres":
                done = pg_down(profile)
            else:
                done = procs.stop(name, pids=profile.pids)
            if done:
                stopped.append(name)
    return stopped


def status(profile: Profile) -> dict[str, int | None]:
    return {name: procs.pid_of(name, pids=profile.pids) for s in SERVICES for name in PROCESSES[s]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start the services; print the endpoints")
    start.add_argument("--only", default=",".join(SERVICES), help="comma-separated subset of " + ",".join(SERVICES))
    sub.add_parser("down", help="stop every process `up` started, by pid")
    sub.add_parser("status", help="the recorded processes and whether they run")
    sub.add_parser("env", help="shell exports of the client settings (paths to secrets, no values)")
    args = parser.parse_args(argv)
    profile = Profile.from_env()
    if args.command == "up":
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(only) - set(SERVICES))
        if unknown:
            parser.error(f"unknown service(s) {unknown}; choose from {list(SERVICES)}")
        began = time.monotonic()
        timings = up(profile, only)
        print(f"started in {time.monotonic() - began:.1f} s: {timings}")
        for name, url in profile.endpoints().items():
            print(f"  {name:16} {url}")
        print(f"state: {profile.home}  (secrets in {profile.home / 'secrets'}, 0600)")
    elif args.command == "down":
        print("stopped: " + (", ".join(down(profile)) or "nothing was running"))
    elif args.command == "status":
        for name, pid in status(profile).items():
            print(f"  {name:24} {'pid ' + str(pid) if pid else 'not running'}")
    else:
        for key, value in client_settings(profile).items():
            print(f"export {key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

