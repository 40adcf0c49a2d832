"""Node settings: flags > environment > TOML file > defaults; bad values are one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gotask._errors import ConfigError
from gotask._logging import JsonFormatter
from gotask._node_main import config_from_args
from gotask._node_settings import SETTINGS, env_name, resolve
from gotask.cli import build_parser


def flags(*argv: str) -> dict[str, object]:
    return vars(build_parser().parse_args(["node", *argv]))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gotask.toml"
    path.write_text(text)
    return str(path)


def test_defaults_apply_when_nothing_is_set() -> None:
    values = resolve(flags("--app", "examples.tasks"), {})
    assert values == {**{n: s.default for n, s in SETTINGS.items()}, "app": "examples.tasks"}


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    config = write(tmp_path, 'app = "examples.tasks"\nconcurrency = 5\nthreads = 7\n'
                             'grace = 3\nlease-timeout = 40\n')
    env = {"GOTASK_CONFIG": config, "GOTASK_CONCURRENCY": "6", "GOTASK_THREADS": "8"}
    values = resolve(flags("--threads", "9"), env)
    assert (values["threads"], values["concurrency"], values["grace"]) == (9, 6, 3.0)
    assert (values["lease_timeout"], values["heartbeat"]) == (40.0, 10.0)
    assert values["app"] == "examples.tasks"


def test_the_config_flag_beats_gotask_config(tmp_path: Path) -> None:
    (tmp_path / "other.toml").write_text('[node]\napp = "other"\n')
    config = write(tmp_path, '[node]\napp = "examples.tasks"\ninsecure = true\n')
    values = resolve(flags("--config", config), {"GOTASK_CONFIG": str(tmp_path / "other.toml")})
    assert (values["app"], values["insecure"]) == ("examples.tasks", True)


def test_a_node_config_is_built_from_every_layer(tmp_path: Path) -> None:
    config = write(tmp_path, 'app = "examples.tasks"\nqueues = "a:2,b"\n')
    args = build_parser().parse_args(["node", "--config", config, "--listen", "127.0.0.1:0"])
    node = config_from_args(args, {env_name("storage"): "sqlite:///tmp/x.db",
                                   "GOTASK_INSECURE": "yes"})
    assert (node.queues, node.storage, node.listen, node.insecure) == (
        (("a", 2), ("b", 1)), "sqlite:///tmp/x.db", ("127.0.0.1", 0), True)


@pytest.mark.parametrize(("text", "message"), [
    ("concurrency = \"many\"\n", "concurrency must be a int"),
    ("colour = 1\n", "unknown setting 'colour'"),
    ("app = [\n", "is not valid TOML"),
    ("log_format = \"xml\"\n", "must be one of text, json"),
])
def test_a_bad_file_is_one_line_naming_it(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as err:
        resolve(flags("--app", "x", "--config", config), {})
    assert config in str(err.value) and "\n" not in str(err.value)


def test_bad_environment_values_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$GOTASK_GRACE: expected a float"):
        resolve(flags("--app", "x"), {"GOTASK_GRACE": "soon"})
    with pytest.raises(ConfigError, match=r"\$GOTASK_INSECURE: expected true or false"):
        resolve(flags("--app", "x"), {"GOTASK_INSECURE": "maybe"})
    with pytest.raises(ConfigError, match="cannot read the config file"):
        resolve(flags("--app", "x", "--config", str(tmp_path / "missing.toml")), {})


def test_no_app_anywhere_says_where_to_put_it() -> None:
    with pytest.raises(ConfigError, match=r"--app MODULE\[:ATTR\], set \$GOTASK_APP"):
        resolve(flags(), {})


def test_tls_settings_are_checked_together() -> None:
    args = build_parser().parse_args(["node", "--app", "examples.tasks", "--tls-cert", "c"])
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key go together"):
        config_from_args(args, {})


def test_the_json_formatter_writes_one_object_with_the_extra_fields() -> None:
    record = logging.LogRecord("gotask.jobs", logging.INFO, __file__, 1, "job %s started",
                               ("j1",), None)
    record.job_id, record.attempt = "j1", 2
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert (data["message"], data["level"], data["logger"]) == (
        "job j1 started", "INFO", "gotask.jobs")
    assert (data["job_id"], data["attempt"]) == ("j1", 2)
