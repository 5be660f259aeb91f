"""Whether a process still runs: leftovers (temporary checkpoint files, conversion folders) carry their writer's pid,
so that a later run removes only those whose writer is gone."""
import os


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
