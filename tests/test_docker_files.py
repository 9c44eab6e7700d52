"""No Docker engine runs here: check what can be checked. Every compose service builds a target the Dockerfile
defines, every COPY source exists, and every command an image runs is one the CLI has."""

import re
from pathlib import Path

import yaml
from typer.main import get_command

from jobs.cli import app

ROOT = Path(__file__).resolve().parent.parent


def test_compose_services_build_targets_the_dockerfile_defines():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M))
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "api", "worker", "beat"} <= set(services)
    for name in ("api", "worker", "beat"):
        assert services[name]["build"]["target"] in targets
        assert services[name]["environment"]["ROUTEYARD_BROKER_URL"].startswith("redis://")
    for source in re.findall(r"^COPY (?!--)(\S+)", dockerfile, re.M):
        assert (ROOT / source).exists(), source


def test_image_commands_are_cli_commands():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    commands = set(get_command(app).commands)
    for cmd in re.findall(r'^CMD \["routeyard", "(\w+)"', dockerfile, re.M):
        assert cmd in commands
