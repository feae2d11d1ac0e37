"""Screenshot the Prefect UI page of a flow run's artifacts with headless Chromium.

    python bench/screenshot_ui.py --api-url http://127.0.0.1:4200/api --flow-run-id ID
    python bench/screenshot_ui.py      # own server, one small lab experiment, then the screenshot

Without ``--api-url`` the script starts ``prefect server start`` on a free loopback port with a
temporary PREFECT_HOME, runs a small lab experiment against it (prefix ``swp``, bridge ``swp0``,
subnet 10.213.9.0/24, one manager and one worker; needs root), takes the screenshot and stops the
server by its PID. Chromium (Debian package ``chromium``) opens only 127.0.0.1 addresses.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.prefect_server import prefect_server  # noqa: E402

DEFAULT_OUT = REPO / "docs" / "img" / "prefect-run-artifacts.png"
PYTHON = sys.executable
LAB_SPEC = {
    "name": "uiswp",
    "provider": {"kind": "lab", "lab": {"prefix": "swp", "bridge": "swp0", "subnet": "10.213.9.0/24"}},
    "managers": {"count": 1},
    "workers": {"count": 1, "ready_deadline": 120},
    "tuning": {"sysctls": {"net.core.somaxconn": 2048}},
    "monitoring": {"enabled": False},
    "phases": [{"kind": "scale", "name": "scale", "steps": [5, 10], "step_deadline": 120, "sample_interval": 0.5}],
    "profiling": {"enabled": False},
    "teardown": "always",
}
# The V2 UI (under /v2/) opens the tab named in ``?tab=``. The default UI renders its tabs hidden until
# the flow run has loaded, then falls back to the Logs tab (Prefect 3.9).
ARTIFACTS_PAGE = "{ui}/v2/runs/flow-run/{flow_run_id}?tab=Artifacts"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000", "--virtual-time-budget=15000",
]


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("error: chromium not found; install it with: apt-get install -y chromium")


def screenshot(url: str, out: Path, timeout: float = 180) -> None:
    """Save a PNG of ``url`` (which must be on 127.0.0.1) to ``out``.

    Raises:
        ValueError: the URL is not on 127.0.0.1.
        RuntimeError: Chromium failed or wrote no file.
    """
    if urllib.parse.urlsplit(url).hostname != "127.0.0.1":
        raise ValueError(f"invalid URL {url}: only 127.0.0.1 addresses may be opened")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="swarmlab-chromium-") as profile:
        done = subprocess.run([chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               f"--screenshot={out}", url], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium failed ({done.returncode}) on {url}: {done.stderr[-2000:]}")


def run_lab_experiment(env: dict, folder: Path) -> str:
    """Run the small lab experiment against the server in ``env``; return its flow run id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    spec = folder / "uiswp.yaml"
    spec.write_text(yaml.safe_dump(LAB_SPEC))
    done = subprocess.run([PYTHON, "-m", "flows.swarm3k", "--spec", str(spec), "--runs-dir", str(folder / "runs"),
                           "--new-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"the lab experiment failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        [flow_run] = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
    return str(flow_run.id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/screenshot_ui.py", description=__doc__.splitlines()[0])
    parser.add_argument("--api-url", help="API of a running Prefect server on 127.0.0.1, e.g. http://127.0.0.1:4200/api")
    parser.add_argument("--flow-run-id", help="flow run to show (required with --api-url)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write (default: %(default)s)")
    args = parser.parse_args(argv)
    if bool(args.api_url) != bool(args.flow_run_id):
        parser.error("--api-url and --flow-run-id go together")

    started = time.monotonic()
    if args.api_url:
        ui = args.api_url.rstrip("/").removesuffix("/api")
        screenshot(ARTIFACTS_PAGE.format(ui=ui, flow_run_id=args.flow_run_id), args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="swarmlab-ui-") as folder:
            with prefect_server(Path(folder) / "prefect-home") as env:
                flow_run_id = run_lab_experiment(env, Path(folder))
                ui = env["PREFECT_API_URL"].removesuffix("/api")
                screenshot(ARTIFACTS_PAGE.format(ui=ui, flow_run_id=flow_run_id), args.out)
    print(f"{args.out}: {args.out.stat().st_size} bytes in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
