"""The committed OpenAPI document: `python -m portal_api.openapi` (or `make openapi`) regenerates it."""

import json
import sys
from pathlib import Path

DOCUMENT = Path(__file__).with_name("openapi.json")


def document() -> dict:
    from portal_api.app import create_app
    from portal_api.settings import ApiSettings

    # Only the routes and models matter: no key is used, nothing connects.
    app = create_app(ApiSettings(APPT_API_KEYS='{"keys": []}'))
    return app.openapi()


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    DOCUMENT.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {DOCUMENT}\n")


if __name__ == "__main__":
    main()
