"""The keyring our own portal stand-ins sign with (`apptctl demo`, `apptctl fixtures replay`, the bench).

They use the configured keyring (APPT_PORTAL_KEYS / APPT_PORTAL_KEYS_FILE), the same one the workers
verify with; on a developer machine with neither set, the development keyring in `infra/dev/` (public
secrets, never for production), and they hand that same file to the workers they start.
"""

from contracts.signing import Keyring
from workers.runtime.settings import DEV_PORTAL_KEYS_FILE, Settings

__all__ = ["DEV_PORTAL_KEYS_FILE", "tool_keyring"]


def tool_keyring(settings: Settings) -> tuple[Keyring, dict[str, str]]:
    """(keyring to sign with, environment to give the workers so they verify with the same one)."""
    keyring = settings.keyring()
    if keyring is not None:
        return keyring, {}
    return Keyring.from_json(DEV_PORTAL_KEYS_FILE.read_text()), {
        "APPT_PORTAL_KEYS_FILE": str(DEV_PORTAL_KEYS_FILE),
        "APPT_DEV_MODE": "1",  # the workers it starts accept the development keyring
    }
