"""The server's security settings: what a user gets without passing any flag."""

import tomllib
from pathlib import Path

CONFIG = tomllib.loads((Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml").read_text())


def test_server_keeps_xsrf_and_cors_and_listens_on_localhost_only():
    server = CONFIG["server"]
    assert server["enableXsrfProtection"] is True and server["enableCORS"] is True
    assert server["address"] == "localhost"
    assert 1 <= server["maxUploadSize"] <= 10  # megabytes: single images, never data sets


def test_no_usage_statistics_and_no_stack_traces_for_users():
    assert CONFIG["browser"]["gatherUsageStats"] is False
    assert CONFIG["client"]["showErrorDetails"] == "type"


def test_streamlit_reads_these_values():
    from streamlit import config

    config.get_config_options(force_reparse=True)
    assert config.get_option("server.address") == "localhost"
    assert config.get_option("server.enableXsrfProtection") is True
    assert config.get_option("client.showErrorDetails") == "type"
    assert config.get_option("server.fileWatcherType") == "none"  # no inotify flood in the server log
