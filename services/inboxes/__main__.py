"""``python -m services.inboxes serve|migrate``: run or migrate the inboxes service."""

from services.chassis.server import service_main
from services.inboxes.server import MIGRATIONS, NAME, build

if __name__ == "__main__":
    service_main(NAME, MIGRATIONS, build)
