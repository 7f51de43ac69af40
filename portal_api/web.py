"""The reference Customer Portal and office board (server-rendered pages); see templates/."""


def install(app) -> None:
    return None
