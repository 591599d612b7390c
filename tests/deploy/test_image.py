"""The container image (``make image``): it builds with no registry, runs as a
non-root user, and the whole suite in one container (``deploy.local``, embedded
PostgreSQL) answers ``/readyz`` and serves its docs with no network at all."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import REPO_ROOT

TAG = "mailplane:test"
READY_SECONDS = 90


def docker() -> str:
    """The Docker client of the Debian package (``make ship-tools``), else any."""
    return "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker") or ""


def daemon_can_run() -> str | None:
    """Why no Docker daemon can be had here, or ``None`` when one can."""
    if not docker():
        return "no docker client (make ship-tools installs docker.io)"
    if subprocess.run([docker(), "info"], capture_output=True).returncode == 0:
        return None
    if os.geteuid() != 0:
        return "no Docker daemon answers and this user cannot start dockerd"
    if not shutil.which("dockerd"):
        return "no dockerd (make ship-tools installs docker.io)"
    return None


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built as ``make image`` builds it."""
    reason = daemon_can_run()
    if reason is not None:
        pytest.skip(reason)
    built = subprocess.run(
        [str(REPO_ROOT / "deploy/docker/build-image.sh"), TAG],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return TAG


def in_container(name: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [docker(), "exec", name, *command], capture_output=True, text=True, timeout=30
    )


FETCH = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    answer = urllib.request.urlopen('http://127.0.0.1:8080' + sys.argv[1], timeout=5)\n"
    "    print(answer.status); print(answer.read().decode()[:4000])\n"
    "except urllib.error.HTTPError as e:\n"
    "    print(e.code)\n"
)


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    """The whole suite in one container with no network, until ready."""
    name = f"mailplane-test-{uuid.uuid4().hex[:8]}"
    started = subprocess.run(
        [docker(), "run", "-d", "--rm", "--name", name, "--network", "none", image],
        capture_output=True,
        text=True,
    )
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + READY_SECONDS
        status = ""
        while time.monotonic() < deadline:
            status = in_container(name, "python3", "-c", FETCH, "/readyz").stdout
            if status.startswith("200"):
                break
            time.sleep(0.5)
        logs = subprocess.run([docker(), "logs", name], capture_output=True, text=True)
        assert status.startswith("200"), status + logs.stderr[-3000:]
        yield name
    finally:
        subprocess.run([docker(), "rm", "-f", name], capture_output=True)


def test_the_suite_in_the_image_answers_readyz_with_no_network(container: str) -> None:
    answer = in_container(container, "python3", "-c", FETCH, "/readyz").stdout
    assert answer.startswith("200")
    assert '"status":"ready"' in answer


def test_the_image_runs_as_a_non_root_user(container: str) -> None:
    assert in_container(container, "id", "-u").stdout.strip() == "10001"


def test_the_docs_work_offline(container: str) -> None:
    page = in_container(container, "python3", "-c", FETCH, "/docs").stdout
    assert page.startswith("200") and "/docs-assets/swagger-ui-bundle.js" in page
    assert "cdn" not in page.lower()
    bundle = in_container(
        container, "python3", "-c", FETCH, "/docs-assets/swagger-ui-bundle.js"
    ).stdout
    assert bundle.startswith("200")
    redoc = in_container(container, "python3", "-c", FETCH, "/redoc").stdout
    assert redoc.startswith("200") and "/docs-assets/redoc.standalone.js" in redoc
