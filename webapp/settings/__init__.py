"""Configuration: every variable in one table (table.py), read once and validated at startup (config.py),
passwords masked wherever they are printed (masking.py), OpenTelemetry's own variables (tracing.py)."""

from webapp.settings.config import (
    GUNICORN_SETTINGS_MARKER,
    LOG_FORMATS,
    LOG_LEVELS,
    Config,
    ConfigError,
    MappingEnv,
    config_variables,
    load_config,
    variables_read,
    with_dotenv,
)
from webapp.settings.masking import mask_secrets, mask_url
from webapp.settings.table import REQUIRED, SETTING, SETTINGS, Setting
from webapp.settings.tracing import TracingSettings

__all__ = [
    "GUNICORN_SETTINGS_MARKER", "LOG_FORMATS", "LOG_LEVELS", "REQUIRED", "SETTING", "SETTINGS", "Config", "ConfigError",
    "MappingEnv", "Setting", "TracingSettings", "config_variables", "load_config", "mask_secrets", "mask_url",
    "variables_read", "with_dotenv",
]
