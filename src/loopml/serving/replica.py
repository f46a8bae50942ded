"""A replica process: loads one deployed model and answers the router over a Unix socket.

Started by the serving runtime as `python -m loopml.serving.replica --config FILE` with an
explicit environment; the config names the socket, the framework's loader (`module:qualname`),
the artifact directory and the deployed model's identity. The model is loaded before the socket
is bound, so a replica that accepts connections is ready; the router still sends a health frame
and routes nothing to a replica before it answers. The replica exits when its parent dies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("loopml.serving.replica")


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = conn.recv_into(view[got:], n - got)
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _tune_for_serving() -> None:
    """Process-wide settings that make per-request library overhead smaller in a replica.

    JSON cannot carry NaN or infinities, so scikit-learn's finiteness scan is skipped; warnings
    such as "X does not have valid feature names" are silenced once here rather than per call.
    """
    warnings.filterwarnings("ignore", category=UserWarning, module=r"sklearn\.")
    warnings.filterwarnings("ignore", message=".*does not have valid feature names.*")
    if "sklearn" in sys.modules:
        import sklearn

        sklearn.set_config(assume_finite=True, skip_parameter_validation=True)


def load(config: dict[str, Any]) -> Any:
    from loopml.serving.loaders import get_loader, import_factory
    from loopml.serving.spec import DeployedModelSpec

    artifact_dir = Path(config["artifact_dir"]).resolve() if config.get("artifact_dir") else None
    store_root = Path(config["store_root"]).resolve()
    if artifact_dir is None or not artifact_dir.is_relative_to(store_root):
        raise SystemExit(f"refusing to load {artifact_dir}: not inside the artifact store {store_root}")
    spec_fields = dict(config["spec"])
    spec_fields["artifact_dir"] = artifact_dir
    spec = DeployedModelSpec(**spec_fields)
    ref = config.get("factory")
    factory = import_factory(ref) if ref else get_loader(spec.framework)
    return factory(artifact_dir, spec)


def serve(config: dict[str, Any]) -> None:
    from loopml.serving.handler import BatchHandler
    from loopml.serving.protocol import (
        HEADER_SIZE,
        TYPE_HEALTH,
        decode_request,
        encode_response,
        frame_length,
    )

    started = time.monotonic()
    predictor = load(config)
    _tune_for_serving()
    handler = BatchHandler(predictor, config["meta"])
    info: dict[str, Any] = {"pid": os.getpid(), "framework": config["spec"]["framework"]}
    describe = getattr(predictor, "describe", None)
    if callable(describe):
        info.update(describe())
    info["loadSeconds"] = round(time.monotonic() - started, 3)
    health = json.dumps(info).encode()
    log.info("replica %s loaded in %.2fs: %s", config["replica_id"], info["loadSeconds"], info)

    path = config["socket"]
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    while True:
        conn, _ = server.accept()
        try:
            while True:
                header = _recv_exact(conn, HEADER_SIZE)
                if header is None:
                    break
                payload = _recv_exact(conn, frame_length(header))
                if payload is None:
                    break
                frame_type, items = decode_request(payload)
                if frame_type == TYPE_HEALTH:
                    conn.sendall(encode_response(TYPE_HEALTH, [(200, health)]))
                    continue
                conn.sendall(encode_response(frame_type, handler.handle(items)))
        except (ConnectionError, OSError) as exc:
            log.info("router connection closed: %s", exc)
        finally:
            conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loopml.serving.replica")
    parser.add_argument("--config", required=True, help="JSON file describing the replica")
    args = parser.parse_args(argv)
    config = json.loads(Path(args.config).read_text())
    from loopml import logs

    logs.configure(config.get("log_level", "INFO"), stream=sys.stderr)
    parent = int(config.get("parent_pid") or os.getppid())
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()
    try:
        serve(config)
    except KeyboardInterrupt:
        pass
    except SystemExit:
        raise
    except BaseException as exc:
        log.exception("replica failed to start")
        msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        print(f"LOOPML-REPLICA-ERROR: {msg}", file=sys.stderr, flush=True)
        raise SystemExit(3) from exc


if __name__ == "__main__":
    main()
